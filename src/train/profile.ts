/**
 * The profile of one training step: the Trainer's three graphs (accumulate, norm, update) run node
 * by node on one chosen step (src/tensor/profile.ts), their other runs timed whole for the
 * unprofiled wall time; the nodes grouped by op label, by decoder block and by op kind, and written
 * as a Chrome trace (Trace Event Format, opens in Perfetto or chrome://tracing).
 *
 * @example
 * const trainer = new Trainer(prepared, data, { trainType: 'lora', maxSteps: 3, profile: true });
 * trainer.train();
 * const p = trainer.profile()!;
 * console.log(formatProfile(p).join('\n'));
 * writeProfileTrace('out/profile.json', p, trainer.memory());
 */
import { ConfigError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { Graph } from '../tensor/graph.js';
import { calibrateOverhead, profileRun, type GraphProfile, type ProfiledNode } from '../tensor/profile.js';
import type { MemoryReport } from './memory.js';

/** The Trainer's graphs, in the order a step runs them. */
export type StepGraph = 'accumulate' | 'norm' | 'update';
const STEP_GRAPHS: readonly StepGraph[] = ['accumulate', 'norm', 'update'];

/** Which step to profile. */
export interface ProfileOptions {
  /** The optimizer step (1-based) run node by node. Default 2: after the first step has warmed up. */
  step?: number;
}

/** One row of a grouped table. */
export interface ProfileRow {
  key: string;
  ms: number;
  /** Of the sum of the step's node times. */
  share: number;
  calls: number;
  /** FLOPs of the nodes whose count is known, over the time of all of them; null if none is known. */
  gflops: number | null;
  gb: number;
}

export interface StepProfile {
  step: number;
  /** Each graph run of the step, in order (accumulate once per micro-batch, then norm and update). */
  runs: GraphProfile[];
  /** The per-call overhead of a node-by-node compute, ns (a trivial node's median time). */
  overheadNs: number;
  /** Nodes computed in the step (views skipped) and views skipped. */
  calls: number;
  skipped: number;
  /** The sum of the node times, ms, and the wall time of the node-by-node graph runs. */
  sumMs: number;
  profiledMs: number;
  /** Each graph's unprofiled wall time per step (median over the other steps), ms; null when none ran. */
  wallMs: Record<StepGraph, number | null>;
  /** Unprofiled steps the wall times come from. */
  wallSteps: number[];
  byLabel: ProfileRow[];
  byBlock: ProfileRow[];
  /** Op kinds: the same label, ggml op, types and shapes summed over blocks. */
  byKind: ProfileRow[];
  notes: string[];
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** ggml's ne as PyTorch's shape: outermost first, trailing 1s of ne dropped. */
export function shapeOf(ne: readonly number[]): number[] {
  const s = [...ne];
  while (s.length > 1 && s[s.length - 1] === 1) s.pop();
  return s.reverse();
}

const fmtShape = (ne: readonly number[]) => `[${shapeOf(ne).join(',')}]`;

/** Groups nodes by `key`: time, share of `totalMs`, calls, GFLOP/s, GB; largest first. */
export function groupNodes(
  nodes: readonly ProfiledNode[],
  key: (n: ProfiledNode) => string,
  totalMs: number,
): ProfileRow[] {
  const acc = new Map<string, { ns: number; calls: number; flops: number; flopNs: number; bytes: number }>();
  for (const n of nodes) {
    const k = key(n);
    const a = acc.get(k) ?? { ns: 0, calls: 0, flops: 0, flopNs: 0, bytes: 0 };
    a.ns += n.ns;
    a.calls++;
    a.bytes += n.bytes;
    if (n.flops !== null) {
      a.flops += n.flops;
      a.flopNs += n.ns;
    }
    acc.set(k, a);
  }
  return [...acc.entries()]
    .map(([k, a]) => ({
      key: k,
      ms: a.ns / 1e6,
      share: totalMs > 0 ? a.ns / 1e6 / totalMs : 0,
      calls: a.calls,
      gflops: a.flopNs > 0 ? a.flops / a.flopNs : null,
      gb: a.bytes / 1e9,
    }))
    .sort((x, y) => y.ms - x.ms);
}

/**
 * The profiler of a run of `totalSteps` steps for the `profile` option: step 2 (or the last, if
 * fewer) unless the option names one.
 */
export function createStepProfiler(p: true | ProfileOptions, totalSteps: number): StepProfiler {
  const step = p === true || p.step === undefined ? Math.min(2, totalSteps) : p.step;
  if (!Number.isInteger(step) || step < 1 || step > totalSteps)
    throw new ConfigError(`profile_step: ${step} must be a step of this run, 1 to ${totalSteps}`, {
      hint: 'leave it unset to profile step 2 (after a warm-up step)',
    });
  return new StepProfiler(step);
}

/**
 * Runs the Trainer's graphs: node by node on the profiled step, whole (and timed) on the others.
 * Created by the Trainer when its `profile` option is set; {@link result} builds the report.
 */
export class StepProfiler {
  readonly step: number;
  private readonly runs: GraphProfile[] = [];
  private readonly wall = new Map<number, Record<StepGraph, number>>();
  private overheadNs = 0;

  constructor(step: number) {
    this.step = step;
  }

  /** Runs `g` (the step's `graph`) for optimizer step `step` (1-based). */
  run(g: Graph, graph: StepGraph, step: number): void {
    if (step === this.step) {
      if (this.runs.length === 0) this.overheadNs = calibrateOverhead(g.backend);
      this.runs.push(profileRun(g, graph));
      return;
    }
    const t0 = process.hrtime.bigint();
    g.run();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const w = this.wall.get(step) ?? { accumulate: 0, norm: 0, update: 0 };
    w[graph] += ms;
    this.wall.set(step, w);
  }

  /** The profile, once the profiled step has run (null before). */
  result(): StepProfile | null {
    if (this.runs.length === 0) return null;
    const nodes = this.runs.flatMap((r) => r.nodes);
    const sumMs = this.runs.reduce((s, r) => s + r.sumMs, 0);
    const steps = [...this.wall.keys()].sort((a, b) => a - b);
    const wallMs = Object.fromEntries(
      STEP_GRAPHS.map((k) => [k, steps.length === 0 ? null : median(steps.map((s) => this.wall.get(s)![k]))]),
    ) as Record<StepGraph, number | null>;
    const notes = this.runs.flatMap((r) => (r.note === null ? [] : [r.note]));
    if (steps.length === 0)
      notes.push('no unprofiled step ran: no wall time to compare with (run more steps)');
    return {
      step: this.step,
      runs: this.runs,
      overheadNs: this.overheadNs,
      calls: nodes.length,
      skipped: this.runs.reduce((s, r) => s + r.skipped, 0),
      sumMs,
      profiledMs: this.runs.reduce((s, r) => s + r.runMs, 0),
      wallMs,
      wallSteps: steps,
      byLabel: groupNodes(nodes, (n) => n.label, sumMs),
      byBlock: groupNodes(nodes, (n) => n.block ?? '(outside blocks)', sumMs),
      byKind: groupNodes(
        nodes,
        (n) =>
          `${n.label} | ${n.op} | ${[n.type, ...n.srcs.map((s) => s.type)].join(' ')} | ${[n.ne, ...n.srcs.map((s) => s.ne)].map(fmtShape).join(' ')}`,
        sumMs,
      ),
      notes,
    };
  }
}

const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

function table(title: string, rows: readonly ProfileRow[], limit: number): string[] {
  const cols = title.split(' | ').length;
  const out = [
    `| ${title} | ms/step | share | calls | GFLOP/s | GB moved |`,
    `|${'---|'.repeat(cols)}---:|---:|---:|---:|---:|`,
  ];
  for (const r of rows.slice(0, limit))
    out.push(
      `| ${r.key} | ${f2(r.ms)} | ${pct(r.share)} | ${r.calls} | ${r.gflops === null ? '-' : f1(r.gflops)} | ${r.gb.toFixed(3)} |`,
    );
  if (rows.length > limit) out.push(`| (${rows.length - limit} more) |${' |'.repeat(cols + 4)}`);
  return out;
}

/** What {@link formatProfile} prints: rows of the label table, the block table or not, top op kinds. */
export interface ProfileFormat {
  labels?: number;
  blocks?: boolean;
  top?: number;
}

/** The profile as text: a summary, the tables by op label and by block, and the top op kinds. */
export function formatProfile(p: StepProfile, o: ProfileFormat = {}): string[] {
  const top = o.top ?? 10;
  const wall = STEP_GRAPHS.map((k) => `${k} ${p.wallMs[k] === null ? 'n/a' : f1(p.wallMs[k])}`).join(', ');
  const overheadMs = (p.overheadNs * p.calls) / 1e6;
  const walls = STEP_GRAPHS.map((k) => p.wallMs[k]);
  const wallSum = walls.every((w) => w !== null) ? walls.reduce((s, w) => s + (w ?? 0), 0) : null;
  const slowdown =
    wallSum === null || wallSum <= 0
      ? []
      : [
          `the node-by-node run took ${f2(p.profiledMs / wallSum)}x the unprofiled graphs' time${p.profiledMs / wallSum > 1.5 ? ': per-node costs beyond the calibrated overhead (thread wake-ups on a busy machine, lost fusion) inflate small ops; compare shares, or profile with fewer threads' : ''}`,
        ];
  const lines = [
    `profile of step ${p.step}, node by node: ${p.calls} nodes computed (${p.skipped} views skipped), their times sum to ${f1(p.sumMs)} ms (${f1(p.profiledMs)} ms wall)`,
    `unprofiled wall ms per step: ${wall}${p.wallSteps.length > 0 ? ` (median of step ${p.wallSteps.join(', ')})` : ''}`,
    `per-call overhead ~${(p.overheadNs / 1000).toFixed(1)} µs (a trivial node), ${p.calls} calls: ~${f1(overheadMs)} ms of the sum`,
    ...slowdown,
    ...p.notes,
    '',
    ...table('op label', p.byLabel, o.labels ?? 40),
    '',
    ...(o.blocks === false ? [] : [...table('block', p.byBlock, 100), '']),
    `top ${top} ops (the same label, ggml op, types and shapes, summed over blocks):`,
    ...table('op label | ggml op | types (result, sources) | shapes (result, sources)', p.byKind, top),
  ];
  return lines;
}

interface TraceEvent {
  name: string;
  cat?: string;
  ph: 'X' | 'C' | 'M';
  ts: number;
  dur?: number;
  pid: number;
  tid: number;
  args?: Record<string, unknown>;
}

const TID: Record<string, number> = { accumulate: 1, norm: 2, update: 3 };
const MB = 2 ** 20;

/**
 * The profile as a Chrome trace: one complete ("X") event per node, one thread per graph
 * (accumulate, norm, update; timestamps in µs from the step's start, the graphs one after another),
 * and the Trainer's memory by phase as counter ("C") events and in `metadata`.
 */
export function chromeTrace(
  p: StepProfile,
  memory?: MemoryReport,
): { traceEvents: TraceEvent[]; metadata: unknown } {
  const events: TraceEvent[] = [
    { name: 'process_name', ph: 'M', ts: 0, pid: 1, tid: 0, args: { name: `qtune step ${p.step}` } },
  ];
  for (const [name, tid] of Object.entries(TID))
    events.push({ name: 'thread_name', ph: 'M', ts: 0, pid: 1, tid, args: { name } });
  let offsetUs = 0;
  const ends: Record<string, number> = {};
  for (const r of p.runs) {
    const tid = TID[r.graph] ?? 4;
    if (!r.perNode)
      events.push({ name: r.graph, cat: 'graph', ph: 'X', ts: offsetUs, dur: r.runMs * 1000, pid: 1, tid });
    for (const n of r.nodes) {
      events.push({
        name: n.label,
        cat: n.op,
        ph: 'X',
        ts: offsetUs + n.startNs / 1000,
        dur: n.ns / 1000,
        pid: 1,
        tid,
        args: {
          block: n.block,
          op: n.op,
          name: n.name,
          types: [n.type, ...n.srcs.map((s) => s.type)].join(' '),
          shapes: [n.ne, ...n.srcs.map((s) => s.ne)].map(fmtShape).join(' '),
          flops: n.flops,
          bytes: n.bytes,
        },
      });
    }
    offsetUs += r.runMs * 1000;
    ends[r.graph] = offsetUs;
  }
  if (memory !== undefined) {
    const counter = (ts: number, m: { engineBytes: number; rssBytes: number }) =>
      events.push({
        name: 'memory MiB',
        ph: 'C',
        ts,
        pid: 1,
        tid: 0,
        args: { engine: Math.round(m.engineBytes / MB), rss: Math.round(m.rssBytes / MB) },
      });
    // the phases as the Trainer measured them: after the forward, the backward and the update
    counter(0, memory.forward);
    counter(ends['accumulate'] ?? 0, memory.backward);
    counter(ends['update'] ?? offsetUs, memory.optimizer);
  }
  return {
    traceEvents: events,
    metadata: {
      step: p.step,
      overhead_ns_per_node: p.overheadNs,
      node_time_sum_ms: p.sumMs,
      unprofiled_wall_ms: p.wallMs,
      notes: p.notes,
      ...(memory === undefined
        ? {}
        : {
            memory_mib: Object.fromEntries(
              (['load', 'forward', 'backward', 'optimizer'] as const).map((k) => [
                k,
                { engine: memory[k].engineBytes / MB, rss: memory[k].rssBytes / MB },
              ]),
            ),
            peak_rss_mib: memory.peakRssBytes / MB,
          }),
    },
  };
}

/** Writes {@link chromeTrace} to `file` atomically (a temporary file renamed into place). */
export function writeProfileTrace(file: string, p: StepProfile, memory?: MemoryReport): void {
  writeFileAtomic(file, [JSON.stringify(chromeTrace(p, memory))]);
}
