/**
 * The training benchmark (`qtune bench`, `npm run bench`): tokens/s and peak RSS of one optimizer
 * step per train type (LoRA, QLoRA over nf4 and int8 bases, full fine-tuning) at the shapes of
 * ../shared/bench/baseline, beside PyTorch's `bench_lora.py` of the same shape and mode run in the
 * same session.
 *
 * Every configuration runs in a child process (./train-child.ts), so each peak RSS is its own: a
 * Llama model allocated with seeded random weights (no download), quantized by
 * `quantizeForTraining` for the QLoRA rows, handed to the Trainer as a `PreparedModel`, and trained
 * on the baseline's synthetic task (a sparse Markov chain over 64 active tokens with 4 successors
 * each, 8 fixed batches cycled). Warm-up steps are not timed; best and median of the timed steps are
 * reported. PyTorch has no QLoRA: the QLoRA rows compare with PyTorch's fp32 LoRA.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getEngine } from '../engine/library.js';
import { ConfigError } from '../errors.js';
import type { Precision } from '../train/trainer.js';
import { openblasWarning, runPython } from './common.js';
import {
  cpuFlags,
  runTypesFor,
  SHAPES,
  type BenchCheckpointing,
  type BenchPrecision,
  type BenchRow,
  type BenchShape,
  type BenchTrainerSettings,
  type ChildResult,
  type ChildSpec,
} from './train-spec.js';

/** What each `--gradient-checkpointing` choice runs (null: the Trainer's default for the train type). */
const CHECKPOINTING_RUNS: Record<BenchCheckpointing, (boolean | null)[]> = {
  default: [null],
  on: [true],
  off: [false],
  both: [false, true],
};
const TRAINER_PRECISION: Record<BenchPrecision, Precision> = { fp32: 'fp32', bf16: 'bf16_autocast' };

// ------------------------------------------------------------------------------------ processes

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The child's entry point (dist/src/bench/train-child.js beside this file). */
const CHILD = path.join(HERE, 'train-child.js');

const BASELINE = path.join('shared', 'bench', 'baseline', 'bench_lora.py');

/**
 * bench_lora.py of the project's `shared/bench/baseline`: the first found looking upward from this
 * package (a checkout anywhere below the project folder finds it), else null.
 */
export function defaultBaseline(from = HERE): string | null {
  for (let dir = path.resolve(from); ; dir = path.dirname(dir)) {
    const file = path.join(dir, BASELINE);
    if (existsSync(file)) return file;
    if (path.dirname(dir) === dir) return null;
  }
}

/** `--baseline PATH`: the baseline folder (holding bench_lora.py) or the script itself. */
export function resolveBaseline(given: string): string {
  const isDir = existsSync(given) && statSync(given).isDirectory();
  const file = isDir ? path.join(given, 'bench_lora.py') : given;
  if (!existsSync(file) || !statSync(file).isFile())
    throw new ConfigError(
      `baseline: ${given} is ${isDir ? 'a folder without bench_lora.py' : 'not a file or folder'}`,
      { hint: 'give the shared/bench/baseline folder or its bench_lora.py' },
    );
  return file;
}

function runQtune(spec: ChildSpec): ChildResult {
  const r = spawnSync(process.execPath, ['--expose-gc', CHILD, JSON.stringify(spec)], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0)
    throw new Error(
      `bench child (${spec.shape.name} ${spec.run.id}) failed (${r.status ?? r.signal}):\n${r.stderr}`,
    );
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ChildResult;
}

interface TorchResult {
  tokens_per_s: number;
  step_s: number;
  step_s_min: number;
  peak_rss_mib: number;
  achieved_gflops: number;
  model_gflop_per_step: number;
  clean_steps: number;
  timed_steps: number;
  loss_first: number | null;
  loss_last: number | null;
  torch: string;
  openblas_core: string;
}

