/**
 * What a trainer is told, and what it reports: {@link TrainerOptions}, checked and given their
 * defaults once by {@link resolveSettings}; the {@link LogRecord}s of a run, and the results of a
 * step and of a whole run.
 */
import { ConfigError, TrainingError } from '../errors.js';
import { closestName, nameKey } from '../util/names.js';
import { PADDINGS, type Padding } from '../data/batches.js';
import type { Example } from '../data/example.js';
import type { GradScaler, GradScalerOptions } from '../optim/grad-scaler.js';
import type { OptimizerConfig } from '../optim/optimizer.js';
import type { ScheduleConfig } from '../optim/schedule.js';
import { DEFAULT_CHUNK_TOKENS } from '../tensor/ops/loss.js';
import type { FrozenCopies } from './frozen.js';
import type { ComputeDTypeChoice } from './kernel-choice.js';
import type { ObjectiveName } from './objective.js';
import type { PreferenceOptions } from './preference.js';
import type { CompletionSample, GrpoOptions } from './grpo.js';
import type { LoraOptions } from '../peft/lora.js';
import type { MemoryReport } from './memory.js';
import { splitGlobalBatch, type Collectives } from './parallel.js';
import { checkPrecision, type PreparedModel, type Precision, type PrepareOptions } from './prepare.js';
import type { ProfileOptions, StepGraph } from './profile.js';
import type { EvalGeneration, EvalPrompt, EvalPromptFormat } from './samples.js';
import { defaultGradientCheckpointing, resolveTrainType } from './train-type.js';

export type { SettingChange } from './resume.js';

export interface TrainerOptions {
  /**
   * The train type, precision and quantization are the prepared model's ({@link prepareModel}, or
   * {@link Trainer.create}'s options): given here too, they must be the same, or the trainer refuses.
   */
  trainType?: string;
  quantization?: string;
  precision?: Precision;
  /** LoRA and DoRA settings (rank 8, alpha 16 by default). */
  lora?: Omit<LoraOptions, 'dora' | 'seed'>;
  /** Sequences per micro-batch. Default 1. */
  batchSize?: number;
  gradientAccumulationSteps?: number;
  /** Passes over the training data (default 1), unless maxSteps is set. */
  epochs?: number;
  maxSteps?: number;
  /**
   * Recompute each decoder block in the backward pass instead of keeping its activations. Default:
   * on over a quantized base (qlora and the like), off over a float base
   * ({@link defaultGradientCheckpointing}); read the choice from {@link Trainer.gradientCheckpointing}.
   */
  gradientCheckpointing?: boolean;
  /**
   * Persistent copies of the frozen weights for their matmuls (Wᵀ for the input gradient, and W in
   * the autocast type): `auto` (default: on for a float base that fits), `on`, `off`.
   */
  frozenWeightCopies?: FrozenCopies;
  /**
   * The type a quantized base's input gradient multiplies in (bitsandbytes' compute dtype): `auto`
   * (default: bf16 where measured faster on this device), `f32` (exact), `bf16`.
   */
  quantComputeDType?: ComputeDTypeChoice;
  /**
   * Token rows per chunk of the fused output layer and loss (`linearCrossEntropy`): the
   * `[tokens, vocab]` logits and their gradient never exist whole, only `[chunk, vocab]` at a time.
   * Default {@link DEFAULT_CHUNK_TOKENS}; 0 computes all the logits, then the loss. A micro-batch
   * splits into at most 64 chunks (larger ones when it has more than 64 × chunk token rows).
   */
  crossEntropyChunk?: number;
  /**
   * `longest` (default): dynamic padding, each micro-batch cut to the bucket of its longest example
   * (the smallest power of two ≥ 64 positions that holds it); `max_length`: every micro-batch padded
   * to the context length (one graph; Axolotl's `pad_to_sequence_len`). Examples carry their length
   * when they come from `loadDataset`; ones without it are taken whole.
   */
  padding?: Padding;
  /** Sort each run of 50 global batches by length, longest first (Hugging Face's `group_by_length`). */
  groupByLength?: boolean;
  /** Clip the global gradient norm to this; 0 turns clipping off. Default 1. */
  maxGradNorm?: number;
  /** Default AdamW, lr 2e-4, no weight decay. */
  optimizer?: Partial<OptimizerConfig>;
  /** Default constant; its lr is the optimizer's. */
  schedule?: Omit<ScheduleConfig, 'lr' | 'total_steps'>;
  /** Evaluate on the validation data every N steps (0: only at the end). */
  evalEvery?: number;
  /** Validation sequences per evaluation (default all). */
  evalExamples?: number;
  /**
   * Prompts generated at each evaluation and at the end, with or without validation data
   * (samples.ts): logged as `kind: 'sample'` records and emitted as `sample` events.
   */
  evalPrompts?: readonly EvalPrompt[];
  /** How a text prompt is put to the model: `none` (default), `alpaca` or `chat`. */
  evalPromptFormat?: EvalPromptFormat;
  /** Greedy with 64 new tokens by default; or temperature, topK, topP and a seed. */
  evalGeneration?: EvalGeneration;
  /**
   * What the steps minimise (docs/objectives.md): `sft` (default: the label tokens' mean
   * cross-entropy), or the preference objectives `dpo`, `orpo`, `kto`, `simpo`, or `grpo`.
   */
  objective?: ObjectiveName;
  /** The preference objectives' settings (beta, lossType, labelSmoothing, precomputeRefLogProbs). */
  preference?: PreferenceOptions;
  /** `objective: 'grpo'`: sampling, rewards and the loss (train/grpo.ts); needs trainAsync. */
  grpo?: GrpoOptions;
  /** Write a checkpoint every N steps (0: only at the end) into outputDir. */
  saveEvery?: number;
  outputDir?: string;
  seed?: number;
  /**
   * {@link Trainer.loadCheckpoint} of a checkpoint trained on other data (its recorded fingerprint,
   * data/fingerprint.ts, differs): refused by default; true goes on with this data, and the change is
   * logged (`kind: 'resume'`). The CLI's `resume_ignore_data_change`.
   */
  resumeIgnoreDataChange?: boolean;
  /** fp16 loss scaling: initial scale and how many good steps double it. */
  lossScale?: GradScalerOptions;
  /** Called with every log record (steps, evaluations, skipped steps). */
  onLog?: (record: LogRecord) => void;
  /**
   * Profile one step per op (src/train/profile.ts): `true` runs step 2 (or the last, if fewer) node
   * by node and times the other steps' graphs whole; read the result with {@link Trainer.profile}.
   * Off by default, and then no step does any profiling work.
   */
  profile?: boolean | ProfileOptions;
  /**
   * Data parallelism: the ranks of a job (a src/dist Communicator). Each step's global batch of
   * batchSize × gradientAccumulationSteps examples splits across the ranks (src/train/parallel.ts),
   * the gradients and token counts are summed across them before the update, and rank 0's trainable
   * weights, optimizer state and progress are broadcast before the first step (and after a
   * checkpoint load). N ranks compute the update one process would; only rank 0 writes checkpoints.
   */
  comm?: Collectives;
}

