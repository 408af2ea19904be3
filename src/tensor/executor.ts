/**
 * The executor of a {@link Graph}: everything that happens to a built graph in native memory. It
 * orders the nodes into a ggml graph, checks that the devices support every op, measures and
 * allocates its memory (with ggml-alloc on one device, ggml's backend scheduler over several),
 * uploads inputs, computes, and reads results back. The Graph keeps the lifecycle (what may be
 * called when) and delegates the work here.
 */
import { cpuBackend, type Backend } from '../engine/device.js';
import { dtypeFromId, type DType } from '../engine/dtype.js';
import { callAsync, type GraphPtr, type TensorPtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { graphCounts, graphNodes, nodeBufferDevice } from '../engine/nodes.js';
import {
  GraphAllocator,
  NativeBuffer,
  NativeContext,
  Scheduler,
  availableMemory,
  formatBytes,
} from '../engine/memory.js';
import { DTypeError, OutOfMemoryError, QtuneError, TokenRangeError, UnsupportedOpError } from '../errors.js';
import { decode, encode } from './host.js';
import type { NodeLabel } from './tape.js';
import type { Tensor } from './tensor.js';

/** An input or constant, with the data a constant is uploaded with. */
export interface LeafInit {
  tensor: Tensor;
  data: Float32Array | Int32Array | null;
}

/** A write of `value` into a stored tensor (or a view of one) at the end of each run. */
export interface Assign {
  target: TensorPtr;
  value: Tensor;
  label: NodeLabel;
}

/** What a graph built, as its executor plans it. */
export interface GraphContents {
  /** The context of the op nodes; the copies that write assigned values are added to it. */
  ctx: NativeContext;
  leafCtx: NativeContext;
  maxNodes: number;
  leaves: readonly LeafInit[];
  outputs: ReadonlySet<Tensor>;
  assigns: readonly Assign[];
  effects: readonly Tensor[];
  /** Every input of a recorded op: the stored ones must live on one of the graph's devices. */
  operands: readonly Tensor[];
  /** Gives the node at `ptr` a profiler label (the copies of assigned values). */
  setLabel(ptr: TensorPtr, label: NodeLabel): void;
}

/** One node of a compiled graph ({@link Graph.nodes}). */
export interface GraphNode {
  op: string;
  name: string;
  dtype: DType;
  /** The sources; `node` is the source's index among the graph's nodes, null for a leaf (weight, input). */
  src: { name: string; dtype: DType; node: number | null }[];
}

/** Values an i32 input may hold: [0, size), with what to say when one is outside. */
export interface IndexBound {
  size: number;
  what: string;
  hint: string | undefined;
}

/** One pass over `data`: the first value outside [0, bound.size) is a TokenRangeError naming where it is. */
export function checkIndices(t: Tensor, data: Int32Array, bound: IndexBound): void {
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

/**
 * The backends of a graph in the scheduler's priority order: each device once, the accelerators in
 * the order given, the CPU last (ggml's scheduler requires it, and runs there what no other can).
 */
export function schedulerOrder(list: readonly Backend[]): Backend[] {
  if (list.length === 0) throw new QtuneError('INVALID_ARGUMENT', 'a graph needs a backend');
  const unique = [...new Set(list)];
  if (unique.length === 1) return unique;
  const cpu = unique.find((b) => b.isCpu) ?? cpuBackend();
  return [...unique.filter((b) => !b.isCpu), cpu];
}

export class GraphExecutor {
  /** The device the graph runs on; with several, the first in the scheduler's order. */
  readonly backend: Backend;
  private leafBuffer: NativeBuffer | null = null;
  private allocator: GraphAllocator | null = null;
  private scheduler: Scheduler | null = null;
  private cgraph: GraphPtr | null = null;
  private runs = 0;

  /** `backends` in the scheduler's order ({@link schedulerOrder}). */
  constructor(readonly backends: readonly Backend[]) {
    this.backend = backends[0]!;
  }

  get isMultiDevice(): boolean {
    return this.backends.length > 1;
  }

  /** Where inputs and constants live: the graph's device, or the host (the CPU) for several. */
  get inputBackend(): Backend {
    return this.backends[this.backends.length - 1]!;
  }

  deviceNames(): string {
    return this.backends.map((b) => b.name).join(', ');
  }

  get runCount(): number {
    return this.runs;
  }

  /**
   * Orders the nodes (outputs and update values first, then the writes into stored tensors, then
   * the effects), checks the ops and the devices of the stored tensors, and measures the memory of
   * the inputs and intermediate tensors (0 over several devices: the scheduler measures as it
   * allocates). Fails with an OutOfMemoryError before any allocation when the device cannot hold it.
   */
  plan(c: GraphContents): number {
    const { api } = getEngine();
    const cgraph = api.new_graph_custom(c.ctx.ptr, c.maxNodes, false);
    for (const t of c.outputs) {
      api.set_output(t.ptr);
      api.build_forward_expand(cgraph, t.ptr);
    }
    for (const a of c.assigns) api.build_forward_expand(cgraph, a.value.ptr);
    for (const a of c.assigns) {
      if (!c.ctx.hasRoom(1))
        throw new QtuneError('GRAPH', 'graph reached its node limit', {
          hint: 'raise GraphOptions.maxNodes',
        });
      const copy = api.cpy(c.ctx.ptr, a.value.ptr, a.target);
      c.setLabel(copy, a.label);
      api.build_forward_expand(cgraph, copy);
    }
    for (const e of c.effects) api.build_forward_expand(cgraph, e.ptr);
    const n = api.graph_n_nodes(cgraph);
    if (n === 0)
      throw new QtuneError('GRAPH', 'compile: the graph computes nothing', {
        hint: 'mark a result with output() or assign()',
      });
    if (this.isMultiDevice) this.checkSupportScheduled(cgraph, n);
    else this.checkSupport(cgraph, n);
    this.checkLeafDevices(c.operands);

    this.cgraph = cgraph;
    // ggml's scheduler splits the graph and measures its parts when it allocates them (compile)
    if (this.isMultiDevice) return 0;
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
    return needed;
  }

  /** After {@link plan}: gives the inputs memory, uploads the constants, allocates the graph. */
  allocate(c: GraphContents): void {
    const cgraph = this.cgraph!;
    if (c.leaves.length > 0) {
      this.leafBuffer = NativeBuffer.forContext(
        c.leafCtx,
        this.inputBackend,
        this.inputBackend.bufferType,
        'graph inputs',
      );
      this.leafBuffer.clear(0);
      for (const leaf of c.leaves) if (leaf.data !== null) this.upload(leaf.tensor, leaf.data);
    }
    if (this.isMultiDevice) this.allocateScheduled(cgraph);
    else if (!this.allocator!.allocate(cgraph)) {
      const needed = this.allocator!.measure(cgraph);
      throw this.outOfMemory(needed, availableMemory(this.backend));
    }
  }

  private outOfMemory(needed: number, free: number): OutOfMemoryError {
    return new OutOfMemoryError(
      `${this.backend.name} has ${formatBytes(free)} available, this graph needs ${formatBytes(needed)} for its inputs and intermediate tensors`,
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

  private checkLeafDevices(operands: readonly Tensor[]): void {
    const seen = new Set<Tensor>();
    for (const t of operands) {
      if (seen.has(t)) continue;
      seen.add(t);
      if (t.kind === 'stored' && !this.backends.includes(t.store!.backend)) {
        throw new QtuneError(
          'GRAPH',
          `${t.toString()} lives on ${t.store!.backend.name} but this graph runs on ${this.deviceNames()}`,
          {
            hint: 'copy the store to this backend with store.to(backend)',
          },
        );
      }
    }
  }

  /** Writes an input's data to the device (f32 values converted to the input's type, or int32). */
  upload(t: Tensor, data: Float32Array | Int32Array): void {
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

  /** Computes the allocated graph once, on its device or through the scheduler. */
  run(): void {
    const cgraph = this.cgraph!;
    this.finish(
      this.scheduler !== null
        ? this.scheduler.compute(cgraph)
        : getEngine().api.backend_graph_compute(this.backend.ptr, cgraph),
    );
  }

  /**
   * {@link run} on a worker thread (koffi's async call): the event loop runs while the graph
   * computes. Nothing may touch the graph's tensors until the promise settles.
   */
  async runAsync(): Promise<void> {
    const cgraph = this.cgraph!;
    this.finish(
      this.scheduler !== null
        ? await this.scheduler.computeAsync(cgraph)
        : await callAsync(getEngine().api, 'backend_graph_compute', this.backend.ptr, cgraph),
    );
  }

  /** Computes the allocated graph once through `compute`, which returns a ggml status. */
  runWith(compute: (cgraph: GraphPtr, backend: Backend) => number): void {
    this.finish(compute(this.cgraph!, this.backend));
  }

  private finish(status: number): void {
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

  /** A tensor's values as f32. */
  read(t: Tensor): Float32Array {
    const { api } = getEngine();
    const n = api.nbytes(t.ptr);
    const bytes = new Uint8Array(n);
    api.backend_tensor_get(t.ptr, bytes, 0, n);
    return decode(t.dtype, bytes, t.numel);
  }

  memory(): { compute: number; inputs: number } {
    const compute = this.backends.reduce((n, b) => n + this.memoryOn(b).compute, 0);
    return { compute, inputs: this.leafBuffer?.bytes ?? 0 };
  }

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

  get splits(): number {
    return this.scheduler?.splits ?? (this.cgraph === null ? 0 : 1);
  }

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

  get nodeCount(): number {
    return this.cgraph === null ? 0 : getEngine().api.graph_n_nodes(this.cgraph);
  }

  /** Frees the compute and input buffers (the graph frees its contexts). */
  free(): void {
    this.allocator?.free();
    this.scheduler?.free();
    this.leafBuffer?.free();
  }
}
