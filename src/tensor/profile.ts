/**
 * Per-op profiling of one graph run: the compiled ggml graph is computed one node at a time (a
 * one-node `ggml_graph_view` per node, each timed with `process.hrtime.bigint()`), and every node is
 * reported with its op label and block (from {@link Graph.label} and {@link Graph.scope}), ggml op,
 * types, shapes, time, FLOPs and bytes moved. The results equal those of {@link Graph.run}: the same
 * kernels run on the same data in the same order, with a return to JS between nodes.
 *
 * Nodes that only reinterpret memory (VIEW, RESHAPE, PERMUTE, TRANSPOSE, NONE) compute nothing and
 * are skipped. A graph over several devices (ggml's scheduler) is timed as a whole.
 *
 * @example
 * const overheadNs = calibrateOverhead(cpuBackend());
 * const p = profileRun(graph, 'accumulate'); // instead of graph.run()
 * for (const n of p.nodes) console.log(n.label, n.op, n.ns);
 */
import type { Backend } from '../engine/device.js';
import { NO_OP_NODES, NodeViews, graphNodes, type NativeNode } from '../engine/profile.js';
import { QtuneError } from '../errors.js';
import { Graph } from './graph.js';
import { scale } from './ops/elementwise.js';

/** One computed node of a profiled run. */
export interface ProfiledNode {
  /** The graph it ran in (the name given to {@link profileRun}). */
  graph: string;
  /** Position in the graph's execution order. */
  index: number;
  /**
   * Its op label: the one given at build time, else that of the node that consumes it (ggml nodes
   * made inside one op call), else the ggml op name in capitals (`CONT`, `ADD`).
   */
  label: string;
  /** Its block scope (`layers.3`), or null outside any. */
  block: string | null;
  /** ggml's op (`MUL_MAT`, or the unary op's name such as `SILU`). */
  op: string;
  /** The ggml tensor name, when the op gave one. */
  name: string;
  type: string;
  /** ggml's `ne`, innermost first. */
  ne: number[];
  srcs: { type: string; ne: number[] }[];
  /** Start within the run and duration, in nanoseconds. */
  startNs: number;
  ns: number;
  /** Floating-point operations: 2·K·M·N·batch for MUL_MAT, one per element for elementwise ops, else null. */
  flops: number | null;
  /** Bytes read and written: the sources' sizes plus the result's. */
  bytes: number;
}

export interface GraphProfile {
  graph: string;
  /** The computed nodes, in execution order (views skipped). */
  nodes: ProfiledNode[];
  /** Nodes of the ggml graph, views included. */
  graphNodes: number;
  /** View nodes skipped (they compute nothing). */
  skipped: number;
  /** Sum of the node times, ms. */
  sumMs: number;
  /** Wall time of the whole node-by-node run, ms. */
  runMs: number;
  /** False for a graph over several devices, timed as a whole. */
  perNode: boolean;
  note: string | null;
}

const ELEMENTWISE = new Set([
  'ADD',
  'ADD1',
  'SUB',
  'MUL',
  'DIV',
  'SCALE',
  'SQR',
  'SQRT',
  'LOG',
  'EXP',
  'SIN',
  'COS',
  'CLAMP',
  'NEG',
  'ABS',
  'SGN',
  'STEP',
  'TANH',
  'ELU',
  'RELU',
  'SIGMOID',
  'GELU',
  'GELU_ERF',
  'GELU_QUICK',
  'SILU',
  'SILU_BACK',
  'HARDSWISH',
  'HARDSIGMOID',
  'SWIGLU',
  'GEGLU',
  'REGLU',
  'FILL',
]);

const prod = (ne: readonly number[]) => ne.reduce((a, b) => a * b, 1);

/**
 * FLOPs of a node: MUL_MAT of src0 `[K, M]` by src1 `[K, N]` (ggml's ne, with batch dimensions) is
 * 2·K·M·N·batch; an elementwise op counts one per result element; other ops are null (unknown).
 */
export function nodeFlops(n: Pick<NativeNode, 'op' | 'ne' | 'srcs'>): number | null {
  if (n.op === 'MUL_MAT') {
    const k = n.srcs[0]?.ne[0];
    return k === undefined ? null : 2 * k * prod(n.ne);
  }
  return ELEMENTWISE.has(n.op) ? prod(n.ne) : null;
}

interface Prepared {
  nodes: NativeNode[];
  /** Indices (into nodes) of the nodes that compute. */
  computed: number[];
  views: NodeViews;
  labels: { label: string; block: string | null }[];
}

const prepared = new WeakMap<Graph, Prepared>();

