/**
 * The nodes of a compiled ggml graph as plain records: op, name, type, shape, bytes and sources,
 * read from each node's `struct ggml_tensor`. The per-op profiler and `Graph.nodes()` (the checks of
 * what a graph computes in which type) both read graphs through it; `Graph` reads here the few other
 * fields it needs (a node's address, the graph's node and leaf counts, the device a node writes into).
 */
import {
  CGraphHeadStruct,
  GGML_MAX_SRC,
  TensorStruct,
  koffi,
  type GraphPtr,
  type TensorPtr,
} from './ggml.js';
import { getEngine } from './library.js';
import { bufferDevice } from './memory.js';

/** A tensor of a graph: ggml type name and id, `ne` (innermost first) and bytes. */
export interface NativeTensorInfo {
  address: bigint;
  name: string;
  type: string;
  typeId: number;
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
    name: api.get_name(ptr as TensorPtr),
    type: api.type_name(raw.type),
    typeId: raw.type,
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
    out.push({ ...info, index: i, ptr, op: api.op_desc(ptr), srcs });
  }
  return out;
}

/** A tensor's address: the key under which JS maps remember a node (the graph's profiler labels). */
export function tensorAddress(ptr: TensorPtr): bigint {
  return koffi.address(ptr);
}

/** How many nodes and leafs `cgraph` holds (the head of `struct ggml_cgraph`). */
export function graphCounts(cgraph: GraphPtr): { nodes: number; leafs: number } {
  const head = koffi.decode(cgraph, CGraphHeadStruct) as { n_nodes: number; n_leafs: number };
  return { nodes: head.n_nodes, leafs: head.n_leafs };
}

const VIEW_SRC_OFFSET = koffi.offsetof(TensorStruct, 'view_src');
const BUFFER_OFFSET = koffi.offsetof(TensorStruct, 'buffer');

/**
 * The device whose buffer holds `node`'s data (for a view, its source's): a node that writes into
 * a stored tensor. Null when the data is in no buffer yet (an intermediate the allocator places) or
 * in one not allocated through `NativeBuffer`.
 */
export function nodeBufferDevice(node: TensorPtr): string | null {
  const viewSrc = koffi.decode(node, VIEW_SRC_OFFSET, 'void *') as unknown;
  const buffer = koffi.decode(viewSrc ?? node, BUFFER_OFFSET, 'void *') as unknown;
  return buffer === null ? null : bufferDevice(koffi.address(buffer));
}
