/**
 * The training benchmark's vocabulary, shared by the runner (./train.ts) and its child processes
 * (./train-child.ts): the shapes and run types it runs, what the runner asks a child for
 * (`ChildSpec`), what comes back (`ChildResult`, and the report's `BenchRow`), and the FLOP model
 * both count with.
 */
import type { FrozenCopies } from '../train/frozen.js';
import type { ComputeDTypeChoice } from '../train/kernel-choice.js';
import type { Precision } from '../train/trainer.js';

// ------------------------------------------------------------------------------------ what runs

export interface BenchShape {
  name: string;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  seq: number;
  batch: number;
  rank: number;
  alpha: number;
  tie: boolean;
  /** Default warm-up and timed steps (the baseline's run_all.sh uses 2+20, 2+10, 1+5). */
  warmup: number;
  steps: number;
  /** LoRA learning rate (the baseline lowers it for 1.1B). */
  loraLr: number;
}

/** The baseline's configurations (a), (b) and (c) (../shared/bench/baseline/README.md). */
export const SHAPES: Record<string, BenchShape> = {
  tiny: {
    name: 'tiny',
    dim: 256,
    layers: 4,
    heads: 8,
    kvHeads: 4,
    ffn: 688,
    vocab: 4096,
    seq: 256,
    batch: 4,
    rank: 8,
    alpha: 16,
    tie: false,
    warmup: 2,
    steps: 10,
    loraLr: 5e-3,
  },
  small: {
    name: 'small',
    dim: 768,
    layers: 12,
    heads: 12,
    kvHeads: 4,
    ffn: 2048,
    vocab: 32000,
    seq: 256,
    batch: 4,
    rank: 16,
    alpha: 32,
    tie: false,
    warmup: 1,
    steps: 4,
    loraLr: 5e-3,
  },
  '1.1b': {
    name: '1.1b',
    dim: 2048,
    layers: 22,
    heads: 32,
    kvHeads: 4,
    ffn: 5632,
    vocab: 32000,
    seq: 256,
    batch: 1,
    rank: 16,
    alpha: 32,
    tie: false,
    warmup: 1,
    steps: 3,
    loraLr: 2e-3,
  },
};

export interface BenchRunType {
  /** How `--train-types` names it. */
  id: string;
  trainType: string;
  quantization: string | null;
  /** The baseline mode it is compared with. */
  baseline: 'lora' | 'full';
}

export const RUN_TYPES: Record<string, BenchRunType> = {
  lora: { id: 'lora', trainType: 'lora', quantization: null, baseline: 'lora' },
  qlora: { id: 'qlora', trainType: 'qlora', quantization: 'nf4', baseline: 'lora' },
  'qlora-int8': { id: 'qlora-int8', trainType: 'qlora', quantization: 'int8', baseline: 'lora' },
  full: { id: 'full', trainType: 'full', quantization: null, baseline: 'full' },
};

/** Train types run only at some shapes: the 1.1B shape is the baseline's LoRA configuration (c). */
export function runTypesFor(shape: BenchShape, wanted: readonly string[]): BenchRunType[] {
  return wanted.filter((id) => shape.name !== '1.1b' || id === 'lora').map((id) => RUN_TYPES[id]!);
}

/**
 * The precisions a benchmark row can run: `fp32`, and `bf16`: qtune's `bf16_autocast` (bf16
 * matmuls over f32 master weights) against PyTorch's `--amp-bf16` (torch.autocast to bfloat16).
 */
export const BENCH_PRECISIONS = ['fp32', 'bf16'] as const;

/**
 * Gradient checkpointing per row: `default` runs each train type as a user gets it (the Trainer's
 * default: on over a quantized base), `on`/`off` force it, `both` runs each row both ways.
 */
export const BENCH_CHECKPOINTING = ['default', 'on', 'off', 'both'] as const;
export type BenchCheckpointing = (typeof BENCH_CHECKPOINTING)[number];
export type BenchPrecision = (typeof BENCH_PRECISIONS)[number];

/** The CPU features that decide the kernels (of those ggml's CPU backend reports), e.g. `AVX2 AVX512 AVX512_BF16`. */
export function cpuFlags(features: Record<string, string>): string {
  const wanted = [
    'AVX2',
    'FMA',
    'F16C',
    'AVX512',
    'AVX512_BF16',
    'AMX_INT8',
    'AMX_BF16',
    'NEON',
    'SVE',
    'DOTPROD',
  ];
  const on = wanted.filter((k) => features[k] !== undefined && features[k] !== '0');
  return on.length === 0 ? 'none reported' : on.join(' ');
}

/** What the child process is asked to run. */
export interface ChildSpec {
  shape: BenchShape;
  run: BenchRunType;
  /** The Trainer's precision. */
  precision: Precision;
  /** Gradient checkpointing on or off; null: the Trainer's default for the train type. */
  gradientCheckpointing: boolean | null;
  /** Profile one extra step after the timed ones and write its Chrome trace to `trace` (null: no profile). */
  profile: { trace: string } | null;
  warmup: number;
  steps: number;
  /** Seconds to wait for an idle machine before the timed steps (0: do not wait). */
  quietWait: number;
  /** Trainer settings other than the user's defaults (a lever switched off, to measure what it buys). */
  trainer?: BenchTrainerSettings;
}