/** Labels for every node: its own, else its first consumer's (nodes made inside one op call), else the op name. */
function resolveLabels(g: Graph, nodes: readonly NativeNode[]): Prepared['labels'] {
  const indexOf = new Map<bigint, number>(nodes.map((n, i) => [n.address, i]));
  const consumer = new Array<number>(nodes.length).fill(-1);
  nodes.forEach((n, j) => {
    for (const s of n.srcs) {
      const i = indexOf.get(s.address);
      if (i !== undefined && consumer[i] === -1) consumer[i] = j;
    }
  });
  const out = new Array<{ label: string; block: string | null }>(nodes.length);
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i]!;
    const own = g.labelOf(n.address);
    const c = consumer[i]!;
    if (own !== undefined) out[i] = { label: own.label ?? n.op, block: own.block };
    else if (c !== -1) out[i] = out[c]!;
    else out[i] = { label: n.op, block: null };
  }
  return out;
}

function prepare(g: Graph, cgraph: Parameters<Parameters<Graph['runWith']>[0]>[0]): Prepared {
  let p = prepared.get(g);
  if (p === undefined) {
    const nodes = graphNodes(cgraph);
    const computed = nodes.flatMap((n, i) => (NO_OP_NODES.has(n.op) ? [] : [i]));
    const views = new NodeViews(cgraph, computed);
    p = { nodes, computed, views, labels: resolveLabels(g, nodes) };
    prepared.set(g, p);
    // the views point into the graph's node array: free them with the graph's other native memory
    g.onDispose(() => {
      views.dispose();
      prepared.delete(g);
    });
  }
  return p;
}

/**
 * Runs `g` once, node by node, in place of {@link Graph.run}, and returns the time of every node.
 * `name` names the graph in the report (the Trainer's `accumulate`, `norm`, `update`).
 */
export function profileRun(g: Graph, name: string): GraphProfile {
  if (g.isMultiDevice) {
    const t0 = process.hrtime.bigint();
    g.run();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    return {
      graph: name,
      nodes: [],
      graphNodes: g.nodeCount,
      skipped: 0,
      sumMs: ms,
      runMs: ms,
      perNode: false,
      note: `${name}: a graph over ${g.backends.map((b) => b.name).join(', ')} runs through ggml's scheduler; timed as a whole, not per node`,
    };
  }
  const out: ProfiledNode[] = [];
  let runNs = 0;
  g.runWith((cgraph, backend) => {
    const p = prepare(g, cgraph);
    const sync = !backend.isCpu;
    const origin = process.hrtime.bigint();
    for (let j = 0; j < p.computed.length; j++) {
      const start = Number(process.hrtime.bigint() - origin);
      const ns = p.views.time(backend.ptr, j, sync);
      if (ns < 0) return Math.round(ns); // a ggml status: runWith reports it
      const i = p.computed[j]!;
      const n = p.nodes[i]!;
      out.push({
        graph: name,
        index: i,
        label: p.labels[i]!.label,
        block: p.labels[i]!.block,
        op: n.op,
        name: n.name,
        type: n.type,
        ne: n.ne,
        srcs: n.srcs.map((s) => ({ type: s.type, ne: s.ne })),
        startNs: start,
        ns,
        flops: nodeFlops(n),
        bytes: n.nbytes + n.srcs.reduce((b, s) => b + s.nbytes, 0),
      });
    }
    runNs = Number(process.hrtime.bigint() - origin);
    return 0;
  });
  const p = prepared.get(g)!;
  return {
    graph: name,
    nodes: out,
    graphNodes: p.nodes.length,
    skipped: p.nodes.length - p.computed.length,
    sumMs: out.reduce((s, n) => s + n.ns, 0) / 1e6,
    runMs: runNs / 1e6,
    perNode: true,
    note: null,
  };
}

const overheads = new WeakMap<Backend, number>();

/**
 * The cost of one node-by-node compute call on `backend`, in nanoseconds: the median time of a
 * one-element SCALE node computed through its one-node view `reps` times (measured once per backend
 * and process). Each profiled node's time includes about this much.
 */
export function calibrateOverhead(backend: Backend, reps = 200): number {
  const known = overheads.get(backend);
  if (known !== undefined) return known;
  if (!Number.isInteger(reps) || reps < 1)
    throw new QtuneError('INVALID_ARGUMENT', `calibrateOverhead: reps=${reps} must be a positive integer`);
  const g = new Graph(backend);
  try {
    const x = g.input([1], 'f32', 'calibrate');
    g.output(g.build(() => scale(x, 2)));
    g.compile();
    g.set(x, Float32Array.of(1));
    const times: number[] = [];
    g.runWith((cgraph, b) => {
      const p = prepare(g, cgraph);
      for (let r = 0; r < reps; r++) {
        const ns = p.views.time(b.ptr, 0, !b.isCpu);
        if (ns < 0) return Math.round(ns);
        times.push(ns);
      }
      return 0;
    });
    times.sort((a, b) => a - b);
    const median = times[times.length >> 1]!;
    overheads.set(backend, median);
    return median;
  } finally {
    g.dispose();
  }
}
