/** `qtune bench`: training tokens/s and peak RSS per train type, beside PyTorch run in the same session. */
import {
  BENCH_CHECKPOINTING,
  BENCH_PRECISIONS,
  RUN_TYPES,
  SHAPES,
  type BenchCheckpointing,
  type BenchPrecision,
  type BenchTrainerSettings,
} from '../../bench/train-spec.js';
import { runPaddingBench } from '../../bench/padding.js';
import { defaultBaseline, formatReport, resolveBaseline, runTrainBench } from '../../bench/train.js';
import { FROZEN_COPIES, type FrozenCopies } from '../../train/frozen.js';
import { COMPUTE_DTYPES, type ComputeDTypeChoice } from '../../train/kernel-choice.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'bench',
  summary: 'Benchmark training (tokens/s, peak RSS) per train type against PyTorch fp32 on this machine.',
  usage:
    'qtune bench [--shapes tiny,small,1.1b] [--train-types lora,qlora,qlora-int8,full] [--precision fp32,bf16] [--gradient-checkpointing default|on|off|both] [--steps N] [--rounds N] [--profile] [--baseline DIR] [--no-baseline] [--json]',
  flags: {
    shapes: {
      type: 'string',
      default: 'tiny,small',
      help: `shapes of ../shared/bench/baseline to run: ${Object.keys(SHAPES).join(', ')} (1.1b: LoRA only, ~5 GB, minutes)`,
    },
    'train-types': {
      type: 'string',
      default: Object.keys(RUN_TYPES).join(','),
      help: 'lora, qlora (nf4 base), qlora-int8 (int8 base), full',
    },
    quick: { type: 'boolean', default: false, help: 'the tiny shape only, 3 timed steps, no wait for quiet' },
    precision: {
      type: 'string',
      default: 'fp32',
      help: "fp32 and/or bf16 rows (bf16: qtune's bf16_autocast against PyTorch's --amp-bf16)",
    },
    'gradient-checkpointing': {
      type: 'string',
      default: 'default',
      help: "per row: the Trainer's default for the train type (on over a quantized base), on, off, or both (each row twice)",
    },
    steps: { type: 'string', help: 'timed steps per run (default: tiny 10, small 4, 1.1b 3)' },
    warmup: { type: 'string', help: 'untimed warm-up steps per run (default: tiny 2, small and 1.1b 1)' },
    rounds: {
      type: 'string',
      default: '3',
      help: 'alternate qtune and PyTorch this many times; best and median of them',
    },
    'quiet-wait': {
      type: 'string',
      default: '30',
      help: 'seconds to wait, at most, for an idle machine before the timed steps (0: none)',
    },
    baseline: {
      type: 'string',
      help: 'the PyTorch baseline: its folder or bench_lora.py (default: shared/bench/baseline, looked for upward from qtune)',
    },
    padding: {
      type: 'boolean',
      default: false,
      help: 'instead: dynamic padding against padding to --context-length, on a real dataset of varied lengths',
    },
    dataset: { type: 'string', help: '--padding: an alpaca JSON/JSONL file (default data/style.jsonl)' },
    model: { type: 'string', help: '--padding: a model folder (default a tiny random Llama, no download)' },
    'context-length': { type: 'string', default: '512', help: '--padding: positions per sequence' },
    'batch-size': { type: 'string', default: '4', help: '--padding: sequences per step' },
    backend: { type: 'string', default: 'cpu', help: '--padding: device' },
    profile: {
      type: 'boolean',
      default: false,
      help: 'profile one extra step of each qtune run per op: print its top ops, write a trace per run to --profile-dir',
    },
    'frozen-copies': {
      type: 'string',
      help: "the trainer's frozen_weight_copies for every run: auto (the default), on, off",
    },
    'quant-compute-dtype': {
      type: 'string',
      help: "the trainer's quant_compute_dtype for every run: auto (the default), f32, bf16",
    },
    'profile-dir': {
      type: 'string',
      default: 'bench-profile',
      help: 'where --profile writes profile-<run>.json',
    },
    'no-baseline': { type: 'boolean', default: false, help: 'skip PyTorch (no ratios)' },
    json: { type: 'boolean', default: false, help: 'print a JSON array, one object per run' },
  },
};