/** The Trainer settings a benchmark can change from their defaults. */
export interface BenchTrainerSettings {
  frozenWeightCopies?: FrozenCopies;
  quantComputeDType?: ComputeDTypeChoice;
}

/** What the child reports. */
export interface ChildResult {
  engine: string;
  cpu: string;
  cpu_flags: string;
  precision: Precision;
  /** What the Trainer chose for the frozen base's matmuls (its log lines). */
  choices: string[];
  /** Whether the Trainer ran with gradient checkpointing (asked for, or its default). */
  gradient_checkpointing: boolean;
  /** The profiled step's summary and top ops (with a profile), else null. */
  profile: string[] | null;
  threads: number;
  tokens_per_step: number;
  step_s_best: number;
  step_s_median: number;
  step_times: number[];
  /** 1 when other processes used little CPU during the step (the baseline's rule). */
  step_clean: number[];
  waited_for_quiet_s: number;
  /**
   * Median seconds per step in each of the Trainer's graphs and the rest (host work); `forward`: the
   * best of 2 forward-only passes of one batch (the eval graph), the part of `accumulate` before backward.
   */
  graph_s: { accumulate: number; norm: number; update: number; other: number; forward: number };
  model_gflop_per_step: number;
  /** Peak RSS from the Trainer's construction on (the model already loaded and quantized). */
  peak_rss_mb: number;
  /** Peak RSS while the f32 model was allocated, filled and quantized (before the Trainer). */
  load_peak_rss_mb: number;
  engine_mb: { weights: number; gradients: number; optimizer_state: number; activations: number };
  loss_first: number;
  loss_last: number;
  params_total: number;
  params_trainable: number;
}

/** One row of the report. */
export interface BenchRow {
  shape: string;
  train_type: string;
  /** The frozen base's quantization (nf4, int8), or null for a float base. */
  quantization: string | null;
  /** fp32, or bf16 (qtune's bf16_autocast against PyTorch's --amp-bf16). */
  precision: BenchPrecision;
  /** Gradient checkpointing on or off, and whether that was the Trainer's default for the train type. */
  gradient_checkpointing: boolean;
  gradient_checkpointing_default: boolean;
  cpu: string;
  /** The CPU features that decide the kernels, e.g. `AVX2 AVX512 AVX512_BF16`. */
  cpu_flags: string;
  engine: string;
  /** What the Trainer chose for the frozen base's matmuls. */
  choices: string[];
  threads: number;
  tokens_per_s: number;
  tokens_per_s_median: number;
  step_s_best: number;
  step_s_median: number;
  gflops: number;
  peak_rss_mb: number;
  load_peak_rss_mb: number;
  graph_s: ChildResult['graph_s'];
  loss_first: number;
  loss_last: number;
  /** bench_lora.py --mode baseline_mode, in fp32 or with --amp-bf16. */
  baseline_mode: 'lora' | 'full';
  baseline_tokens_per_s: number | null;
  baseline_tokens_per_s_median: number | null;
  baseline_peak_rss_mb: number | null;
  baseline_gflops: number | null;
  /** tokens_per_s ÷ baseline_tokens_per_s (best against best). */
  ratio: number | null;
  /** The same of the medians. */
  ratio_median: number | null;
  /** QLoRA rows: peak_rss_mb ÷ PyTorch fp32 LoRA's peak RSS. */
  rss_ratio?: number | null;
  /** Issue 14's targets (fp32 rows): LoRA ≥ 1.5x PyTorch; QLoRA nf4 ≥ 1.5x and peak RSS ≤ 35%; full ≥ 1x, RSS ≤. */
  target?: { what: string; met: boolean | null };
}

// ------------------------------------------------------------------------------------ the FLOP model

/** bench_lora.py's `step_flops`: the model FLOPs of one step (linear incl. head, attention, adapters). */
export function stepFlops(s: BenchShape, mode: 'lora' | 'full'): number {
  const hd = s.dim / s.heads;
  const tokens = s.batch * s.seq;
  const perLayer = s.dim * s.heads * hd * 2 + s.dim * s.kvHeads * hd * 2 + 3 * s.dim * s.ffn;
  const lin = 2 * tokens * (s.layers * perLayer + s.dim * s.vocab);
  const attn = 2 * 2 * s.batch * s.seq * s.seq * s.heads * hd * s.layers;
  if (mode === 'full') return 3 * (lin + attn);
  const io: [number, number][] = [
    [s.dim, s.heads * hd],
    [s.dim, s.kvHeads * hd],
    [s.dim, s.kvHeads * hd],
    [s.heads * hd, s.dim],
    [s.dim, s.ffn],
    [s.dim, s.ffn],
    [s.ffn, s.dim],
  ];
  const lora = 2 * tokens * s.layers * io.reduce((n, [i, o]) => n + s.rank * (i + o), 0);
  return 2 * lin + 3 * attn + 3 * lora;
}