function runTorch(
  baseline: string,
  s: BenchShape,
  mode: 'lora' | 'full',
  warmup: number,
  steps: number,
  quietWait: number,
  threads: number,
  precision: BenchPrecision,
): TorchResult | string {
  if (!existsSync(baseline)) return `PyTorch baseline skipped: ${baseline} not found (--baseline PATH)`;
  const args = {
    dim: s.dim,
    layers: s.layers,
    heads: s.heads,
    'kv-heads': s.kvHeads,
    ffn: s.ffn,
    vocab: s.vocab,
    seq: s.seq,
    batch: s.batch,
    rank: s.rank,
    alpha: s.alpha,
    mode,
    steps,
    'max-steps': 2 * steps,
    warmup,
    threads,
    'quiet-wait': quietWait,
    ...(mode === 'lora' ? { lr: s.loraLr } : {}),
    tag: `qtune-bench-${s.name}-${mode}`,
  };
  const argv = Object.entries(args).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const flags = ['--no-eval', ...(s.tie ? ['--tie'] : []), ...(precision === 'bf16' ? ['--amp-bf16'] : [])];
  return runPython<TorchResult>([baseline, ...argv, ...flags]);
}

// ------------------------------------------------------------------------------------ the benchmark

export interface BenchOptions {
  shapes: string[];
  trainTypes: string[];
  /** fp32 and/or bf16 rows (default fp32). */
  precisions?: BenchPrecision[];
  /** Gradient checkpointing per row (default: the Trainer's default per train type). */
  gradientCheckpointing?: BenchCheckpointing;
  /** Override the shapes' timed and warm-up steps. */
  steps?: number;
  warmup?: number;
  rounds: number;
  baseline: string | null;
  quietWait: number;
  /** Profile one extra step of each qtune run and write its trace into this folder (null: no profile). */
  profileDir?: string | null;
  /** Trainer settings other than the defaults, for every qtune run. */
  trainer?: BenchTrainerSettings;
  /** Progress lines (stderr in the CLI). */
  progress?: (line: string) => void;
}

export interface BenchReport {
  cpu: string;
  cpuFlags: string;
  engine: string;
  threads: number;
  date: string;
  rounds: number;
  rows: BenchRow[];
  /** Each profiled run's summary and top ops (with a profile directory). */
  profiles: { run: string; lines: string[] }[];
  notes: string[];
}

const mb = (x: number) => Math.round(x * 10) / 10;

