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
 */
import { cpuBackend, type Backend } from '../engine/device.js';
import { GGML_TYPE_IDS, dtypeFromId, type DType } from '../engine/dtype.js';
import type { GraphPtr, TensorPtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { graphCounts, graphNodes, nodeBufferDevice, tensorAddress } from '../engine/nodes.js';
import {
  GraphAllocator,
  NativeBuffer,
  NativeContext,
  Scheduler,
  assertAlive,
  availableMemory,
  fmtBytes,
  formatBytes,
} from '../engine/memory.js';
import {
  DTypeError,
  OutOfMemoryError,
  QtuneError,
  ShapeError,
  TokenRangeError,
  UnsupportedOpError,
  fmtShape,
} from '../errors.js';
import { decode, encode } from './host.js';
import { isContiguous, strides } from './ops/common.js';
import { checkShape, numel, sameShape, toNe, type Shape } from './shape.js';
import { Tensor } from './tensor.js';

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

/** Values an i32 input may hold: [0, size), with what to say when one is outside. */
interface IndexBound {
  size: number;
  what: string;
  hint: string | undefined;
}

/** Returns the gradient for each input of an op (null where none is needed). */
export type BackwardRule = (dy: Tensor) => (Tensor | null)[];

interface TapeEntry {
  op: string;
  inputs: Tensor[];
  output: Tensor;
  backward: BackwardRule;
  /** The labels and block scopes open when the forward op was built (its backward gets them too). */
  labels: LabelFrame[];
  blocks: string[];
}

/**
 * Where a node came from, for the profiler (src/tensor/profile.ts): its op label (`linear.fwd`,
 * `lora/linear.dW`, `xent.bwd`; null when none was given) and its block scope (`layers.3`).
 */
export interface NodeLabel {
  label: string | null;
  block: string | null;
}

/** A label on the stack; a weak one (the default of a backward rule) yields to any label inside it. */
interface LabelFrame {
  name: string;
  weak: boolean;
}

/** The label base of a tape op in the profile (forward `<base>.fwd`, backward `<base>.bwd`). */
const LABEL_OF_OP: Record<string, string> = { rmsNorm: 'rms_norm', crossEntropy: 'xent', embedding: 'embed' };

function joinLabels(frames: readonly LabelFrame[]): string | null {
  if (frames.length === 0) return null;
  const last = frames.length - 1;
  return frames
    .filter((f, i) => !f.weak || i === last)
    .map((f) => f.name)
    .join('/');
}

/** Called after every {@link Graph.run} while set (see {@link Graph.setRunObserver}). */
export type RunObserver = (graph: Graph, ms: number) => void;
let runObserver: RunObserver | null = null;

interface LeafInit {
  tensor: Tensor;
  data: Float32Array | Int32Array | null;
}

/** One node of a compiled graph ({@link Graph.nodes}). */
export interface GraphNode {
  op: string;
  name: string;
  dtype: DType;
  /** The sources; `node` is the source's index among the graph's nodes, null for a leaf (weight, input). */
  src: { name: string; dtype: DType; node: number | null }[];
}

export interface GraphOptions {
  /** Most nodes the graph may hold (ggml allocates their metadata up front). Default 32768. */
  maxNodes?: number;
  /** Most input and constant tensors. Default 1024. */
  maxInputs?: number;
}

type State = 'building' | 'planned' | 'compiled' | 'disposed';

const active: Graph[] = [];

/**
 * The backends of a graph in the scheduler's priority order: each device once, the accelerators in
 * the order given, the CPU last (ggml's scheduler requires it, and runs there what no other can).
 */
function schedulerOrder(list: readonly Backend[]): Backend[] {
  if (list.length === 0) throw new QtuneError('INVALID_ARGUMENT', 'a graph needs a backend');
  const unique = [...new Set(list)];
  if (unique.length === 1) return unique;
  const cpu = unique.find((b) => b.isCpu) ?? cpuBackend();
  return [...unique.filter((b) => !b.isCpu), cpu];
}

/** One pass over `data`: the first value outside [0, bound.size) is a TokenRangeError naming where it is. */
function checkIndices(t: Tensor, data: Int32Array, bound: IndexBound): void {
  const size = bound.size;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v >= 0 && v < size) continue;
    const T = t.shape[t.shape.length - 1] ?? 1;
    const batched = t.numel > T;
    throw new TokenRangeError(
      bound.what,
      {
        id: v,
        position: i % T,
        ...(batched ? { sequence: Math.floor(i / T) } : {}),
        vocabSize: size,
      },
      bound.hint === undefined ? {} : { hint: bound.hint },
    );
  }
}

