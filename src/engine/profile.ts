/**
 * What the per-op profiler (src/tensor/profile.ts) needs from ggml: the node list of a compiled graph
 * with each node's op, type, shape and sources, and computing a graph one node at a time through
 * one-node views (`ggml_graph_view`), each timed. Nothing here runs unless a profile is asked for.
 */
import {
  GGML_MAX_SRC,
  CGraphStruct,
  TensorStruct,
  koffi,
  type BackendPtr,
  type GraphPtr,
  type TensorPtr,
} from './ggml.js';
import { getEngine } from './library.js';

/** A tensor as the profiler sees it: ggml type name, `ne` (innermost first) and bytes. */
export interface NativeTensorInfo {
  address: bigint;
  type: string;
  ne: [number, number, number, number];
  nbytes: number;
}

/** One node of a compiled graph. */
export interface NativeNode extends NativeTensorInfo {
  /** Position in the graph's execution order. */
  index: number;
  ptr: TensorPtr;
  /** `ggml_op_desc`: the op name, or the unary/GLU op's name (SILU, SWIGLU). */
  op: string;
  name: string;
  srcs: NativeTensorInfo[];
}

/** Ops that only reinterpret memory: the CPU backend computes nothing for them. */
export const NO_OP_NODES: ReadonlySet<string> = new Set(['NONE', 'VIEW', 'RESHAPE', 'PERMUTE', 'TRANSPOSE']);

interface RawTensor {
  type: number;
  ne: ArrayLike<number | bigint>;
  src: unknown[];
}

function tensorInfo(ptr: unknown): { info: NativeTensorInfo; raw: RawTensor } {
  const { api } = getEngine();
  const raw = koffi.decode(ptr, TensorStruct) as RawTensor;
  const ne = Array.from(raw.ne, Number) as [number, number, number, number];
  const info = {
    address: koffi.address(ptr),
    type: api.type_name(raw.type),
    ne,
    nbytes: api.nbytes(ptr as TensorPtr),
  };
  return { info, raw };
}

/** Every node of `cgraph` in execution order, with its sources. */
export function graphNodes(cgraph: GraphPtr): NativeNode[] {
  const { api } = getEngine();
  const n = api.graph_n_nodes(cgraph);
  const out: NativeNode[] = [];
  for (let i = 0; i < n; i++) {
    const ptr = api.graph_node(cgraph, i);
    const { raw, info } = tensorInfo(ptr);
    const srcs: NativeTensorInfo[] = [];
    for (let k = 0; k < GGML_MAX_SRC; k++) {
      const s = raw.src[k];
      if (s === null || s === undefined) continue;
      srcs.push(tensorInfo(s).info);
    }
    out.push({ ...info, index: i, ptr, op: api.op_desc(ptr), name: api.get_name(ptr), srcs });
  }
  return out;
}

/**
 * One-node views of chosen nodes of a compiled graph, made up front (native memory owned by koffi's
 * allocator, freed with {@link dispose}), so that timing one node costs one compute call.
 */
export class NodeViews {
  private readonly views: unknown[];

  constructor(cgraph: GraphPtr, indices: readonly number[]) {
    const { api } = getEngine();
    this.views = indices.map((i) => {
      const view = api.graph_view(cgraph, i, i + 1);
      const mem: unknown = koffi.alloc(CGraphStruct, 1);
      koffi.encode(mem, CGraphStruct, view);
      return mem;
    });
  }

  get length(): number {
    return this.views.length;
  }

  /**
   * Computes view `j` on `backend` and returns its wall time in nanoseconds, or the ggml status when
   * it is not 0 (as a negative number, never a valid time).
   */
  time(backend: BackendPtr, j: number, sync: boolean): number {
    const { api } = getEngine();
    const g = this.views[j] as GraphPtr;
    const t0 = process.hrtime.bigint();
    const status = api.backend_graph_compute(backend, g);
    if (sync) api.backend_synchronize(backend);
    const t1 = process.hrtime.bigint();
    if (status !== 0) return -Math.abs(status) - 1e-3;
    return Number(t1 - t0);
  }

  dispose(): void {
    for (const v of this.views) koffi.free(v);
    this.views.length = 0;
  }
}