export interface LogRecord {
  /**
   * `resume`: a setting that changed since the checkpoint a run resumed from (in `message`);
   * `sample`: a generation of one of the evalPrompts (`prompt`, `completion`).
   */
  kind: 'step' | 'eval' | 'skip' | 'checkpoint' | 'resume' | 'sample';
  step: number;
  epoch: number;
  loss?: number;
  lr?: number;
  gradNorm?: number;
  tokens?: number;
  /** Target tokens (the ones the loss is taken on) per second. */
  tokensPerS?: number;
  /** Input tokens (every position that holds a sample, padding aside) per second. */
  inputTokensPerS?: number;
  lossScale?: number;
  perplexity?: number;
  path?: string;
  message?: string;
  prompt?: string;
  completion?: string;
  memory?: { engineBytes: number; rssBytes: number; peakRssBytes: number };
  /** Data-parallel runs: ranks in the job. */
  worldSize?: number;
  /** Data-parallel steps: time of the gradient all-reduce (with its device-host copies), and bytes summed. */
  allreduceMs?: number;
  allreduceBytes?: number;
  /** The objective's metrics of a step (`rewards/chosen`...: docs/objectives.md). */
  metrics?: Record<string, number>;
  /** `sample` of GRPO: the completion's reward. */
  reward?: number;
}

export interface StepResult {
  step: number;
  /** Mean loss over the step's target tokens. */
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  /** The step's input tokens: every position that holds a sample (padding aside), all ranks. */
  inputTokens: number;
  /** fp16 only: the gradients overflowed, the update was skipped and the scale halved. */
  skipped: boolean;
  seconds: number;
  /**
   * Seconds each of the step's graphs ran (the public timing hook: `qtune bench` splits a step's
   * time with it): accumulate over every micro-batch, norm, and update (0 when skipped).
   */
  graphSeconds: Record<StepGraph, number>;
  /** Data-parallel runs: milliseconds and bytes of the gradient all-reduce (0 in a job of one). */
  allreduceMs: number;
  allreduceBytes: number;
  /** The objective's metrics (a weighted step's, as given). */
  metrics?: Record<string, number>;
  /** GRPO's sampled completions to log (`kind: 'sample'` records), now and then. */
  samples?: CompletionSample[];
}

