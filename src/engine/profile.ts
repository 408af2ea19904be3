/**
 * What the per-op profiler (src/tensor/profile.ts) needs from ggml: the node list of a compiled graph
 * with each node's op, type, shape and sources, and computing a graph one node at a time through
 * one-node views (`ggml_graph_view`), each timed. Nothing here runs unless a profile is asked for.
 */
import { CGraphStruct, koffi, type BackendPtr, type GraphPtr } from './ggml.js';
import { getEngine } from './library.js';

export { NO_OP_NODES, graphNodes, type NativeNode, type NativeTensorInfo } from './nodes.js';

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
