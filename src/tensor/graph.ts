/**
 * A Graph is one ggml compute graph built from TypeScript: inputs, op nodes, the tape that records
 * each op's gradient rule, and the updates written back into stored tensors. A training step is one
 * graph (forward, backward and optimizer update); build it once, then set inputs and `run()` it as
 * many times as there are batches of that shape.
 *
 * @example
 * const g = new Graph(cpuBackend());
 * const x = g.input([4, 8]);
 * const loss = sum(mul(linear(x, w), y));
 * const grads = g.backward(loss);
 * g.output(loss);
 * g.compile();
 * g.set(x, data);
 * g.run();
 * console.log(g.read(loss)[0]);
 * g.dispose();
 *
 * A graph given several backends (a model split over devices, src/models/device-map.ts) is run by
 * ggml's backend scheduler: each op runs on the device of the stored tensors it reads, and the
 * scheduler copies activations between devices (DESIGN.md §8). With one backend the graph is
 * allocated and computed on it directly.
 *
 * The Graph is the API and the lifecycle (building, planned, compiled, disposed); it keeps the tape
 * in a {@link Tape} (src/tensor/tape.ts) and hands planning, memory and runs to a
 * {@link GraphExecutor} (src/tensor/executor.ts).
 */
import type { Backend } from '../engine/device.js';
import { GGML_TYPE_IDS, type DType } from '../engine/dtype.js';
import type { GraphPtr, TensorPtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { NativeContext, assertAlive } from '../engine/memory.js';
import { OutOfMemoryError, QtuneError, ShapeError, fmtShape } from '../errors.js';
import {
  GraphExecutor,
  checkIndices,
  schedulerOrder,
  type Assign,
  type GraphContents,
  type GraphNode,
  type IndexBound,
  type LeafInit,
} from './executor.js';
import { isContiguous, strides } from './ops/common.js';
import { checkShape, numel, toNe, type Shape } from './shape.js';
import { Tape, type BackwardRule, type NodeLabel } from './tape.js';
import { Tensor } from './tensor.js';

export type { BackwardRule, GraphNode, NodeLabel };

/** Most elements of one tensor: 2^50 (4 PiB of f32), far beyond any device, and safe from overflow. */
const MAX_NUMEL = 2 ** 50;

/** ggml computes sizes in 64-bit integers that wrap silently: refuse shapes no device could hold. */
function checkSize(shape: Shape, what: string): void {
  const n = numel(shape);
  if (n > MAX_NUMEL)
    throw new OutOfMemoryError(`${what}: a tensor of shape ${fmtShape(shape)} holds ${n} elements`, {
      hint: 'use a smaller batch or context length',
      details: { shape: [...shape], numel: n },
    });
}

export interface GraphOptions {
  /** Most nodes the graph may hold (ggml allocates their metadata up front). Default 32768. */
  maxNodes?: number;
  /** Most input and constant tensors. Default 1024. */
  maxInputs?: number;
}

type State = 'building' | 'planned' | 'compiled' | 'disposed';

const active: Graph[] = [];

export class Graph {
  /** The device the graph runs on; with several, the first in the scheduler's order. */
  readonly backend: Backend;
  /** Every device the graph may run ops on: one, or several in the scheduler's order (CPU last). */
  readonly backends: readonly Backend[];
  readonly maxNodes: number;
  private readonly ctx: NativeContext;
  private readonly leafCtx: NativeContext;
  private readonly leaves: LeafInit[] = [];
  private readonly tape = new Tape();
  private readonly outputs = new Set<Tensor>();
  private readonly assigns: Assign[] = [];
  private readonly effects: Tensor[] = [];
  private readonly hooks: (() => void)[] = [];
  private readonly disposers: (() => void)[] = [];
  private readonly setHooks = new Map<Tensor, ((data: Float32Array | Int32Array) => void)[]>();
  private readonly bounds = new Map<Tensor, IndexBound[]>();
  private state: State = 'building';
  /** Plans, allocates and runs the built graph (src/tensor/executor.ts). */
  private readonly exec: GraphExecutor;

  /**
   * A graph on one backend, or on several (a model split over devices): then ggml's scheduler places
   * each op next to the stored tensors it reads and copies activations between the devices.
   */
  constructor(backend: Backend | readonly Backend[], options: GraphOptions = {}) {
    this.backends = schedulerOrder(
      Array.isArray(backend) ? (backend as readonly Backend[]) : [backend as Backend],
    );
    this.backend = this.backends[0]!;
    this.maxNodes = options.maxNodes ?? 32768;
    this.ctx = new NativeContext(this.maxNodes, this.maxNodes);
    this.leafCtx = new NativeContext(options.maxInputs ?? 1024);
    this.exec = new GraphExecutor(this.backends);
  }

  /** The graph ops use when none of their operands belongs to a graph (all stored tensors). */
  static current(): Graph | undefined {
    return active[active.length - 1];
  }

  /** Runs `fn` with this graph as {@link Graph.current}. */
  build<T>(fn: () => T): T {
    active.push(this);
    try {
      return fn();
    } finally {
      active.pop();
    }
  }

  /** How many times {@link run} has completed; dropout masks are derived from it. */
  get runCount(): number {
    return this.exec.runCount;
  }

  get isCompiled(): boolean {
    return this.state === 'compiled';
  }

  /** Whether the graph spans several devices (and is run by ggml's scheduler). */
  get isMultiDevice(): boolean {
    return this.exec.isMultiDevice;
  }

  /** Whether stored tensors on `backend` may take part in this graph. */
  holds(backend: Backend): boolean {
    return this.backends.includes(backend);
  }

  // ---------------------------------------------------------------- building

  /** A leaf whose data the caller provides with {@link set} before running. */
  input(shape: Shape, dtype: DType = 'f32', name = 'input'): Tensor {
    this.assertBuilding('input');
    return this.leaf(shape, dtype, name, null);
  }

  /** A leaf with fixed data, uploaded once when the graph is compiled. */
  constant(data: Float32Array | Int32Array, shape: Shape, name = 'const'): Tensor {
    this.assertBuilding('constant');
    if (data.length !== numel(shape)) {
      throw new ShapeError(`constant "${name}": ${data.length} values for shape ${fmtShape(shape)}`);
    }
    return this.leaf(shape, data instanceof Int32Array ? 'i32' : 'f32', name, data);
  }

  private leaf(shape: Shape, dtype: DType, name: string, data: Float32Array | Int32Array | null): Tensor {
    checkShape(shape, name);
    checkSize(shape, name);
    if (!this.leafCtx.hasRoom(1)) {
      throw new QtuneError('GRAPH', `graph has no room for more inputs`, {
        hint: 'raise GraphOptions.maxInputs',
      });
    }
    const { api } = getEngine();
    const ne = toNe(shape);
    const ptr = api.new_tensor_4d(this.leafCtx.ptr, GGML_TYPE_IDS[dtype], ne[0], ne[1], ne[2], ne[3]);
    api.set_name(ptr, name.slice(0, 63));
    api.set_input(ptr);
    const t = new Tensor({ ptr, shape, dtype, kind: 'input', graph: this, name });
    this.leaves.push({ tensor: t, data });
    return t;
  }

  /**
   * Wraps a node just created by `make` (a ggml op call on this graph's context). Ops call this;
   * it checks that the context has room first, because ggml aborts when it overflows.
   */
  node(
    make: (ctx: NativeContext['ptr']) => TensorPtr,
    shape: Shape,
    dtype: DType,
    requiresGrad: boolean,
    name = '',
  ): Tensor {
    this.assertBuilding('an op');
    checkSize(shape, name || 'an op');
    if (!this.ctx.hasRoom(2)) {
      throw new QtuneError('GRAPH', `graph reached its limit of ${this.maxNodes} nodes`, {
        hint: 'raise GraphOptions.maxNodes, or split the work into smaller graphs',
      });
    }
    const ptr = make(this.ctx.ptr);
    if (name) getEngine().api.set_name(ptr, name.slice(0, 63));
    this.tape.labelNode(ptr);
    return new Tensor({
      ptr,
      shape,
      dtype,
      kind: 'node',
      graph: this,
      requiresGrad: requiresGrad && this.tape.recording,
      name,
    });
  }

  /** Records an op's gradient rule on the tape (a no-op while building the backward pass itself). */
  record(op: string, inputs: Tensor[], output: Tensor, backward: BackwardRule): Tensor {
    this.tape.record(op, inputs, output, backward);
    return output;
  }

  /**
   * Builds `fn` with the op label `name` on the nodes it creates (nested labels join with `/`: a
   * LoRA product is `lora/linear.fwd`). Labels cost nothing in the ggml graph: they live in a JS map
   * that only the profiler reads. Backward nodes get the labels of their forward op.
   */
  label<T>(name: string, fn: () => T): T {
    return this.tape.withLabel(name, () => this.build(fn));
  }

  /**
   * Builds `fn` inside the block scope `name` (a model's `layers.3`): the profiler groups nodes by
   * it. Scopes nest with `.`; backward nodes get the scope of their forward op.
   *
   * @example
   * x = g.scope(`layers.${i}`, () => block(x));
   */
  scope<T>(name: string, fn: () => T): T {
    return this.tape.withBlock(name, () => this.build(fn));
  }

  /** The label and block of the node at `address` (from tensorAddress), if it was built through {@link node}. */
  labelOf(address: bigint): NodeLabel | undefined {
    return this.tape.labelOf(address);
  }

  /** Runs `fn` without recording gradient rules (optimizer updates, evaluation-only parts). */
  noGrad<T>(fn: () => T): T {
    const was = this.tape.recording;
    this.tape.recording = false;
    try {
      return this.build(fn);
    } finally {
      this.tape.recording = was;
    }
  }

  /** Whether ops currently record gradient rules (false while the backward pass is being built). */
  get isRecording(): boolean {
    return this.tape.recording;
  }

  /**
   * Builds the backward pass of a scalar `loss` into this graph and returns the gradient of every
   * tensor in `wrt` (default: every stored tensor with requiresGrad reached from the loss).
   */
  backward(loss: Tensor, wrt?: readonly Tensor[]): Map<Tensor, Tensor> {
    this.assertBuilding('backward');
    if (loss.graph !== this) throw new QtuneError('GRAPH', 'backward: the loss belongs to another graph');
    if (loss.numel !== 1) {
      throw new ShapeError(`backward: the loss must be a scalar, got shape ${fmtShape(loss.shape)}`, {
        hint: 'reduce it with sum() or mean() first',
      });
    }
    if (!loss.requiresGrad) {
      throw new QtuneError('GRAPH', 'backward: the loss does not depend on any tensor with requiresGrad', {
        hint: 'create trainable tensors with requiresGrad: true',
      });
    }
    const grads = new Map<Tensor, Tensor>();
    const seed = this.constant(Float32Array.of(1), loss.shape, 'loss_grad_seed');
    grads.set(loss, seed);
    this.tape.backward(this, grads);
    const out = new Map<Tensor, Tensor>();
    const targets = wrt ?? [...grads.keys()].filter((t) => t.kind === 'stored');
    for (const t of targets) {
      const g = grads.get(t);
      if (g !== undefined) out.set(t, g);
    }
    return out;
  }

  /**
   * Runs `fn` and returns, with its result, the stored tensors with requiresGrad that its ops read
   * (gradient checkpointing needs them before the backward pass exists).
   */
  track<T>(fn: () => T): { result: T; used: Tensor[] } {
    return this.tape.track(fn);
  }

  /** Called by every op with its operands (see {@link track}). */
  noteOperand(t: Tensor): void {
    this.tape.noteOperand(t);
  }

  /**
   * The gradient rule of a checkpointed segment: builds `fn` again from `inputs` (while the backward
   * pass is being built, so the recomputed activations live only as long as their gradients need
   * them) with a tape of its own, and returns the gradients of `inputs` and of `params` for the
   * output gradient `dy`.
   */
  recompute(
    inputs: readonly Tensor[],
    params: readonly Tensor[],
    fn: (...xs: Tensor[]) => Tensor,
    dy: Tensor,
  ): (Tensor | null)[] {
    return this.tape.recompute(this, inputs, params, fn, dy);
  }

  /** Keeps a node's value readable after {@link run}; returns the tensor to read (made contiguous if needed). */
  output(t: Tensor): Tensor {
    this.assertBuilding('output');
    if (t.graph !== this)
      throw new QtuneError('GRAPH', `output: ${t.toString()} is not a node of this graph`);
    let out = t;
    if (!isContiguous(t)) {
      out = this.node((ctx) => getEngine().api.cont(ctx, t.ptr), t.shape, t.dtype, false);
    }
    this.outputs.add(out);
    return out;
  }

  /**
   * Computes `node` in every run though nothing reads it: an op that writes a stored tensor in
   * place (ggml's fused optimizer steps), after every {@link assign}.
   */
  effect(node: Tensor): void {
    this.assertBuilding('effect');
    if (node.graph !== this)
      throw new QtuneError('GRAPH', `effect: ${node.toString()} is not a node of this graph`);
    this.effects.push(node);
  }

  /**
   * Writes `value` into the stored tensor `target` at the end of each run (after every read of it).
   * With `at`, writes into the part of `target` that starts at index `at.start` along `at.axis` and
   * has `value`'s shape (a KV cache filling up), leaving the rest as it is.
   */
  assign(target: Tensor, value: Tensor, at?: { axis: number; start: number }): void {
    this.assertBuilding('assign');
    if (target.kind !== 'stored')
      throw new QtuneError('GRAPH', `assign: ${target.toString()} is not a stored tensor`);
    assertAlive(target.store!.alive, `the tensor store of ${target.toString()}`);
    if (!this.holds(target.backend)) {
      throw new QtuneError(
        'GRAPH',
        `assign: ${target.toString()} lives on ${target.backend.name}, this graph runs on ${this.exec.deviceNames()}`,
      );
    }
    if (at === undefined) {
      if (target.numel !== value.numel)
        throw new ShapeError(`assign: ${fmtShape(value.shape)} into ${fmtShape(target.shape)}`);
      this.assigns.push({ target: target.ptr, value, label: this.tape.assignLabel() });
      return;
    }
    const ax = at.axis < 0 ? at.axis + target.rank : at.axis;
    const fits =
      value.rank === target.rank &&
      value.shape.every((d, i) =>
        i === ax ? at.start >= 0 && at.start + d <= target.shape[i]! : d === target.shape[i],
      );
    if (!fits) {
      throw new ShapeError(
        `assign: ${fmtShape(value.shape)} does not fit into ${fmtShape(target.shape)} at index ${at.start} of axis ${at.axis}`,
      );
    }
    const nb = strides(target);
    const ne = toNe(value.shape);
    const ga = target.rank - 1 - ax;
    const view = this.node(
      (ctx) =>
        getEngine().api.view_4d(
          ctx,
          target.ptr,
          ne[0],
          ne[1],
          ne[2],
          ne[3],
          nb[1],
          nb[2],
          nb[3],
          at.start * nb[ga]!,
        ),
      value.shape,
      target.dtype,
      false,
      'assign_view',
    );
    this.assigns.push({ target: view.ptr, value, label: this.tape.assignLabel() });
  }

  /** Runs `fn` before every {@link run} (per-run inputs such as dropout masks). */
  beforeRun(fn: () => void): void {
    this.hooks.push(fn);
  }

  /** Runs `fn` with the data whenever `input` is set (derived inputs such as loss weights). */
  onSet(input: Tensor, fn: (data: Float32Array | Int32Array) => void): void {
    const list = this.setHooks.get(input) ?? [];
    list.push(fn);
    this.setHooks.set(input, list);
  }

  /**
   * Requires every value of the i32 leaf `ids` to be a row index of a table of `size` rows, such as
   * token ids for an embedding: ggml's `get_rows` aborts the process on an index outside the table.
   * An input is checked each time it is {@link set} (one pass, before the data reaches the device),
   * a constant now; a node (ids computed inside the graph) is left to the op that made it.
   */
  limitIndices(ids: Tensor, size: number, what: string, hint?: string): void {
    if (ids.graph !== this || ids.kind !== 'input' || ids.dtype !== 'i32') return;
    const bound: IndexBound = { size, what, hint };
    const leaf = this.leaves.find((l) => l.tensor === ids);
    if (leaf !== undefined && leaf.data instanceof Int32Array) {
      checkIndices(ids, leaf.data, bound);
      return;
    }
    const list = this.bounds.get(ids) ?? [];
    list.push(bound);
    this.bounds.set(ids, list);
  }

  // ---------------------------------------------------------------- compiling and running

  /**
   * Finishes the graph: orders the nodes (outputs and update values first, then the writes into
   * stored tensors), checks that the backend supports every op, and allocates memory (see
   * {@link plan} for the first half alone).
   */
  compile(): this {
    if (this.state !== 'planned') this.plan();
    this.exec.allocate(this.contents());
    this.state = 'compiled';
    return this;
  }

  /**
   * The first half of {@link compile}: orders the nodes, checks the ops, and returns the bytes the
   * graph will take (inputs and intermediate tensors) without allocating any: a graph the device
   * cannot hold fails here with an OutOfMemoryError, before ggml is asked for the memory. Lets a
   * caller check a large graph before allocating others; {@link compile} allocates it later.
   */
  plan(): number {
    this.assertBuilding('plan');
    const needed = this.exec.plan(this.contents());
    this.state = 'planned';
    return needed;
  }

  private contents(): GraphContents {
    return {
      ctx: this.ctx,
      leafCtx: this.leafCtx,
      maxNodes: this.maxNodes,
      leaves: this.leaves,
      outputs: this.outputs,
      assigns: this.assigns,
      effects: this.effects,
      operands: this.tape.operands(),
      setLabel: (ptr, label) => this.tape.setLabel(ptr, label),
    };
  }

  /** Sets an input's data (f32 values, converted to the input's type; or int32 for i32 inputs). */
  set(input: Tensor, data: Float32Array | Int32Array): void {
    assertAlive(this.state !== 'disposed', 'graph');
    if (this.state !== 'compiled') throw new QtuneError('GRAPH', 'set: compile() the graph first');
    if (input.graph !== this || input.kind !== 'input')
      throw new QtuneError('GRAPH', `set: ${input.toString()} is not an input of this graph`);
    if (data.length !== input.numel) {
      throw new ShapeError(
        `set: input "${input.name}" ${fmtShape(input.shape)} needs ${input.numel} values, got ${data.length}`,
      );
    }
    if (data instanceof Int32Array)
      for (const b of this.bounds.get(input) ?? []) checkIndices(input, data, b);
    this.exec.upload(input, data);
    for (const fn of this.setHooks.get(input) ?? []) fn(data);
  }

  /** Computes the graph once. */
  run(): void {
    this.beginRun();
    this.exec.run();
  }

  /**
   * {@link run} on a worker thread (koffi's async call), so the event loop goes on while the graph
   * computes: a server in the same process answers meanwhile. The graph and the tensors it reads or
   * writes must not be used until the promise settles.
   */
  runAsync(): Promise<void> {
    this.beginRun();
    return this.exec.runAsync();
  }

  /**
   * Computes the graph once as {@link run} does (the before-run hooks, the status check, the run
   * count), through `compute` given the compiled ggml graph and the graph's backend: the profiler's
   * node-by-node run (src/tensor/profile.ts). `compute` returns a ggml status.
   */
  runWith(compute: (cgraph: GraphPtr, backend: Backend) => number): void {
    this.beginRun();
    this.exec.runWith(compute);
  }

  private beginRun(): void {
    assertAlive(this.state !== 'disposed', 'graph');
    if (this.state !== 'compiled') throw new QtuneError('GRAPH', 'run: compile() the graph first');
    for (const h of this.hooks) h();
  }

  /** Reads an output or input as f32 values. */
  read(t: Tensor): Float32Array {
    assertAlive(this.state !== 'disposed', 'graph');
    if (this.state !== 'compiled') throw new QtuneError('GRAPH', 'read: compile() and run() the graph first');
    if (t.graph !== this || (t.kind === 'node' && !this.outputs.has(t))) {
      throw new QtuneError('GRAPH', `read: ${t.toString()} is not an output of this graph`, {
        hint: 'mark it with graph.output(t) before compile(), and read the tensor output() returned',
      });
    }
    return this.exec.read(t);
  }

  /** Bytes of the compute buffers (intermediate tensors, on every device) and of the input buffer. */
  memory(): { compute: number; inputs: number } {
    return this.exec.memory();
  }

  /** Bytes of the compute buffer and of the inputs on one device of the graph. */
  memoryOn(backend: Backend): { compute: number; inputs: number } {
    return this.exec.memoryOn(backend);
  }

  /**
   * Parts of the compiled graph that run on one device each (1 on a single device): each boundary is
   * a copy of activations between devices.
   */
  get splits(): number {
    return this.exec.splits;
  }

  /**
   * The compiled graph's nodes in execution order: op (`MUL_MAT`, `ADD`, ...), name, type, and the
   * name and type of each source. For checks of what a graph computes in which type (the precision
   * modes' matmuls); empty before {@link compile} or {@link plan}.
   */
  nodes(): GraphNode[] {
    return this.exec.nodes();
  }

  /** Number of ggml nodes in the compiled graph. */
  get nodeCount(): number {
    return this.exec.nodeCount;
  }

  get alive(): boolean {
    return this.state !== 'disposed';
  }

  /** Runs `fn` when the graph is disposed (native memory that refers to the graph, such as the profiler's views). */
  onDispose(fn: () => void): void {
    this.disposers.push(fn);
  }

  /** Frees every native resource of the graph. Its tensors must not be used afterwards. */
  dispose(): void {
    if (this.state === 'disposed') return;
    for (const fn of this.disposers.splice(0)) fn();
    this.exec.free();
    this.ctx.free();
    this.leafCtx.free();
    this.state = 'disposed';
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private assertBuilding(what: string): void {
    assertAlive(this.state !== 'disposed', 'graph');
    if (this.state !== 'building') {
      throw new QtuneError('GRAPH', `cannot add ${what} to a compiled graph`, {
        hint: 'build a new Graph for a different computation',
      });
    }
  }
}