/** What {@link Trainer.train} and {@link Trainer.trainAsync} are told for one run. */
export interface RunOptions {
  /** Stops the run at the next step boundary once aborted (AbortController's signal). */
  signal?: AbortSignal;
  /**
   * trainAsync(): compute each graph on a worker thread, so the event loop runs during a step
   * (default true). false computes them on this thread and yields only at step boundaries (signals,
   * timers, pause and stop are still served there), without the worker hops' cost (BENCHMARKS.md).
   */
  offThread?: boolean;
}

export interface TrainResult {
  /** The optimizer step reached (the run's last, unless it was aborted). */
  steps: number;
  losses: number[];
  evals: { step: number; loss: number; perplexity: number }[];
  memory: MemoryReport;
  tokensPerS: number;
  seconds: number;
  /** A signal stopped the run before its last step. */
  aborted: boolean;
}

/** Trainer.create's options: the model's preparation and the trainer's, given once. */
export type CreateOptions = TrainerOptions & Omit<PrepareOptions, 'trainType'>;

/** Every key of {@link CreateOptions} (the constructor takes them too: create passes its options on). */
const OPTION_NAMES: Record<keyof CreateOptions, true> = {
  trainType: true,
  quantization: true,
  precision: true,
  backend: true,
  devices: true,
  lora: true,
  batchSize: true,
  gradientAccumulationSteps: true,
  epochs: true,
  maxSteps: true,
  gradientCheckpointing: true,
  frozenWeightCopies: true,
  quantComputeDType: true,
  crossEntropyChunk: true,
  padding: true,
  groupByLength: true,
  maxGradNorm: true,
  optimizer: true,
  schedule: true,
  evalEvery: true,
  evalExamples: true,
  evalPrompts: true,
  evalPromptFormat: true,
  evalGeneration: true,
  saveEvery: true,
  outputDir: true,
  resumeIgnoreDataChange: true,
  seed: true,
  lossScale: true,
  onLog: true,
  profile: true,
  comm: true,
  objective: true,
  preference: true,
  grpo: true,
};
const LORA_NAMES: Record<keyof NonNullable<TrainerOptions['lora']>, true> = {
  rank: true,
  alpha: true,
  dropout: true,
  targetModules: true,
  rankPattern: true,
  alphaPattern: true,
  rsLora: true,
};
const LOSS_SCALE_NAMES: Record<keyof GradScalerOptions, true> = { initial: true, growthInterval: true };
const PROFILE_NAMES: Record<keyof ProfileOptions, true> = { step: true };
const GENERATION_NAMES: Record<keyof EvalGeneration, true> = {
  maxNewTokens: true,
  temperature: true,
  topK: true,
  topP: true,
  seed: true,
};

/** Names from PEFT, TRL and Axolotl configs that are a nested option here (by {@link nameKey}). */
const NESTED_HOMES: Record<string, string> = {
  lr: 'optimizer: { lr }',
  learningrate: 'optimizer: { lr }',
  weightdecay: 'optimizer: { weight_decay }',
  warmupsteps: 'schedule: { warmup_steps }',
  warmupratio: 'schedule: { warmup_ratio }',
  lrscheduler: 'schedule: { name }',
  lrschedulertype: 'schedule: { name }',
  numepochs: 'epochs',
  numtrainepochs: 'epochs',
  microbatchsize: 'batchSize',
  perdevicetrainbatchsize: 'batchSize',
  lorar: 'lora: { rank }',
  lorarank: 'lora: { rank }',
  loraalpha: 'lora: { alpha }',
  loradropout: 'lora: { dropout }',
  loratargetmodules: 'lora: { targetModules }',
};

/**
 * Refuses a key the options do not have, at the top or in `lora`, `lossScale` or `profile` (the
 * optimizer's and schedule's are checked by their builders), naming the key and the closest known
 * one: a misspelt `maxStep` would otherwise train a whole epoch.
 */