function list(flag: string, value: string, known: readonly string[]): string[] {
  const items = value
    .split(',')
    .map((x) => x.trim().toLowerCase())
    .filter((x) => x !== '');
  const bad = items.find((x) => !known.includes(x));
  if (bad !== undefined || items.length === 0)
    throw new UsageError(
      `bench: --${flag}=${value} names ${bad === undefined ? 'nothing' : `"${bad}"`}`,
      `use ${known.join(', ')}`,
    );
  return [...new Set(items)];
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  if (values['padding'] === true) {
    const rows = await runPaddingBench(
      {
        ...(typeof values['model'] === 'string' ? { model: values['model'] } : {}),
        ...(typeof values['dataset'] === 'string' ? { dataset: values['dataset'] } : {}),
        contextLength: intFlag('context-length', values['context-length'])!,
        batchSize: intFlag('batch-size', values['batch-size'])!,
        steps: intFlag('steps', values['steps']) ?? 8,
        warmup: values['warmup'] === '0' ? 0 : (intFlag('warmup', values['warmup']) ?? 2),
        backend: String(values['backend']),
      },
      values['json'] === true ? () => undefined : out,
    );
    if (values['json'] === true) out(JSON.stringify(rows));
    return 0;
  }
  const quick = values['quick'] === true;
  const shapes = quick ? ['tiny'] : list('shapes', String(values['shapes']), Object.keys(SHAPES));
  const trainTypes = list('train-types', String(values['train-types']), Object.keys(RUN_TYPES));
  const steps = intFlag('steps', values['steps']) ?? (quick ? 3 : undefined);
  const warmup = values['warmup'] === '0' ? 0 : intFlag('warmup', values['warmup']);
  const rounds = intFlag('rounds', values['rounds'])!;
  const quietWait = values['quiet-wait'] === '0' || quick ? 0 : intFlag('quiet-wait', values['quiet-wait'])!;
  const precisions = list('precision', String(values['precision']), BENCH_PRECISIONS) as BenchPrecision[];
  const ckpt = list('gradient-checkpointing', String(values['gradient-checkpointing']), BENCH_CHECKPOINTING);
  if (ckpt.length !== 1)
    throw new UsageError(
      `bench: --gradient-checkpointing=${String(values['gradient-checkpointing'])} names more than one`,
      'use one of default, on, off, both',
    );
  const noBaseline = values['no-baseline'] === true;
  const given = typeof values['baseline'] === 'string' ? values['baseline'] : null;
  const found = given === null ? defaultBaseline() : resolveBaseline(given);
  const baseline = noBaseline ? null : found;
  const profile = values['profile'] === true;
  const trainer: BenchTrainerSettings = {};
  if (typeof values['frozen-copies'] === 'string')
    trainer.frozenWeightCopies = list(
      'frozen-copies',
      values['frozen-copies'],
      FROZEN_COPIES,
    )[0] as FrozenCopies;
  if (typeof values['quant-compute-dtype'] === 'string')
    trainer.quantComputeDType = list(
      'quant-compute-dtype',
      values['quant-compute-dtype'],
      COMPUTE_DTYPES,
    )[0] as ComputeDTypeChoice;
  const report = runTrainBench({
    trainer,
    shapes,
    trainTypes,
    precisions,
    gradientCheckpointing: ckpt[0] as BenchCheckpointing,
    profileDir: profile ? String(values['profile-dir']) : null,
    ...(steps === undefined ? {} : { steps }),
    ...(warmup === undefined ? {} : { warmup }),
    rounds,
    baseline,
    quietWait,
    progress: (line) => console.error(line),
  });
  if (!noBaseline && found === null)
    report.notes.push(
      'PyTorch baseline skipped: no shared/bench/baseline/bench_lora.py above qtune (--baseline DIR)',
    );
  if (values['json'] === true) {
    for (const n of report.notes) console.error(n);
    for (const p of report.profiles) console.error([`profile of ${p.run}:`, ...p.lines].join('\n'));
    out(JSON.stringify(report.rows.map((r) => ({ date: report.date, rounds: report.rounds, ...r }))));
    return 0;
  }
  for (const line of formatReport(report)) out(line);
  return 0;
}