export class Graph {
  /** The device the graph runs on; with several, the first in the scheduler's order. */
  readonly backend: Backend;
  /** Every device the graph may run ops on: one, or several in the scheduler's order (CPU last). */
  readonly backends: readonly Backend[];
  readonly maxNodes: number;
  private readonly ctx: NativeContext;
  private readonly leafCtx: NativeContext;
  private readonly leaves: LeafInit[] = [];
  private tape: TapeEntry[] = [];
  private readonly trackers: Set<Tensor>[] = [];
  private readonly outputs = new Set<Tensor>();
  private readonly assigns: { target: TensorPtr; value: Tensor; label: NodeLabel }[] = [];
  private readonly effects: Tensor[] = [];
  private labelStack: LabelFrame[] = [];
  private blockStack: string[] = [];
  /** The label of every node built through {@link node}, by node address (JS only; ggml never sees it). */
  private readonly nodeLabels = new Map<bigint, NodeLabel>();
  private readonly hooks: (() => void)[] = [];
  private readonly disposers: (() => void)[] = [];
  private readonly setHooks = new Map<Tensor, ((data: Float32Array | Int32Array) => void)[]>();
  private readonly bounds = new Map<Tensor, IndexBound[]>();
  private recording = true;
  private state: State = 'building';
  private leafBuffer: NativeBuffer | null = null;
  private allocator: GraphAllocator | null = null;
  private scheduler: Scheduler | null = null;
  private cgraph: GraphPtr | null = null;
  private runs = 0;

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
    return this.runs;
  }

  get isCompiled(): boolean {
    return this.state === 'compiled';
  }

  /** Whether the graph spans several devices (and is run by ggml's scheduler). */
  get isMultiDevice(): boolean {
    return this.backends.length > 1;
  }

  /** Whether stored tensors on `backend` may take part in this graph. */
  holds(backend: Backend): boolean {
    return this.backends.includes(backend);
  }

  /** Where inputs and constants live: the graph's device, or the host (the CPU) for several. */
  private get inputBackend(): Backend {
    return this.backends[this.backends.length - 1]!;
  }

  private deviceNames(): string {
    return this.backends.map((b) => b.name).join(', ');
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
    this.nodeLabels.set(tensorAddress(ptr), {
      label: joinLabels(this.labelStack),
      block: this.blockStack.length === 0 ? null : this.blockStack.join('.'),
    });
    return new Tensor({
      ptr,
      shape,
      dtype,
      kind: 'node',
      graph: this,
      requiresGrad: requiresGrad && this.recording,
      name,
    });
  }

  /** Records an op's gradient rule on the tape (a no-op while building the backward pass itself). */
  record(op: string, inputs: Tensor[], output: Tensor, backward: BackwardRule): Tensor {
    const info = output.kind === 'node' ? this.nodeLabels.get(tensorAddress(output.ptr)) : undefined;
    if (info !== undefined && info.label === null) info.label = `${LABEL_OF_OP[op] ?? op}.fwd`;
    if (this.recording && output.requiresGrad) {
      const labels = [...this.labelStack];
      const blocks = [...this.blockStack];
      this.tape.push({ op, inputs, output, backward, labels, blocks });
    }
    return output;
  }

  /**
   * Builds `fn` with the op label `name` on the nodes it creates (nested labels join with `/`: a
   * LoRA product is `lora/linear.fwd`). Labels cost nothing in the ggml graph: they live in a JS map
   * that only the profiler reads. Backward nodes get the labels of their forward op.
   */
  label<T>(name: string, fn: () => T): T {
    this.labelStack.push({ name, weak: false });
    try {
      return this.build(fn);
    } finally {
      this.labelStack.pop();
    }
  }

  /**
   * Builds `fn` inside the block scope `name` (a model's `layers.3`): the profiler groups nodes by
   * it. Scopes nest with `.`; backward nodes get the scope of their forward op.
   *
   * @example
   * x = g.scope(`layers.${i}`, () => block(x));
   */
  scope<T>(name: string, fn: () => T): T {
    this.blockStack.push(name);
    try {
      return this.build(fn);
    } finally {
      this.blockStack.pop();
    }
  }

  /** The label and block of the node at `address` (from tensorAddress), if it was built through {@link node}. */
  labelOf(address: bigint): NodeLabel | undefined {
    return this.nodeLabels.get(address);
  }

  /** Runs `fn` without recording gradient rules (optimizer updates, evaluation-only parts). */
  noGrad<T>(fn: () => T): T {
    const was = this.recording;
    this.recording = false;
    try {
      return this.build(fn);
    } finally {
      this.recording = was;
    }
  }

  /** Whether ops currently record gradient rules (false while the backward pass is being built). */
  get isRecording(): boolean {
    return this.recording;
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
    this.recording = false;
    active.push(this);
    try {
      this.propagate(this.tape, grads);
    } finally {
      active.pop();
      this.recording = true;
    }
    const out = new Map<Tensor, Tensor>();
    const targets = wrt ?? [...grads.keys()].filter((t) => t.kind === 'stored');
    for (const t of targets) {
      const g = grads.get(t);
      if (g !== undefined) out.set(t, g);
    }
    return out;
  }

  /** Walks `tape` backwards, adding each op's input gradients into `grads`. */
  private propagate(tape: readonly TapeEntry[], grads: Map<Tensor, Tensor>): void {
    const { api } = getEngine();
    const outerLabels = this.labelStack;
    const outerBlocks = this.blockStack;
    try {
      for (let i = tape.length - 1; i >= 0; i--) this.propagateOne(tape[i]!, grads, api);
    } finally {
      this.labelStack = outerLabels;
      this.blockStack = outerBlocks;
    }
  }

  /** One op's gradient rule, built under its forward's labels and block, its default label `<op>.bwd`. */
  private propagateOne(
    entry: TapeEntry,
    grads: Map<Tensor, Tensor>,
    api: ReturnType<typeof getEngine>['api'],
  ): void {
    const dy = grads.get(entry.output);
    if (dy === undefined) return;
    this.blockStack = entry.blocks;
    const base = LABEL_OF_OP[entry.op] ?? entry.op;
    // an op that labelled its own forward (crossEntropy: `xent`) gets `xent.bwd`, not `xent/xent.bwd`
    const own = entry.labels[entry.labels.length - 1]?.name;
    const outer = own === base || own === `${base}.fwd` ? entry.labels.slice(0, -1) : entry.labels;
    this.labelStack = [...outer, { name: `${base}.bwd`, weak: true }];
    const dxs = entry.backward(dy);
    this.labelStack = [...entry.labels, { name: 'grad.accumulate', weak: false }];
    entry.inputs.forEach((x, k) => {
      const raw = dxs[k] ?? null;
      if (raw === null || !x.requiresGrad) return;
      // ggml's elementwise kernels need contiguous rows: views (transpose, slice) are copied
      const dx = isContiguous(raw)
        ? raw
        : this.node((ctx) => api.cont(ctx, raw.ptr), raw.shape, raw.dtype, false);
      if (!sameShape(dx.shape, x.shape)) {
        throw new QtuneError(
          'GRAPH',
          `gradient rule of ${entry.op} returned ${fmtShape(dx.shape)} for input ${fmtShape(x.shape)}`,
        );
      }
      const prev = grads.get(x);
      grads.set(
        x,
        prev === undefined ? dx : this.node((ctx) => api.add(ctx, prev.ptr, dx.ptr), x.shape, 'f32', false),
      );
    });
  }

  /**
   * Runs `fn` and returns, with its result, the stored tensors with requiresGrad that its ops read
   * (gradient checkpointing needs them before the backward pass exists).
   */
  track<T>(fn: () => T): { result: T; used: Tensor[] } {
    const used = new Set<Tensor>();
    this.trackers.push(used);
    try {
      return { result: fn(), used: [...used] };
    } finally {
      this.trackers.pop();
    }
  }

  /** Called by every op with its operands (see {@link track}). */
  noteOperand(t: Tensor): void {
    if (t.kind === 'stored' && t.requiresGrad) for (const s of this.trackers) s.add(t);
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
    const { api } = getEngine();
    const outerTape = this.tape;
    const wasRecording = this.recording;
    this.tape = [];
    this.recording = true;
    active.push(this);
    try {
      // x + 0·dy[0]: the recomputation depends on dy, so ggml orders it after the gradient of the
      // segment's output exists instead of keeping its activations alive from the forward pass
      const es = api.type_size(GGML_TYPE_IDS[dy.dtype]);
      const dep = this.node(
        (ctx) => api.scale(ctx, api.view_4d(ctx, dy.ptr, 1, 1, 1, 1, es, es, es, 0), 0),
        [1],
        'f32',
        false,
        'recompute_dep',
      );
      const fresh = inputs.map((x) =>
        this.record(
          'recompute_input',
          [x],
          this.node((ctx) => api.add(ctx, x.ptr, dep.ptr), x.shape, x.dtype, x.requiresGrad),
          (d) => [d],
        ),
      );
      const y = fn(...fresh);
      const grads = new Map<Tensor, Tensor>([[y, dy]]);
      this.recording = false;
      this.propagate(this.tape, grads);
      return [...inputs.map((x) => grads.get(x) ?? null), ...params.map((p) => grads.get(p) ?? null)];
    } finally {
      active.pop();
      this.tape = outerTape;
      this.recording = wasRecording;
    }
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
   * Writes `value` into the stored tensor `target` at the end of each run (after every read of it).
   * With `at`, writes into the part of `target` that starts at index `at.start` along `at.axis` and
   * has `value`'s shape (a KV cache filling up), leaving the rest as it is.
   */
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

  assign(target: Tensor, value: Tensor, at?: { axis: number; start: number }): void {
    this.assertBuilding('assign');
    if (target.kind !== 'stored')
      throw new QtuneError('GRAPH', `assign: ${target.toString()} is not a stored tensor`);
    assertAlive(target.store!.alive, `the tensor store of ${target.toString()}`);
    if (!this.holds(target.backend)) {
      throw new QtuneError(
        'GRAPH',
        `assign: ${target.toString()} lives on ${target.backend.name}, this graph runs on ${this.deviceNames()}`,
      );
    }
    if (at === undefined) {
      if (target.numel !== value.numel)
        throw new ShapeError(`assign: ${fmtShape(value.shape)} into ${fmtShape(target.shape)}`);
      this.assigns.push({ target: target.ptr, value, label: this.assignLabel() });
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
    this.assigns.push({ target: view.ptr, value, label: this.assignLabel() });
  }

  /** The label of the copy that writes an assigned value back: `assign` inside the open labels. */
  private assignLabel(): NodeLabel {
    return {
      label: joinLabels([...this.labelStack, { name: 'assign', weak: false }]),
      block: this.blockStack.length === 0 ? null : this.blockStack.join('.'),
    };
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
    const cgraph = this.cgraph!;
    if (this.leaves.length > 0) {
      this.leafBuffer = NativeBuffer.forContext(
        this.leafCtx,
        this.inputBackend,
        this.inputBackend.bufferType,
        'graph inputs',
      );
      this.leafBuffer.clear(0);
      for (const leaf of this.leaves) if (leaf.data !== null) this.upload(leaf.tensor, leaf.data);
    }
    if (this.isMultiDevice) this.allocateScheduled(cgraph);
    else if (!this.allocator!.allocate(cgraph)) {
      const needed = this.allocator!.measure(cgraph);
      throw this.outOfMemory(needed, availableMemory(this.backend));
    }
    this.state = 'compiled';
    return this;
  }

  /**
   * The first half of {@link compile}: orders the nodes, checks the ops, and measures the memory the
   * graph will take (its inputs and intermediate tensors, in bytes, returned) without allocating any: a graph the device
   * cannot hold fails here with an OutOfMemoryError, before ggml is asked for the memory. Lets a
   * caller check a large graph before allocating others; {@link compile} allocates it later.
   */
  plan(): number {
    this.assertBuilding('plan');
    const { api } = getEngine();
    const cgraph = api.new_graph_custom(this.ctx.ptr, this.maxNodes, false);
    for (const t of this.outputs) {
      api.set_output(t.ptr);
      api.build_forward_expand(cgraph, t.ptr);
    }
    for (const a of this.assigns) api.build_forward_expand(cgraph, a.value.ptr);
    for (const a of this.assigns) {
      if (!this.ctx.hasRoom(1))
        throw new QtuneError('GRAPH', 'graph reached its node limit', {
          hint: 'raise GraphOptions.maxNodes',
        });
      const copy = api.cpy(this.ctx.ptr, a.value.ptr, a.target);
      this.nodeLabels.set(tensorAddress(copy), a.label);
      api.build_forward_expand(cgraph, copy);
    }
    for (const e of this.effects) api.build_forward_expand(cgraph, e.ptr);
    const n = api.graph_n_nodes(cgraph);
    if (n === 0)
      throw new QtuneError('GRAPH', 'compile: the graph computes nothing', {
        hint: 'mark a result with output() or assign()',
      });
    if (this.isMultiDevice) this.checkSupportScheduled(cgraph, n);
    else this.checkSupport(cgraph, n);
    this.checkLeafDevices();

    this.cgraph = cgraph;
    if (this.isMultiDevice) {
      // ggml's scheduler splits the graph and measures its parts when it allocates them (compile)
      this.state = 'planned';
      return 0;
    }
    // measured before the inputs have memory, so the measure counts them with the intermediates
    const allocator = new GraphAllocator(this.backend);
    const needed = allocator.measure(cgraph);
    const free = availableMemory(this.backend);
    if (needed > free) {
      allocator.free();
      this.cgraph = null;
      throw this.outOfMemory(needed, free);
    }
    this.allocator = allocator;
    this.state = 'planned';
    return needed;
  }

  private outOfMemory(needed: number, free: number): OutOfMemoryError {
    return new OutOfMemoryError(
      `${this.backend.name} has ${fmtBytes(free)} available, this graph needs ${fmtBytes(needed)} for its inputs and intermediate tensors`,
      {
        hint: 'use a smaller batch or context length, quantize the frozen weights, or enable gradient checkpointing',
        details: { device: this.backend.name, needed, free },
      },
    );
  }

  /** Lets ggml's scheduler assign each node a device, split the graph and allocate the parts. */
  private allocateScheduled(cgraph: GraphPtr): void {
    const counts = graphCounts(cgraph);
    // the scheduler's hash set must hold every node and leaf; ggml rounds it up to a prime
    this.scheduler = new Scheduler(this.backends, 2 * (counts.nodes + counts.leafs) + 64);
    if (!this.scheduler.allocate(cgraph)) {
      this.scheduler.free();
      this.scheduler = null;
      throw new OutOfMemoryError(
        `${this.deviceNames()} have not enough memory for this graph's intermediate tensors`,
        {
          hint: 'use a smaller batch or context length, put fewer blocks on the fullest device, or enable gradient checkpointing',
          details: Object.fromEntries(this.backends.map((b) => [b.name, formatBytes(b.memory().free)])),
        },
      );
    }
  }

  private checkSupport(cgraph: GraphPtr, n: number): void {
    const { api } = getEngine();
    for (let i = 0; i < n; i++) {
      const node = api.graph_node(cgraph, i);
      if (!this.backend.supportsOp(node)) {
        const desc = api.op_desc(node);
        throw new UnsupportedOpError(
          `${this.backend.name} cannot run ${desc} (node "${api.get_name(node)}")`,
          {
            hint: 'run this graph on the CPU backend, or use another dtype for its inputs (see `qtune backends`)',
            details: { device: this.backend.name, op: desc },
          },
        );
      }
    }
  }

  /**
   * Several devices: a node that writes into a stored tensor (or a view of one) must run on that
   * tensor's device, and every other node on at least one of the graph's devices. ggml's scheduler
   * aborts the process otherwise, so this is checked first.
   */
  private checkSupportScheduled(cgraph: GraphPtr, n: number): void {
    const { api } = getEngine();
    const byName = new Map(this.backends.map((b) => [b.name, b]));
    for (let i = 0; i < n; i++) {
      const node = api.graph_node(cgraph, i);
      const desc = api.op_desc(node);
      const device = nodeBufferDevice(node);
      if (device !== null) {
        const home = byName.get(device);
        if (home === undefined || !home.supportsOp(node)) {
          throw new UnsupportedOpError(
            `${device} cannot run ${desc} (node "${api.get_name(node)}"), which writes into a tensor stored there`,
            {
              hint: 'store that tensor on a device that supports the op (see `qtune backends`)',
              details: { device, op: desc },
            },
          );
        }
      } else if (!this.backends.some((b) => b.supportsOp(node))) {
        throw new UnsupportedOpError(
          `none of ${this.deviceNames()} can run ${desc} (node "${api.get_name(node)}")`,
          {
            hint: 'use another dtype for its inputs (see `qtune backends`)',
            details: { devices: this.backends.map((b) => b.name), op: desc },
          },
        );
      }
    }
  }

  private checkLeafDevices(): void {
    const seen = new Set<Tensor>();
    const visit = (t: Tensor): void => {
      if (seen.has(t)) return;
      seen.add(t);
      if (t.kind === 'stored' && !this.holds(t.store!.backend)) {
        throw new QtuneError(
          'GRAPH',
          `${t.toString()} lives on ${t.store!.backend.name} but this graph runs on ${this.deviceNames()}`,
          {
            hint: 'copy the store to this backend with store.to(backend)',
          },
        );
      }
    };
    for (const e of this.tape) for (const t of e.inputs) visit(t);
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
    this.upload(input, data);
    for (const fn of this.setHooks.get(input) ?? []) fn(data);
  }

  private upload(t: Tensor, data: Float32Array | Int32Array): void {
    const { api } = getEngine();
    let bytes: Uint8Array;
    if (data instanceof Int32Array) {
      if (t.dtype !== 'i32')
        throw new DTypeError(`input "${t.name}" is ${t.dtype}; int32 data needs an i32 input`);
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } else {
      if (t.dtype === 'i32') throw new DTypeError(`input "${t.name}" is i32; pass an Int32Array`);
      bytes = encode(t.dtype, data, t.shape);
    }
    api.backend_tensor_set(t.ptr, bytes, 0, bytes.byteLength);
  }

  /** Computes the graph once. */
  run(): void {
    const observer = runObserver;
    const t0 = observer === null ? 0 : performance.now();
    const cgraph = this.beginRun();
    this.endRun(
      this.scheduler !== null
        ? this.scheduler.compute(cgraph)
        : getEngine().api.backend_graph_compute(this.backend.ptr, cgraph),
    );
    if (observer !== null) observer(this, performance.now() - t0);
  }

  /**
   * Computes the graph once as {@link run} does (the before-run hooks, the status check, the run
   * count), through `compute` given the compiled ggml graph and the graph's backend: the profiler's
   * node-by-node run (src/tensor/profile.ts). `compute` returns a ggml status.
   */
  runWith(compute: (cgraph: GraphPtr, backend: Backend) => number): void {
    const cgraph = this.beginRun();
    this.endRun(compute(cgraph, this.backend));
  }

  /**
   * Calls `fn` with each graph and its wall time in milliseconds after every {@link run}, until set
   * to null: how benchmarks time the Trainer's graphs. While none is set, run() does no extra work.
   */
  static setRunObserver(fn: RunObserver | null): void {
    runObserver = fn;
  }

  private beginRun(): GraphPtr {
    assertAlive(this.state !== 'disposed', 'graph');
    if (this.state !== 'compiled' || this.cgraph === null)
      throw new QtuneError('GRAPH', 'run: compile() the graph first');
    for (const h of this.hooks) h();
    return this.cgraph;
  }

  private endRun(status: number): void {
    if (status !== 0) {
      throw new QtuneError(
        'COMPUTE',
        `${this.deviceNames()} failed to compute the graph (ggml status ${status})`,
        {
          hint: status === -2 ? 'the device ran out of memory' : 'see the log above',
        },
      );
    }
    this.runs++;
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
    const { api } = getEngine();
    const n = api.nbytes(t.ptr);
    const bytes = new Uint8Array(n);
    api.backend_tensor_get(t.ptr, bytes, 0, n);
    return decode(t.dtype, bytes, t.numel);
  }

  /** Bytes of the compute buffers (intermediate tensors, on every device) and of the input buffer. */
  memory(): { compute: number; inputs: number } {
    const compute = this.backends.reduce((n, b) => n + this.memoryOn(b).compute, 0);
    return { compute, inputs: this.leafBuffer?.bytes ?? 0 };
  }

  /** Bytes of the compute buffer and of the inputs on one device of the graph. */
  memoryOn(backend: Backend): { compute: number; inputs: number } {
    const compute =
      this.scheduler !== null
        ? this.scheduler.bytes(backend)
        : backend === this.backend
          ? (this.allocator?.bytes ?? 0)
          : 0;
    const inputs = backend === this.inputBackend ? (this.leafBuffer?.bytes ?? 0) : 0;
    return { compute, inputs };
  }

  /**
   * Parts of the compiled graph that run on one device each (1 on a single device): each boundary is
   * a copy of activations between devices.
   */
  get splits(): number {
    return this.scheduler?.splits ?? (this.cgraph === null ? 0 : 1);
  }

  /**
   * The compiled graph's nodes in execution order: op (`MUL_MAT`, `ADD`, ...), name, type, and the
   * name and type of each source. For checks of what a graph computes in which type (the precision
   * modes' matmuls); empty before {@link compile} or {@link plan}.
   */
  nodes(): GraphNode[] {
    if (this.cgraph === null) return [];
    const infos = graphNodes(this.cgraph);
    const index = new Map(infos.map((info, i) => [info.address, i]));
    return infos.map((info) => ({
      op: info.op,
      name: info.name,
      dtype: dtypeFromId(info.typeId),
      src: info.srcs.map((s) => ({
        name: s.name,
        dtype: dtypeFromId(s.typeId),
        node: index.get(s.address) ?? null,
      })),
    }));
  }

  /** Number of ggml nodes in the compiled graph. */
  get nodeCount(): number {
    return this.cgraph === null ? 0 : getEngine().api.graph_n_nodes(this.cgraph);
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
    this.allocator?.free();
    this.scheduler?.free();
    this.leafBuffer?.free();
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