export function checkOptionNames(o: object): void {
  checkNames('', o, OPTION_NAMES);
  const nested = o as TrainerOptions;
  if (isRecord(nested.lora)) checkNames('lora.', nested.lora, LORA_NAMES);
  if (isRecord(nested.lossScale)) checkNames('lossScale.', nested.lossScale, LOSS_SCALE_NAMES);
  if (isRecord(nested.profile)) checkNames('profile.', nested.profile, PROFILE_NAMES);
  if (isRecord(nested.evalGeneration)) checkNames('evalGeneration.', nested.evalGeneration, GENERATION_NAMES);
}

function isRecord(v: unknown): v is object {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkNames(where: string, o: object, known: Record<string, true>): void {
  for (const [key, value] of Object.entries(o)) {
    if (value === undefined || Object.hasOwn(known, key)) continue;
    const near = closestName(key, Object.keys(known));
    const home = where === '' ? NESTED_HOMES[nameKey(key)] : undefined;
    // a PEFT/Axolotl name that lives in a nested option beats a near miss (`lr` is not `lora`)
    const hint =
      home !== undefined
        ? `give it as ${home}`
        : near !== undefined
          ? `did you mean ${where}${near}?`
          : `${where === '' ? 'the options are' : `${where.slice(0, -1)} takes`} ${Object.keys(known).join(', ')}`;
    throw new ConfigError(`${where}${key}: unknown trainer option`, {
      hint,
      details: { field: `${where}${key}`, value },
    });
  }
}

/** A step's micro-batches: lists of examples, each at most the micro-batch size. */
export type MicroBatches = readonly (readonly Example[])[];

/** What a step's micro-batches add up to on a rank: target tokens, summed loss, input tokens. */
export interface StepCounts {
  tokens: number;
  lossSum: number;
  inputTokens: number;
}

/** A step's log record. */
export function stepRecord(
  r: StepResult,
  o: { scaler: GradScaler; memory: NonNullable<LogRecord['memory']>; worldSize: number | null },
): Omit<LogRecord, 'epoch'> {
  const scale = o.scaler.scale;
  return {
    kind: r.skipped ? 'skip' : 'step',
    step: r.step,
    loss: r.loss,
    lr: r.lr,
    gradNorm: r.gradNorm,
    tokens: r.tokens,
    tokensPerS: r.tokens / r.seconds,
    inputTokensPerS: r.inputTokens / r.seconds,
    ...(o.scaler.enabled ? { lossScale: scale } : {}),
    ...(r.skipped ? { message: `gradients overflowed; update skipped, loss scale now ${scale}` } : {}),
    memory: o.memory,
    ...(r.metrics === undefined ? {} : { metrics: r.metrics }),
    ...(o.worldSize === null
      ? {}
      : { worldSize: o.worldSize, allreduceMs: r.allreduceMs, allreduceBytes: r.allreduceBytes }),
  };
}

/** The options, checked, with their defaults. */
export interface Settings {
  precision: Precision;
  batchSize: number;
  accumulation: number;
  /** Examples per micro-batch on this rank: batchSize, or less when a global batch splits across ranks. */
  microBatchSize: number;
  gradientCheckpointing: boolean;
  /** The option was not given: gradientCheckpointing is the train type's default. */
  gradientCheckpointingByDefault: boolean;
  seed: number;
  maxGradNorm: number;
  /** Token rows per chunk of the fused output layer and loss; 0: logits whole. */
  crossEntropyChunk: number;
  padding: Padding;
  groupByLength: boolean;
}

/** Checks the options against the prepared model and each other, and fills in the defaults. */
export function resolveSettings(prepared: PreparedModel, o: TrainerOptions): Settings {
  checkOptionNames(o);
  const given = prepared.trainType;
  if (o.trainType !== undefined) {
    // the quantization is compared when it is given (a train type's default one may have been changed)
    const asked = resolveTrainType(o.trainType, o.quantization);
    if (
      asked.name !== given.name ||
      (o.quantization !== undefined && asked.quantization !== given.quantization)
    )
      throw new ConfigError(
        `train_type: ${asked.name}${over(asked.quantization)} was given to the trainer, but the model was prepared for ${given.name}${over(given.quantization)}`,
        { hint: 'give the train type once: to prepareModel, or to Trainer.create' },
      );
  }
  const precision = checkPrecision(o.precision ?? prepared.precision);
  if (precision !== prepared.precision)
    throw new ConfigError(
      `precision: ${precision} was given to the trainer, but the model was prepared for ${prepared.precision}`,
      { hint: 'give the precision once: to prepareModel, or to Trainer.create' },
    );
  const batchSize = positiveInt('batch_size', o.batchSize, 1);
  const accumulation = positiveInt('gradient_accumulation_steps', o.gradientAccumulationSteps, 1);
  const comm = o.comm ?? null;
  const microBatchSize =
    comm === null ? batchSize : splitGlobalBatch(batchSize, accumulation, comm.size).microBatch;
  const maxGradNorm = o.maxGradNorm ?? 1;
  if (!(maxGradNorm >= 0 && Number.isFinite(maxGradNorm)))
    throw new ConfigError(`max_grad_norm: ${maxGradNorm} must be ≥ 0`, {
      hint: 'use 1.0, or 0 to turn clipping off',
    });
  if (o.padding !== undefined && !PADDINGS.includes(o.padding))
    throw new ConfigError(`padding: ${JSON.stringify(o.padding)} is not a padding`, {
      hint: `use ${PADDINGS.join(' or ')}`,
    });
  const crossEntropyChunk = o.crossEntropyChunk ?? DEFAULT_CHUNK_TOKENS;
  if (!(Number.isInteger(crossEntropyChunk) && crossEntropyChunk >= 0))
    throw new ConfigError(`cross_entropy_chunk: ${crossEntropyChunk} must be a whole number ≥ 0`, {
      hint: `use ${DEFAULT_CHUNK_TOKENS} (token rows per chunk), or 0 to compute all the logits at once`,
    });
  return {
    precision,
    batchSize,
    accumulation,
    microBatchSize,
    gradientCheckpointing: o.gradientCheckpointing ?? defaultGradientCheckpointing(given),
    gradientCheckpointingByDefault: o.gradientCheckpointing === undefined,
    seed: o.seed ?? 42,
    maxGradNorm,
    crossEntropyChunk,
    padding: o.padding ?? 'longest',
    groupByLength: o.groupByLength ?? false,
  };
}

/** The run's optimizer steps: maxSteps, or `epochs` passes over `examples` training examples. */
export function totalSteps(o: TrainerOptions, s: Settings, examples: number): number {
  if (o.maxSteps !== undefined) return positiveInt('max_steps', o.maxSteps, 1);
  const epochs = o.epochs ?? 1;
  if (!(epochs > 0))
    throw new ConfigError(`num_epochs: ${epochs} must be positive`, { hint: 'use 1 or more' });
  const stepsPerEpoch = Math.max(1, Math.floor(examples / (s.batchSize * s.accumulation)));
  return Math.max(1, Math.ceil(epochs * stepsPerEpoch));
}

/**
 * Refuses `what` in a data-parallel job: a signal (a rank that stopped alone would leave the others
 * waiting in the next all-reduce), gradients() (each rank holds only its share).
 */
export function oneProcessOnly(comm: Collectives | null, what: string, hint: string): void {
  if (comm !== null && comm.size > 1)
    throw new ConfigError(`${what}: not available in a data-parallel job`, { hint });
}

/** Trainer.create's train type, which it must be given (to prepare the model for it). */
export function requiredTrainType(o: CreateOptions): string {
  if (o.trainType === undefined)
    throw new ConfigError('train_type: missing', { hint: 'give a train type, such as lora or qlora' });
  return o.trainType;
}

/** A micro-batch given to step() or gradients() that is larger than the graphs were built for. */
export function microBatchError(examples: number, max: number, batchSize: number): ConfigError {
  const what = max === batchSize ? 'batch_size' : "this rank's micro-batch size";
  return new ConfigError(`a micro-batch of ${examples} examples exceeds ${what} ${max}`);
}

/** The error that stops a diverged run at `step`, naming the last good checkpoint. */
export function divergedError(step: number, what: string, lastCheckpoint: string | null): TrainingError {
  const last = lastCheckpoint === null ? '' : `; the last good checkpoint is ${lastCheckpoint}`;
  return new TrainingError(`training stopped at step ${step}: ${what}${last}`, {
    hint: 'lower the learning rate, keep gradient clipping on (max_grad_norm), or train in fp32',
  });
}

function over(quantization: string | null): string {
  return quantization === null ? '' : ` over ${quantization}`;
}

function positiveInt(field: string, v: number | undefined, def: number): number {
  const x = v ?? def;
  if (!Number.isInteger(x) || x < 1)
    throw new ConfigError(`${field}: ${JSON.stringify(x)} must be a positive integer`, {
      hint: `set ${field} to 1 or more`,
    });
  return x;
}