function medianOf(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * Runs every shape × train type × precision `rounds` times, alternating with the PyTorch baseline of
 * the same shape, mode and precision; best of the rounds against best, and the medians beside.
 */
export function runTrainBench(o: BenchOptions): BenchReport {
  const info = getEngine().info;
  const log = o.progress ?? (() => {});
  const precisions = o.precisions ?? ['fp32'];
  const ckpts = CHECKPOINTING_RUNS[o.gradientCheckpointing ?? 'default'];
  const ckptId = (c: boolean | null) => (c === null ? 'default' : c ? 'ckpt' : 'nockpt');
  const notes: string[] = [];
  const ours = new Map<string, ChildResult[]>();
  const torch = new Map<string, TorchResult[]>();
  const profiles: BenchReport['profiles'] = [];
  if (o.profileDir != null) mkdirSync(o.profileDir, { recursive: true });
  for (let round = 0; round < o.rounds; round++) {
    for (const name of o.shapes) {
      const shape = SHAPES[name]!;
      const warmup = o.warmup ?? shape.warmup;
      const steps = o.steps ?? shape.steps;
      const runs = runTypesFor(shape, o.trainTypes);
      const modes = [...new Set(runs.map((r) => r.baseline))];
      for (const precision of precisions) {
        for (const mode of modes) {
          if (o.baseline !== null) {
            log(`round ${round + 1}: PyTorch ${name} ${mode} ${precision} ...`);
            const t = runTorch(o.baseline, shape, mode, warmup, steps, o.quietWait, info.threads, precision);
            if (typeof t === 'string') {
              if (!notes.includes(t)) notes.push(t);
            } else {
              const key = `${name}/${mode}/${precision}`;
              torch.set(key, [...(torch.get(key) ?? []), t]);
              log(
                `  ${((shape.batch * shape.seq) / t.step_s_min).toFixed(0)} tokens/s (best step), peak RSS ${t.peak_rss_mib} MiB`,
              );
            }
          }
          for (const run of runs.filter((r) => r.baseline === mode)) {
            for (const ckpt of ckpts) {
              const what = ckpt === null ? '' : ckpt ? ' gradient checkpointing' : ' no checkpointing';
              log(`round ${round + 1}: qtune ${name} ${run.id} ${precision}${what} ...`);
              const suffix = ckpt === null ? '' : `-${ckptId(ckpt)}`;
              const id = `${name}-${run.id}-${precision}${suffix}-round${round + 1}`;
              const profile =
                o.profileDir == null ? null : { trace: path.join(o.profileDir, `profile-${id}.json`) };
              const r = runQtune({
                shape,
                run,
                precision: TRAINER_PRECISION[precision],
                gradientCheckpointing: ckpt,
                warmup,
                steps,
                quietWait: o.quietWait,
                profile,
                ...(o.trainer === undefined ? {} : { trainer: o.trainer }),
              });
              const key = `${name}/${run.id}/${precision}/${ckptId(ckpt)}`;
              ours.set(key, [...(ours.get(key) ?? []), r]);
              log(
                `  ${(r.tokens_per_step / r.step_s_best).toFixed(0)} tokens/s (best step), peak RSS ${r.peak_rss_mb} MB, gradient checkpointing ${r.gradient_checkpointing ? 'on' : 'off'}`,
              );
              if (r.profile !== null) profiles.push({ run: id, lines: r.profile });
            }
          }
        }
      }
    }
  }
  const rows: BenchRow[] = [];
  for (const name of o.shapes) {
    const shape = SHAPES[name]!;
    for (const precision of precisions) {
      for (const [run, ckpt] of runTypesFor(shape, o.trainTypes).flatMap((r) =>
        ckpts.map((c) => [r, c] as const),
      )) {
        const all = ours.get(`${name}/${run.id}/${precision}/${ckptId(ckpt)}`)!;
        const r = all.reduce((a, b) => (b.step_s_best < a.step_s_best ? b : a));
        const ts = torch.get(`${name}/${run.baseline}/${precision}`) ?? [];
        const t = ts.length === 0 ? undefined : ts.reduce((a, b) => (b.step_s_min < a.step_s_min ? b : a));
        const tokens = r.tokens_per_step;
        // medians over every timed step of every round (PyTorch: of its rounds' medians)
        const stepMedian = medianOf(all.flatMap((x) => x.step_times));
        const tps = tokens / r.step_s_best;
        const tpsMedian = tokens / stepMedian;
        const bt = t === undefined ? null : tokens / t.step_s_min;
        const btMedian = t === undefined ? null : tokens / medianOf(ts.map((x) => x.step_s));
        const row: BenchRow = {
          shape: name,
          train_type: run.trainType,
          quantization: run.quantization,
          precision,
          gradient_checkpointing: r.gradient_checkpointing,
          gradient_checkpointing_default: ckpt === null,
          cpu: r.cpu,
          cpu_flags: r.cpu_flags,
          engine: r.engine,
          choices: r.choices,
          threads: r.threads,
          tokens_per_s: mb(tps),
          tokens_per_s_median: mb(tpsMedian),
          step_s_best: r.step_s_best,
          step_s_median: Math.round(stepMedian * 1e4) / 1e4,
          gflops: mb(r.model_gflop_per_step / r.step_s_best),
          peak_rss_mb: r.peak_rss_mb,
          load_peak_rss_mb: r.load_peak_rss_mb,
          graph_s: r.graph_s,
          loss_first: r.loss_first,
          loss_last: r.loss_last,
          baseline_mode: run.baseline,
          baseline_tokens_per_s: bt === null ? null : mb(bt),
          baseline_tokens_per_s_median: btMedian === null ? null : mb(btMedian),
          baseline_peak_rss_mb: t === undefined ? null : t.peak_rss_mib,
          baseline_gflops: t === undefined ? null : mb(t.model_gflop_per_step / t.step_s_min),
          ratio: bt === null ? null : Math.round((tps / bt) * 1000) / 1000,
          ratio_median: btMedian === null ? null : Math.round((tpsMedian / btMedian) * 1000) / 1000,
        };
        if (run.trainType === 'qlora')
          row.rss_ratio = t === undefined ? null : Math.round((r.peak_rss_mb / t.peak_rss_mib) * 1000) / 1000;
        // issue 14's targets, fp32 rows against PyTorch fp32 of the same mode
        if (precision === 'fp32') {
          const rss = run.trainType === 'qlora' ? (row.rss_ratio ?? null) : null;
          const peakOk = t === undefined ? null : r.peak_rss_mb <= t.peak_rss_mib; // full: peak RSS ≤ PyTorch's
          if (run.id === 'lora')
            row.target = {
              what: 'tokens/s ≥ 1.5x PyTorch fp32 LoRA',
              met: row.ratio === null ? null : row.ratio >= 1.5,
            };
          if (run.id === 'qlora')
            row.target = {
              what: 'tokens/s ≥ 1.5x PyTorch fp32 LoRA and peak RSS ≤ 35% of its (rss_ratio ≤ 0.35)',
              met: row.ratio === null || rss === null ? null : row.ratio >= 1.5 && rss <= 0.35,
            };
          if (run.id === 'full')
            row.target = {
              what: 'tokens/s ≥ 1.0x PyTorch fp32 full and peak RSS ≤ its',
              met: row.ratio === null || peakOk === null ? null : row.ratio >= 1 && peakOk,
            };
        }
        rows.push(row);
      }
    }
  }
  const first = [...torch.values()][0]?.[0];
  if (first !== undefined) {
    notes.push(`PyTorch ${first.torch}, OpenBLAS core ${first.openblas_core}`);
    const warning = openblasWarning();
    if (warning !== null) notes.push(warning);
  }
  return {
    cpu: info.cpuModel,
    cpuFlags: cpuFlags(info.cpuFeatures),
    engine: `${info.kind} (${info.cpuVariant})`,
    threads: info.threads,
    date: new Date().toISOString().slice(0, 10),
    rounds: o.rounds,
    rows,
    profiles,
    notes,
  };
}

const fmt = (x: number | null | undefined, digits = 0) => (x == null ? 'n/a' : x.toFixed(digits));

/** The report as a markdown table and the targets, one line each. */
export function formatReport(r: BenchReport): string[] {
  const lines = [
    `CPU: ${r.cpu} (${r.cpuFlags}); engine ${r.engine}; ${r.threads} threads; ${r.date}; ${r.rounds} round(s), best and median`,
    ...r.notes,
    '',
    '| shape | train type | base | precision | gradient checkpointing | tokens/s best (median) | PyTorch tokens/s best (median) | ratio best (median) | GFLOP/s qtune / PyTorch | peak RSS MB (load peak) | PyTorch peak RSS MB | RSS ratio | step s: accumulate (of it forward) / norm / update / other | CPU, flags, engine |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const x of r.rows) {
    const g = x.graph_s;
    const ckpt = `${x.gradient_checkpointing ? 'on' : 'off'}${x.gradient_checkpointing_default ? ' (default)' : ''}`;
    lines.push(
      `| ${x.shape} | ${x.train_type} | ${x.quantization ?? 'f32'} | ${x.precision} | ${ckpt} | ${fmt(x.tokens_per_s)} (${fmt(x.tokens_per_s_median)}) | ${fmt(x.baseline_tokens_per_s)} (${fmt(x.baseline_tokens_per_s_median)}) | ${fmt(x.ratio, 2)}x (${fmt(x.ratio_median, 2)}x) | ${fmt(x.gflops)} / ${fmt(x.baseline_gflops)} | ${fmt(x.peak_rss_mb)} (${fmt(x.load_peak_rss_mb)}) | ${fmt(x.baseline_peak_rss_mb)} | ${x.rss_ratio === undefined ? '-' : fmt(x.rss_ratio, 2)} | ${g.accumulate.toFixed(3)} (${g.forward.toFixed(3)}) / ${[g.norm, g.update, g.other].map((v) => v.toFixed(3)).join(' / ')} | ${x.cpu} (${x.cpu_flags}), ${x.engine}${x.choices.length === 0 ? '' : `; ${x.choices.join('; ')}`} |`,
    );
  }
  lines.push('');
  for (const x of r.rows) {
    if (x.target === undefined) continue;
    const verdict = x.target.met === null ? 'not checked (no baseline)' : x.target.met ? 'MET' : 'MISSED';
    const by =
      x.train_type === 'lora' && x.ratio !== null
        ? ` (ratio ${x.ratio.toFixed(2)})`
        : x.rss_ratio != null
          ? ` (rss_ratio ${x.rss_ratio.toFixed(2)})`
          : '';
    const ckpt = x.gradient_checkpointing_default
      ? ''
      : x.gradient_checkpointing
        ? ' (checkpointing on)'
        : ' (checkpointing off)';
    lines.push(
      `target ${x.shape} ${x.train_type}${x.quantization ? ` ${x.quantization}` : ''}${ckpt}: ${x.target.what}: ${verdict}${by}`,
    );
  }
  for (const p of r.profiles) lines.push('', `profile of ${p.run}:`, ...p.lines);
  return lines;
}
