/**
 * The Trainer: every train type over one loop.
 *
 * A step is up to three ggml graphs, each built once and run as often as needed:
 *   accumulate  (per micro-batch)  forward, backward of Σ token losses × loss scale, grads += into
 *                                  one buffer per trainable tensor
 *   norm        (per step)         Σ grad², read by the host: the global norm for clipping, and the
 *                                  overflow check of fp16 loss scaling
 *   update      (per step)         grads × (1 / (target tokens × loss scale) × clip factor), then the
 *                                  optimizer's update
 * Dividing by the step's count of target tokens (not per micro-batch) makes 4 micro-batches of 1
 * equal one batch of 4. It also makes data parallelism exact (options.comm): each rank accumulates its
 * share of the global batch, and the gradient buffers and token counts are summed across the ranks
 * between accumulate and norm (src/train/parallel.ts).
 *
 * @example
 * const trainer = await Trainer.create('tiny-model', data, { trainType: 'lora', maxSteps: 100 });
 * const result = trainer.train();
 * trainer.saveAdapter('out/adapter');
 * trainer.dispose();
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Backend } from '../engine/device.js';
import { availableMemory, formatBytes } from '../engine/memory.js';
import { isQuantDType, type DType, type FloatDType } from '../engine/dtype.js';
import {
  ConfigError,
  FormatError,
  OutOfMemoryError,
  QtuneError,
  TokenRangeError,
  errorText,
  shownValue,
} from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { makeFolder } from '../io/folders.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { configToJson, type LlamaConfig } from '../models/config.js';
import { llamaWeights, type ForwardOptions, type LlamaModel, type LinearHook } from '../models/llama.js';
import { loadModel, loadWeights, readConfig, type DeviceRequest, type LoadOptions } from '../models/load.js';
import { createOptimizer, type Optimizer, type OptimizerConfig } from '../optim/optimizer.js';
import { createSchedule, type Schedule, type ScheduleConfig } from '../optim/schedule.js';
import { methodDType } from '../quant/methods.js';
import { Graph, type GraphNode } from '../tensor/graph.js';
import { add, mul, sqr } from '../tensor/ops/elementwise.js';
import { cast, sum } from '../tensor/ops/layout.js';
import { DEFAULT_CHUNK_TOKENS, crossEntropy, linearCrossEntropy } from '../tensor/ops/loss.js';
import { linear } from '../tensor/ops/matmul.js';
import { StoreGroup } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';
import { seededUniform } from '../util/random.js';
import { packedAttentionMask } from '../data/packing.js';
import type { Example, TrainData } from '../data/example.js';
import { readExpansion, type Expansion } from './expand.js';
import { FrozenWeights, type FrozenCopies } from './frozen.js';
import { chooseGradType, type ComputeDTypeChoice, type GradTypeChoice } from './kernel-choice.js';
import { LoraLayers, type LoraOptions } from './lora.js';
import {
  crossEntropyRows,
  peakRss,
  rss,
  stepActivationsLowerBound,
  stepMemoryError,
  type DeviceMemory,
  type MemoryReport,
  type PhaseMemory,
  type StepShape,
} from './memory.js';
import { StepProfiler, type ProfileOptions, type StepGraph, type StepProfile } from './profile.js';
import { shareOf, splitGlobalBatch, type Collectives } from './parallel.js';
import { createQuantizer } from './quantize.js';
import { defaultGradientCheckpointing, resolveTrainType, type ResolvedTrainType } from './train-type.js';
import { saveGgufLoraAdapter } from '../adapters/gguf-lora.js';
import { validateAdapter, type LoraAdapterData, type LoraModule } from '../adapters/lora-weights.js';
import { saveModel } from '../models/save.js';
import { savePeftAdapter } from '../adapters/peft.js';

export { DEFAULT_CHUNK_TOKENS };

export type Precision = 'fp32' | 'bf16' | 'fp16' | 'bf16_autocast' | 'fp16_autocast';
export const PRECISIONS: readonly Precision[] = ['fp32', 'bf16', 'fp16', 'bf16_autocast', 'fp16_autocast'];

export interface TrainerOptions {
  trainType: string;
  /** The frozen base's quantization method; default from the train type (qlora: nf4). */
  quantization?: string;
  /** LoRA and DoRA settings (rank 8, alpha 16 by default). */
  lora?: Omit<LoraOptions, 'dora' | 'seed'>;
  precision?: Precision;
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
  /** Write a checkpoint every N steps (0: only at the end) into outputDir. */
  saveEvery?: number;
  outputDir?: string;
  seed?: number;
  /** fp16 loss scaling: initial scale and how many good steps double it. */
  lossScale?: { initial?: number; growthInterval?: number };
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
  kind: 'step' | 'eval' | 'skip' | 'checkpoint';
  step: number;
  epoch: number;
  loss?: number;
  lr?: number;
  gradNorm?: number;
  tokens?: number;
  tokensPerS?: number;
  lossScale?: number;
  perplexity?: number;
  path?: string;
  message?: string;
  memory?: { engineBytes: number; rssBytes: number; peakRssBytes: number };
  /** Data-parallel runs: ranks in the job. */
  worldSize?: number;
  /** Data-parallel steps: time of the gradient all-reduce (with its device-host copies), and bytes summed. */
  allreduceMs?: number;
  allreduceBytes?: number;
}

export interface StepResult {
  step: number;
  /** Mean loss over the step's target tokens. */
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  /** fp16 only: the gradients overflowed, the update was skipped and the scale halved. */
  skipped: boolean;
  seconds: number;
  /** Data-parallel runs: milliseconds and bytes of the gradient all-reduce (0 in a job of one). */
  allreduceMs: number;
  allreduceBytes: number;
}

export interface TrainResult {
  steps: number;
  losses: number[];
  evals: { step: number; loss: number; perplexity: number }[];
  memory: MemoryReport;
  tokensPerS: number;
  seconds: number;
}

/** What identifies a run, stored in checkpoints so one from another model or setup is refused. */
interface RunIdentity {
  model: string;
  trainType: string;
  adapter: string;
  quantization: string | null;
  params: { name: string; shape: number[] }[];
}

const STATE_FILE = 'trainer_state.json';
const FORMAT_VERSION = 1;

export class TrainingError extends QtuneError {
  override name = 'TrainingError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('COMPUTE', message, options);
  }
}

function positiveInt(field: string, v: number | undefined, def: number): number {
  const x = v ?? def;
  if (!Number.isInteger(x) || x < 1)
    throw new ConfigError(`${field}: ${JSON.stringify(x)} must be a positive integer`, {
      hint: `set ${field} to 1 or more`,
    });
  return x;
}

/** A hash of the model's config, to recognise checkpoints of the same base. */
function modelId(config: LlamaConfig): string {
  return createHash('sha256')
    .update(JSON.stringify(configToJson(config)))
    .digest('hex')
    .slice(0, 16);
}

/** Storage type of frozen float weights for a precision. */
function frozenDType(p: Precision): FloatDType {
  return p === 'bf16' ? 'bf16' : p === 'fp16' ? 'f16' : 'f32';
}

/** Matmul type of the low-precision modes (weights cast in the graph), or null. */
function computeDType(p: Precision): FloatDType | null {
  return p === 'bf16_autocast' || p === 'bf16'
    ? 'bf16'
    : p === 'fp16_autocast' || p === 'fp16'
      ? 'f16'
      : null;
}

export interface PreparedModel {
  /** Where the model came from (a folder, GGUF file or Hub id): the adapter's base_model_name_or_path. */
  source: string;
  model: LlamaModel;
  tokenizer: Tokenizer | null;
  trainType: ResolvedTrainType;
  /** Llama-Pro: the expansion record of the model folder. */
  expansion: Expansion | null;
  dispose(): void;
}

/**
 * How to load a model for a train type and precision: frozen float weights in the precision's type,
 * trainable ones in f32 (master weights).
 */
export function trainingLoadOptions(
  trainType: ResolvedTrainType,
  precision: Precision,
  expansion: Expansion | null,
): Pick<LoadOptions, 'dtype' | 'trainable'> {
  const isNew = newLayerTest(expansion);
  return {
    dtype: frozenDType(precision),
    trainable: trainType.adapter === 'full' ? true : trainType.adapter === 'llama_pro' ? isNew : false,
  };
}

function newLayerTest(expansion: Expansion | null): (name: string) => boolean {
  const prefixes = expansion?.newLayers.map((i) => `model.layers.${i}.`) ?? [];
  return (name) => prefixes.some((p) => name.startsWith(p));
}

/** Quantizes the frozen decoder weights when the train type asks for it (one block at a time). */
export function quantizeForTraining(
  model: LlamaModel,
  trainType: ResolvedTrainType,
  expansion: Expansion | null,
): void {
  if (trainType.quantization === null) return;
  const adapter = createQuantizer(model.backend, {
    method: trainType.quantization,
    skipModules: [
      'lm_head',
      'model.embed_tokens',
      ...(expansion?.newLayers.map((i) => `model.layers.${i}.*`) ?? []),
    ],
  });
  adapter.quantizeModel(model);
}

function checkPrecision(precision: string): Precision {
  if (!PRECISIONS.includes(precision as Precision))
    throw new ConfigError(`precision: "${precision}" is not a precision`, {
      hint: `use one of ${PRECISIONS.join(', ')}`,
    });
  return precision as Precision;
}

/** Whether a process with this id is running (a checkpoint write of it may be in progress). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Tidies what killed runs left in an output folder. A checkpoint is written into
 * `checkpoint-N.tmp-PID` and renamed into place, so a run killed while writing leaves that folder
 * incomplete: it is removed (when process PID is no longer running). A run killed while replacing an
 * existing checkpoint-N may leave the complete old one as `checkpoint-N.old-PID`: it is renamed back
 * when checkpoint-N is missing, else removed. `resume_from_checkpoint: latest` only ever considers
 * `checkpoint-N` folders. Returns the names removed or restored.
 */
export function cleanCheckpointLeftovers(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const done: string[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^(checkpoint-\d+)\.(tmp|old)-(\d+)$/.exec(name);
    if (m === null || processAlive(Number(m[3]))) continue;
    const full = path.join(dir, name);
    const final = path.join(dir, m[1]!);
    if (m[2] === 'old' && !existsSync(final)) renameSync(full, final);
    else rmSync(full, { recursive: true, force: true });
    done.push(name);
  }
  return done;
}

/**
 * Refuses, before anything is allocated, a batch shape whose training step cannot fit on the model's
 * device: a lower bound of the step's activations ({@link stepActivationsLowerBound}) against the
 * memory the device has available. Throws an OutOfMemoryError that names the batch and the ways out.
 *
 * @example
 * checkStepMemory(prepared.model, { batchSize: 8, seqLen: 512, gradientAccumulationSteps: 1,
 *   gradientCheckpointing: false, quantized: false });
 */
export function checkStepMemory(model: LlamaModel, s: StepShape): void {
  const needed = stepActivationsLowerBound(model.config, s);
  const free = availableMemory(model.backend);
  if (needed > free) throw stepMemoryError(s, model.backend.name, needed, free, false);
}

export interface PrepareOptions {
  trainType: string;
  quantization?: string;
  precision?: Precision;
  backend?: Backend | string;
  /** Split the model over several devices (LoRA tensors, gradients and optimizer state follow it). */
  devices?: DeviceRequest;
}

/**
 * Loads a model folder, GGUF file or Hub id for a train type and precision: trainable weights in f32,
 * the frozen base in the precision's type, quantized as it is read when the train type says so.
 */
export async function prepareModel(source: string, o: PrepareOptions): Promise<PreparedModel> {
  const plan = preparePlan(source, o);
  const loaded = await loadModel(source, {
    ...(o.backend === undefined ? {} : { backend: o.backend }),
    ...plan.options,
  });
  return finishPrepare(source, plan, loaded.model, loaded.tokenizer, () => loaded.dispose());
}

/**
 * {@link prepareModel} for a model folder without tokenizer files, for training on token ids made
 * elsewhere: the same loading and quantization, synchronous, and `tokenizer` null.
 */
export function prepareModelWeights(source: string, o: PrepareOptions): PreparedModel {
  const plan = preparePlan(source, o);
  if (!existsSync(source) || !statSync(source).isDirectory())
    throw new QtuneError('NOT_FOUND', `model ${source} is not a folder`, {
      hint: 'give a Hugging Face model folder (config.json and safetensors)',
    });
  const { model } = loadWeights(source, readConfig(source), o.backend, plan.options);
  return finishPrepare(source, plan, model, null, () => model.dispose());
}

interface PreparePlan {
  trainType: ResolvedTrainType;
  expansion: Expansion | null;
  /** The weight type plain methods quantize to while reading; undefined: after loading (HQQ) or none. */
  onLoad: DType | undefined;
  options: Omit<LoadOptions, 'backend'>;
}

function preparePlan(source: string, o: PrepareOptions): PreparePlan {
  const trainType = resolveTrainType(o.trainType, o.quantization);
  const precision = checkPrecision(o.precision ?? 'fp32');
  const expansion = trainType.adapter === 'llama_pro' && existsSync(source) ? readExpansion(source) : null;
  if (trainType.adapter === 'llama_pro' && expansion === null)
    throw new ConfigError(
      `train_type: ${trainType.name} needs a model expanded by \`qtune expand\`; ${source} is not one`,
      { hint: `run \`npx qtune expand --model ${source} --blocks N --out DIR\` and train DIR` },
    );
  // plain methods quantize each weight as it is read, so the f32 model never exists whole; HQQ's
  // solver works block by block after loading
  const onLoad =
    trainType.quantization !== null && trainType.quantization !== 'hqq'
      ? methodDType(trainType.quantization)
      : undefined;
  const options = {
    ...(o.devices === undefined ? {} : { devices: o.devices }),
    ...trainingLoadOptions(trainType, precision, expansion),
    ...(onLoad === undefined ? {} : { quantize: onLoad }),
  };
  return { trainType, expansion, onLoad, options };
}

function finishPrepare(
  source: string,
  plan: PreparePlan,
  model: LlamaModel,
  tokenizer: Tokenizer | null,
  dispose: () => void,
): PreparedModel {
  try {
    if (plan.onLoad === undefined) quantizeForTraining(model, plan.trainType, plan.expansion);
  } catch (e) {
    dispose();
    throw e;
  }
  return { source, model, tokenizer, trainType: plan.trainType, expansion: plan.expansion, dispose };
}

/** An error for a checkpoint file that is not what qtune wrote. */
function corrupt(file: string, what: string): FormatError {
  return new FormatError(file, what, { hint: 'the checkpoint is corrupt; use an earlier checkpoint-N' });
}

/** A checkpoint's trainer_state.json, parsed: a JSON object. */
function readState(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw corrupt(file, `is not valid JSON (${errorText(e)})`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw corrupt(file, 'is not a JSON object');
  return v as Record<string, unknown>;
}

export class Trainer {
  readonly model: LlamaModel;
  readonly tokenizer: Tokenizer | null;
  readonly trainType: ResolvedTrainType;
  readonly lora: LoraLayers | null;
  readonly params: readonly Tensor[];
  readonly optimizer: Optimizer;
  readonly schedule: Schedule;
  readonly totalSteps: number;
  readonly precision: Precision;
  readonly batchSize: number;
  readonly accumulation: number;
  /** Examples per micro-batch on this rank: batchSize, or less when a global batch splits across ranks. */
  readonly microBatchSize: number;
  /** Whether each decoder block is recomputed in the backward pass (the option, or the train type's default). */
  readonly gradientCheckpointing: boolean;
  /** The option was not given: {@link gradientCheckpointing} is the train type's default. */
  readonly gradientCheckpointingByDefault: boolean;
  /** Receives every log record (initially the options' onLog; set it to attach loggers later). */
  onLog: ((record: LogRecord) => void) | undefined;
  private readonly o: TrainerOptions;
  private readonly data: TrainData;
  private readonly seqLen: number;
  private readonly grads: StoreGroup;
  private readonly identity: RunIdentity;
  private readonly disposeModel: () => void;
  private readonly seed: number;
  private readonly source: string;
  private readonly maxGradNorm: number;
  /** Token rows per chunk of the fused output layer and loss; 0: logits whole. */
  private readonly xentChunk: number;
  private readonly scaling: { growthInterval: number } | null;
  /** Data parallelism: the job's ranks (null: this process alone). */
  private readonly comm: Collectives | null;
  /** Rank 0's state has reached every rank since the last construction or checkpoint load. */
  private synced = false;
  /** Host buffer of the gradient all-reduce (a bucket of whole gradient tensors). */
  private gradBucket: Float32Array | null = null;

  // ---- progress (all of it goes into checkpoints)
  private stepCount = 0;
  private epoch = 0;
  /** Position in the current epoch's order. */
  private cursor = 0;
  private microStep = 0;
  private lossScale: number;
  private goodSteps = 0;
  private order: number[] = [];

  private accGraph: {
    g: Graph;
    ids: Tensor;
    labels: Tensor;
    scale: Tensor;
    loss: Tensor;
    mask: Tensor | null; // packing
  } | null = null;
  private normGraph: { g: Graph; sumsq: Tensor } | null = null;
  private updateGraph: { g: Graph; factor: Tensor } | null = null;
  private evalGraph: { g: Graph; ids: Tensor; labels: Tensor; loss: Tensor; mask: Tensor | null } | null =
    null;
  /** Packing: some example carries segments, so the graphs take an attention mask input. */
  private readonly packed: boolean;
  private memoryReport: MemoryReport | null = null;
  /** Set by the `profile` option: runs the step graphs (node by node on the profiled step). */
  private readonly profiler: StepProfiler | null;
  private frozen: FrozenWeights | null = null;
  private gradTypeChoice: GradTypeChoice | null = null;

  /**
   * A trainer over a model already loaded with {@link prepareModel}. The trainer owns it from here
   * and frees it in {@link dispose}.
   */
  constructor(prepared: PreparedModel, data: TrainData, o: TrainerOptions) {
    this.source = prepared.source;
    this.model = prepared.model;
    this.tokenizer = prepared.tokenizer;
    this.disposeModel = () => prepared.dispose();
    this.trainType = prepared.trainType;
    this.o = o;
    this.onLog = o.onLog;
    this.data = data;
    this.precision = checkPrecision(o.precision ?? 'fp32');
    this.batchSize = positiveInt('batch_size', o.batchSize, 1);
    this.accumulation = positiveInt('gradient_accumulation_steps', o.gradientAccumulationSteps, 1);
    this.comm = o.comm ?? null;
    this.microBatchSize =
      this.comm === null
        ? this.batchSize
        : splitGlobalBatch(this.batchSize, this.accumulation, this.comm.size).microBatch;
    this.gradientCheckpointingByDefault = o.gradientCheckpointing === undefined;
    this.gradientCheckpointing = o.gradientCheckpointing ?? defaultGradientCheckpointing(this.trainType);
    this.seed = o.seed ?? 42;
    this.maxGradNorm = o.maxGradNorm ?? 1;
    if (!(this.maxGradNorm >= 0 && Number.isFinite(this.maxGradNorm)))
      throw new ConfigError(`max_grad_norm: ${this.maxGradNorm} must be ≥ 0`, {
        hint: 'use 1.0, or 0 to turn clipping off',
      });
    this.xentChunk = o.crossEntropyChunk ?? DEFAULT_CHUNK_TOKENS;
    if (!(Number.isInteger(this.xentChunk) && this.xentChunk >= 0))
      throw new ConfigError(`cross_entropy_chunk: ${this.xentChunk} must be a whole number ≥ 0`, {
        hint: `use ${DEFAULT_CHUNK_TOKENS} (token rows per chunk), or 0 to compute all the logits at once`,
      });
    const fp16 = this.precision === 'fp16' || this.precision === 'fp16_autocast';
    this.scaling = fp16
      ? { growthInterval: positiveInt('loss_scale.growth_interval', o.lossScale?.growthInterval, 2000) }
      : null;
    this.lossScale = fp16 ? (o.lossScale?.initial ?? 2 ** 16) : 1;

    if (data.train.length === 0)
      throw new ConfigError('dataset: the training split is empty', { hint: 'give at least one example' });
    this.seqLen = data.train[0]!.ids.length;
    for (const [split, list] of [
      ['train', data.train],
      ['validation', data.validation ?? []],
    ] as const) {
      list.forEach((e, i) => {
        if (
          e.ids.length !== this.seqLen ||
          e.labels.length !== this.seqLen ||
          (e.segments !== undefined && e.segments.length !== this.seqLen) // packing
        )
          throw new ConfigError(
            `dataset: ${split} example ${i} has ${e.ids.length} ids, ${e.labels.length} labels${e.segments === undefined ? '' : ` and ${e.segments.length} segments`}; every example needs ${this.seqLen}`,
            { hint: 'pad or truncate every example to the context length' },
          );
        // ids and labels without a row in the embeddings (or a class of the loss) are found here, before
        // anything is allocated, rather than when the step that holds them is set
        const vocab = this.model.config.vocab_size;
        const bad = e.ids.findIndex((id) => !(id >= 0 && id < vocab));
        if (bad >= 0)
          throw new TokenRangeError(
            `dataset: ${split} example ${i}`,
            { id: e.ids[bad]!, position: bad, vocabSize: vocab },
            { hint: 'pad with an id below vocab_size (such as the EOS), or resize the embeddings' },
          );
        const badLabel = e.labels.findIndex((l) => l !== -100 && !(l >= 0 && l < vocab));
        if (badLabel >= 0)
          throw new TokenRangeError(
            `dataset: ${split} example ${i}, labels`,
            { id: e.labels[badLabel]!, position: badLabel, vocabSize: vocab },
            { hint: 'labels are token ids below vocab_size, or -100 to ignore a position' },
          );
      });
    }

    // packing: a block-diagonal attention mask when any example carries segments
    this.packed = [...data.train, ...(data.validation ?? [])].some((e) => e.segments !== undefined);

    const stepsPerEpoch = Math.max(1, Math.floor(data.train.length / (this.batchSize * this.accumulation)));
    if (o.maxSteps !== undefined) this.totalSteps = positiveInt('max_steps', o.maxSteps, 1);
    else {
      const epochs = o.epochs ?? 1;
      if (!(epochs > 0))
        throw new ConfigError(`num_epochs: ${epochs} must be positive`, { hint: 'use 1 or more' });
      this.totalSteps = Math.max(1, Math.ceil(epochs * stepsPerEpoch));
    }
    try {
      this.profiler = o.profile === undefined || o.profile === false ? null : this.createProfiler(o.profile);
    } catch (e) {
      this.disposeModel();
      throw e;
    }

    try {
      checkStepMemory(this.model, this.stepShape());
      if (this.trainType.adapter === 'lora' || this.trainType.adapter === 'dora') {
        this.lora = LoraLayers.create(this.model, {
          rank: 8,
          alpha: 16,
          ...o.lora,
          dora: this.trainType.adapter === 'dora',
          seed: this.seed,
        });
        this.params = this.lora.params();
      } else {
        this.lora = null;
        this.params = this.model.tensors().filter((t) => t.requiresGrad);
      }
      if (this.params.length === 0)
        throw new ConfigError(`train_type: ${this.trainType.name} leaves nothing to train in this model`);
      // each gradient accumulates on its parameter's device
      this.grads = StoreGroup.create(
        this.params.map((p, i) => ({
          name: `grad${i}`,
          shape: p.shape,
          dtype: 'f32' as const,
          backend: p.backend,
        })),
      );
      const optConfig: OptimizerConfig = {
        name: 'adamw',
        lr: 2e-4,
        weight_decay: 0,
        ...o.optimizer,
      };
      this.optimizer = createOptimizer(this.model.backend, this.params, optConfig);
      this.schedule = createSchedule({
        name: 'constant',
        ...o.schedule,
        lr: this.optimizer.lr,
        total_steps: this.totalSteps,
      });
    } catch (e) {
      this.disposeModel();
      throw e;
    }
    this.identity = {
      model: modelId(this.model.config),
      trainType: this.trainType.name,
      adapter: this.trainType.adapter,
      quantization: this.trainType.quantization,
      params: this.params.map((p) => ({ name: p.name, shape: [...p.shape] })),
    };
    this.order = this.epochOrder(0);
  }

  /** Loads `source` for the options' train type and precision and returns a trainer over it. */
  static async create(
    source: string,
    data: TrainData,
    o: TrainerOptions & { backend?: Backend | string; devices?: DeviceRequest },
  ): Promise<Trainer> {
    const prepared = await prepareModel(source, {
      trainType: o.trainType,
      ...(o.quantization === undefined ? {} : { quantization: o.quantization }),
      ...(o.precision === undefined ? {} : { precision: o.precision }),
      ...(o.backend === undefined ? {} : { backend: o.backend }),
      ...(o.devices === undefined ? {} : { devices: o.devices }),
    });
    return new Trainer(prepared, data, o);
  }

  /** Optimizer steps taken so far (updates, and fp16 steps skipped for overflow). */
  get globalStep(): number {
    return this.stepCount;
  }

  get currentLossScale(): number {
    return this.lossScale;
  }

  // ------------------------------------------------------------------------------ data

  /** The order of the training examples in `epoch`: a seeded shuffle, the same on every run. */
  private epochOrder(epoch: number): number[] {
    const n = this.data.train.length;
    const order = Array.from({ length: n }, (_, i) => i);
    const rand = seededUniform((this.seed * 1000003 + epoch) >>> 0);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    return order;
  }

  /** The next `n` training examples of the order (the data wraps into the next epoch). */
  private nextExamples(n: number): Example[] {
    const out: Example[] = [];
    while (out.length < n) {
      if (this.cursor >= this.order.length) {
        this.epoch++;
        this.cursor = 0;
        this.order = this.epochOrder(this.epoch);
      }
      out.push(this.data.train[this.order[this.cursor++]!]!);
    }
    return out;
  }

  /**
   * This rank's micro-batches of the next global batch: all of it alone; with N ranks, the rank's
   * contiguous share of it (every rank walks the same order).
   */
  private nextMicroBatches(): Example[][] {
    const global = this.nextExamples(this.batchSize * this.accumulation);
    const size = this.comm?.size ?? 1;
    const per = global.length / size;
    const mine = global.slice((this.comm?.rank ?? 0) * per, ((this.comm?.rank ?? 0) + 1) * per);
    const out: Example[][] = [];
    for (let i = 0; i < mine.length; i += this.microBatchSize)
      out.push(mine.slice(i, i + this.microBatchSize));
    return out;
  }

  /**
   * Collation: a micro-batch's examples as the graphs' inputs (ids, labels padded with -100 to the
   * context length, the counted tokens, and the packed sequences' attention mask). "Packing" in qtune
   * means only sequence packing (data/packing.ts).
   */
  private collate(batch: readonly Example[]): {
    ids: Int32Array;
    labels: Int32Array;
    tokens: number;
    mask: Float32Array | null;
  } {
    const T = this.seqLen;
    const ids = new Int32Array(this.microBatchSize * T);
    const labels = new Int32Array(this.microBatchSize * T).fill(-100);
    batch.forEach((e, b) => {
      ids.set(e.ids, b * T);
      labels.set(e.labels, b * T);
    });
    let tokens = 0;
    for (const l of labels) if (l !== -100) tokens++;
    // packing: the block-diagonal causal mask [B, 1, T, T] of the batch's segments
    const mask = this.packed
      ? packedAttentionMask(
          batch.map((e) => e.segments),
          this.microBatchSize,
          T,
        )
      : null;
    return { ids, labels, tokens, mask };
  }

  /** Packing: the attention mask input of a graph, or nothing without packed examples. */
  private maskInput(g: Graph): Tensor | null {
    return this.packed
      ? g.input([this.microBatchSize, 1, this.seqLen, this.seqLen], 'f32', 'attn_mask')
      : null;
  }

  // ------------------------------------------------------------------------------ graphs

  /** The forward's linear hook: adapters, and the low-precision matmuls of autocast modes. */
  private linearHook(): LinearHook | undefined {
    const lowp = computeDType(this.precision);
    const adapter = this.lora?.hook();
    const frozen = this.frozen;
    if (lowp === null && (frozen === null || frozen.count === 0)) return adapter;
    return (module, x, w) => {
      // a frozen weight's persistent copy (in the matmul type, with Wᵀ), else the cast in the graph
      const copy = frozen?.weightFor(w) ?? w;
      const wc = copy === w && lowp !== null && w.dtype === 'f32' ? cast(w, lowp) : copy;
      return adapter?.(module, x, wc) ?? linear(x, wc);
    };
  }

  /** The low-precision modes run the output layer's matmul in their type too. */
  private headOption(): { headDType?: 'f16' | 'bf16'; headWeight?: Tensor } {
    const head = this.model.weight(
      this.model.config.tie_word_embeddings ? 'model.embed_tokens.weight' : 'lm_head.weight',
    );
    const copy = this.frozen?.weightFor(head) ?? head;
    if (copy !== head || head.transposed !== null) return { headWeight: copy };
    const lowp = computeDType(this.precision);
    return lowp === null || lowp === 'f32' ? {} : { headDType: lowp };
  }

  /** The frozen weights' persistent copies (`frozen_weight_copies`), made before the first graph. */
  private ensureFrozenCopies(): FrozenWeights {
    if (this.frozen !== null) return this.frozen;
    const trainable = new Set(this.model.tensors().filter((t) => t.requiresGrad));
    const quantized = this.model
      .tensors()
      .some((t) => !trainable.has(t) && t.rank === 2 && isQuantDType(t.dtype));
    this.gradTypeChoice = quantized
      ? chooseGradType(this.model.backend, this.o.quantComputeDType ?? 'auto')
      : null;
    this.frozen = FrozenWeights.create(this.model, trainable, {
      mode: this.o.frozenWeightCopies ?? 'auto',
      computeDType: computeDType(this.precision),
      quantGradType: this.gradTypeChoice?.type ?? 'f32',
      repack: this.trainType.adapter !== 'dora', // DoRA's norms read the weight itself
    });
    return this.frozen;
  }

  /** {@link kernelChoices} in a line each, for a run's log (nothing before the first graph). */
  kernelChoiceLines(): string[] {
    const k = this.kernelChoices();
    if (k === null) return [];
    const lines: string[] = [];
    if (k.frozenCopies.reason !== null) lines.push(`frozen weight copies: ${k.frozenCopies.reason}`);
    else
      lines.push(
        `frozen weight copies: ${k.frozenCopies.count === 0 ? 'off' : `${k.frozenCopies.count} weights, ${formatBytes(k.frozenCopies.bytes)}`}`,
      );
    const q = k.quantComputeDType;
    if (q !== null)
      lines.push(
        `quant compute dtype: ${q.type} (${q.speeds === null ? 'set' : `${q.source}: bf16 ${q.speeds.bf16.toFixed(0)} GFLOP/s, f32 ${q.speeds.f32.toFixed(0)}`})`,
      );
    return lines;
  }

  /**
   * What the trainer chose for the frozen base's matmuls: the persistent copies (`auto` says why)
   * and a quantized base's input-gradient type (measured or set). Null before the first graph.
   */
  kernelChoices(): {
    frozenCopies: { count: number; bytes: number; reason: string | null };
    quantComputeDType: GradTypeChoice | null;
  } | null {
    if (this.frozen === null) return null;
    return {
      frozenCopies: { count: this.frozen.count, bytes: this.frozen.bytes, reason: this.frozen.reason },
      quantComputeDType: this.gradTypeChoice,
    };
  }

  /**
   * The summed cross-entropy of a micro-batch: the output layer fused with the loss in chunks of
   * token rows (linearCrossEntropy; at most MAX_CROSS_ENTROPY_CHUNKS of them, which bounds the graph's
   * nodes), or the whole logits, then the loss: with a chunk of 0, or where the chunks would need more.
   */
  private lossSum(g: Graph, ids: Tensor, labels: Tensor, o: ForwardOptions, scale?: Tensor): Tensor {
    const { hidden, head } = this.model.forwardHidden(g, ids, o);
    const tokens = labels.numel;
    const rows = crossEntropyRows(tokens, this.xentChunk);
    // A trainable head (full fine-tuning) adds a chunk's dW partial ([vocab, hidden]) to the running
    // sum. Measured compute buffers, in floats: whole ≈ Wᵀ + dW + 2.65·tokens·vocab, chunked ≈ Wᵀ + dW +
    // hidden·vocab + 3·rows·vocab; so a few chunks of a short batch would need more than the logits.
    const headTrains = g.isRecording && head.requiresGrad;
    const fused = this.xentChunk > 0 && (!headTrains || 2.5 * tokens >= hidden.shape[2]! + 3 * rows);
    if (!fused)
      return crossEntropy(
        g.build(() => linear(hidden, head)),
        labels,
        { reduction: 'sum' },
      );
    // the loss scale reaches the chunks' gradients before a low-precision head matmul (fp16)
    return linearCrossEntropy(hidden, head, labels, {
      reduction: 'sum',
      chunkTokens: rows,
      ...(scale === undefined ? {} : { gradScale: scale }),
    });
  }

  private buildAccumulate(): NonNullable<Trainer['accGraph']> {
    const g = new Graph(this.model.backends);
    try {
      const ids = g.input([this.microBatchSize, this.seqLen], 'i32', 'ids');
      const labels = g.input([this.microBatchSize, this.seqLen], 'i32', 'labels');
      const scale = g.input([1], 'f32', 'loss_scale');
      const mask = this.maskInput(g);
      const hook = this.linearHook();
      const lossSum = this.lossSum(
        g,
        ids,
        labels,
        {
          ...(hook === undefined ? {} : { linear: hook }),
          ...this.headOption(),
          ...(mask === null ? {} : { mask }),
          checkpoint: this.gradientCheckpointing,
        },
        scale,
      );
      const grads = g.backward(mul(lossSum, scale), this.params);
      // ggml orders the nodes depth-first from each assignment in turn: the last block's gradients
      // first, so that every block's weight gradients run as soon as its output gradient exists and
      // its activations (recomputed ones, with gradient checkpointing) are freed block by block,
      // rather than all kept until the first block's input gradient is done
      for (let i = this.params.length - 1; i >= 0; i--) {
        const p = this.params[i]!;
        const acc = this.grads.get(`grad${i}`);
        const grad = grads.get(p);
        if (grad === undefined) throw new QtuneError('GRAPH', `no gradient reaches ${p.name}`);
        g.label('grad.accumulate', () => g.assign(acc, add(acc, grad)));
      }
      const loss = g.output(lossSum);
      g.plan(); // compiled (allocated) by buildGraphs, after the forward phase
      return { g, ids, labels, scale, loss, mask };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  private buildNorm(): NonNullable<Trainer['normGraph']> {
    const g = new Graph(this.model.backends);
    try {
      const sumsq = g.label('grad.norm', () => {
        let total: Tensor | null = null;
        for (const t of this.grads.tensors) {
          const s = sum(sqr(t));
          total = total === null ? s : add(total, s);
        }
        return g.output(total!);
      });
      g.compile();
      return { g, sumsq };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  private buildUpdate(): NonNullable<Trainer['updateGraph']> {
    const g = new Graph(this.model.backends);
    try {
      const factor = g.input([1], 'f32', 'grad_factor');
      const grads = new Map<Tensor, Tensor>();
      g.noGrad(() =>
        g.label('grad.scale', () =>
          this.params.forEach((p, i) => grads.set(p, mul(this.grads.get(`grad${i}`), factor))),
        ),
      );
      this.optimizer.build(g, grads);
      g.compile();
      return { g, factor };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  private buildEval(): NonNullable<Trainer['evalGraph']> {
    const g = new Graph(this.model.backends);
    try {
      const ids = g.input([this.microBatchSize, this.seqLen], 'i32', 'ids');
      const labels = g.input([this.microBatchSize, this.seqLen], 'i32', 'labels');
      const mask = this.maskInput(g);
      const hook = this.linearHook();
      const forwardOptions = {
        ...(hook === undefined ? {} : { linear: hook }),
        ...this.headOption(),
        ...(mask === null ? {} : { mask }),
      };
      const loss = g.output(g.noGrad(() => this.lossSum(g, ids, labels, forwardOptions)));
      g.compile();
      return { g, ids, labels, loss, mask };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  private engineBytes(): number {
    let n =
      this.model.bytes +
      (this.frozen?.bytes ?? 0) +
      this.grads.bytes +
      (this.lora?.store.bytes ?? 0) +
      this.optimizerBytes();
    for (const x of [this.accGraph, this.normGraph, this.updateGraph, this.evalGraph]) {
      if (x !== null) n += x.g.memory().compute + x.g.memory().inputs;
    }
    return n;
  }

  private optimizerBytes(): number {
    return this.optimizer.stateBytes;
  }

  /**
   * What the run holds on each device: the blocks, weights, adapters, gradients, optimizer state and
   * compute buffers (of the graphs built so far). One entry unless the model is split.
   */
  memoryByDevice(): DeviceMemory[] {
    const map = this.model.deviceMap;
    const graphs = [this.accGraph, this.normGraph, this.updateGraph, this.evalGraph];
    return this.model.backends.map((b) => {
      const weights = this.model.bytesOn(b) + (this.frozen?.bytesOn(b) ?? 0); // the frozen weights' copies too
      const adapters = this.lora?.store.bytesOn(b) ?? 0;
      const gradients = this.grads.bytesOn(b);
      const optimizerState = this.optimizer.stateBytesOn(b);
      let compute = 0;
      for (const x of graphs) if (x !== null) compute += x.g.memoryOn(b).compute + x.g.memoryOn(b).inputs;
      return {
        device: b.name,
        blocks: map.blocks.flatMap((d, i) => (d === b ? [i] : [])),
        head: map.model === b,
        weights,
        adapters,
        gradients,
        optimizerState,
        compute,
        total: weights + adapters + gradients + optimizerState + compute,
      };
    });
  }

  private phase(): PhaseMemory {
    return { engineBytes: this.engineBytes(), rssBytes: rss() };
  }

  /** The batch shape of a step, for memory checks and their messages. */
  private stepShape(): StepShape {
    return {
      batchSize: this.microBatchSize, // the graphs' batch (a rank's share under data parallelism)
      seqLen: this.seqLen,
      gradientAccumulationSteps: this.accumulation,
      gradientCheckpointing: this.gradientCheckpointing,
      quantized: this.trainType.quantization !== null,
      crossEntropyChunk: this.xentChunk,
    };
  }

  /** One line for a run's startup: `gradient checkpointing: on (default for qlora)`. */
  gradientCheckpointingLine(): string {
    const why = this.gradientCheckpointingByDefault
      ? `default for ${this.trainType.name}${this.trainType.quantization === null ? '' : ` over ${this.trainType.quantization}`}; gradient_checkpointing: ${!this.gradientCheckpointing} changes it`
      : 'set';
    return `gradient checkpointing: ${this.gradientCheckpointing ? 'on' : 'off'} (${why})`;
  }

  /**
   * Builds the step's graphs and allocates their memory now (the first step does it otherwise), so
   * that a batch the device cannot hold fails with an OutOfMemoryError before a run writes anything.
   */
  allocate(): void {
    this.ensureGraphs();
  }

  /** Builds the graphs on first use, measuring memory after each phase. */
  private ensureGraphs(): void {
    if (this.accGraph !== null) return;
    try {
      this.buildGraphs();
    } catch (e) {
      for (const x of [this.accGraph, this.normGraph, this.updateGraph, this.evalGraph]) x?.g.dispose();
      this.accGraph = this.normGraph = this.updateGraph = this.evalGraph = null;
      // the frozen weights' copies were made for these graphs: a refused step keeps none of them
      this.frozen?.dispose();
      this.frozen = null;
      const { needed, free } = e instanceof OutOfMemoryError ? e.details : {};
      if (typeof needed === 'number' && typeof free === 'number')
        throw stepMemoryError(this.stepShape(), this.model.backend.name, needed, free, true);
      throw e;
    }
  }

  private buildGraphs(): void {
    const load = this.phase();
    this.ensureFrozenCopies();
    // the accumulate graph is the largest: it is measured (planned) before anything is allocated,
    // and allocated after the forward phase was measured
    const acc = this.buildAccumulate();
    let forward: PhaseMemory;
    try {
      const probe = this.collate(this.data.train.slice(0, this.microBatchSize));
      this.evalGraph = this.buildEval();
      this.evalGraph.g.set(this.evalGraph.ids, probe.ids);
      this.evalGraph.g.set(this.evalGraph.labels, probe.labels);
      if (this.evalGraph.mask !== null) this.evalGraph.g.set(this.evalGraph.mask, probe.mask!); // packing
      this.evalGraph.g.run();
      forward = this.phase();
      acc.g.compile();
    } catch (e) {
      acc.g.dispose();
      throw e;
    }
    this.accGraph = acc;
    const backward = { engineBytes: this.engineBytes(), rssBytes: 0 };
    this.normGraph = this.buildNorm();
    this.updateGraph = this.buildUpdate();
    this.memoryReport = {
      load,
      forward,
      backward,
      optimizer: { engineBytes: 0, rssBytes: 0 },
      peakRssBytes: 0,
      devices: [],
      parts: {
        weights: this.model.bytes + (this.frozen?.bytes ?? 0),
        trainable: this.params.reduce((n, p) => n + p.numel * 4, 0),
        gradients: this.grads.bytes,
        optimizerState: this.optimizerBytes(),
        activations: this.accGraph.g.memory().compute,
      },
    };
  }

  // ------------------------------------------------------------------------------ the step

  /**
   * Runs the accumulate graph over `batches`: the gradients of their summed token losses (× the loss
   * scale) are added into the gradient buffers. Returns the token count, loss sum and whether it
   * overflowed.
   */
  private accumulate(
    batches: readonly (readonly Example[])[],
    firstMicroStep: number,
  ): { tokens: number; lossSum: number; overflow: boolean } {
    const acc = this.accGraph!;
    const rank = this.comm?.rank ?? 0;
    const size = this.comm?.size ?? 1;
    let tokens = 0;
    let lossSum = 0;
    let overflow = false;
    batches.forEach((batch, k) => {
      if (batch.length > this.microBatchSize)
        throw new ConfigError(
          `a micro-batch of ${batch.length} examples exceeds ${this.microBatchSize === this.batchSize ? 'batch_size' : "this rank's micro-batch size"} ${this.microBatchSize}`,
        );
      const collated = this.collate(batch);
      if (collated.tokens === 0) return; // nothing to learn from: no gradient, no count
      // dropout masks: one seed per (global micro-batch slot, rank)
      if (this.lora !== null) this.lora.step = (firstMicroStep + k + 1) * size + rank;
      acc.g.set(acc.ids, collated.ids);
      acc.g.set(acc.labels, collated.labels);
      acc.g.set(acc.scale, Float32Array.of(this.lossScale));
      if (acc.mask !== null) acc.g.set(acc.mask, collated.mask!); // packing
      this.runGraph(acc.g, 'accumulate');
      const l = acc.g.read(acc.loss)[0]!;
      if (!Number.isFinite(l)) overflow = true;
      lossSum += l;
      tokens += collated.tokens;
      if (this.memoryReport !== null && this.memoryReport.backward.rssBytes === 0)
        this.memoryReport.backward.rssBytes = rss();
    });
    return { tokens, lossSum, overflow };
  }

  /**
   * The mean loss and its gradients for the trainable tensors over `microBatches` (default: the next
   * micro-batches of the data), computed by the step's own accumulate graph, without an update: the
   * gradients a {@link step} would clip and hand to the optimizer (divided by the target tokens and
   * the loss scale), by tensor name. The weights, optimizer and step count are left as they were;
   * without `microBatches` the data position advances as a step's would.
   *
   * @example
   * const { loss, grads } = trainer.gradients([[example]]);
   * grads.get('model.layers.0.self_attn.q_proj.lora_A'); // Float32Array [r * in]
   */
  gradients(microBatches?: readonly (readonly Example[])[]): {
    loss: number;
    tokens: number;
    grads: Map<string, Float32Array>;
  } {
    if (this.comm !== null && this.comm.size > 1)
      throw new ConfigError('gradients(): not available in a data-parallel job', {
        hint: 'call it in a job of one process',
      });
    this.ensureGraphs();
    const batches = microBatches ?? this.nextMicroBatches();
    this.grads.zero();
    const { tokens, lossSum } = this.accumulate(batches, this.microStep);
    const grads = new Map<string, Float32Array>();
    const k = 1 / (tokens * this.lossScale);
    this.params.forEach((p, i) => {
      const t = this.grads.get(`grad${i}`);
      const g = t.store!.read(t);
      for (let j = 0; j < g.length; j++) g[j] = g[j]! * k;
      grads.set(p.name, g);
    });
    this.grads.zero();
    return { loss: lossSum / tokens, tokens, grads };
  }

  /**
   * The nodes of the step's compiled graphs (built on first use): `accumulate` (forward, backward,
   * gradient sums) and `update` (the optimizer). What the precision modes compute in which type can
   * be read off them: every `MUL_MAT` node with its sources' types.
   */
  graphNodes(): { accumulate: GraphNode[]; update: GraphNode[] } {
    this.ensureGraphs();
    return { accumulate: this.accGraph!.g.nodes(), update: this.updateGraph!.g.nodes() };
  }

  /**
   * One optimizer step over `gradientAccumulationSteps` micro-batches: the next ones of the training
   * data, or those given (with a communicator: this rank's share of the step, of at most
   * {@link microBatchSize} examples each). Every rank of a job calls it together.
   */
  step(microBatches?: readonly (readonly Example[])[]): StepResult {
    this.ensureGraphs();
    if (!this.synced) this.syncFromRank0();
    const t0 = performance.now();
    const batches = microBatches ?? this.nextMicroBatches();
    const firstMicroStep = this.microStep;
    let { tokens, lossSum, overflow } = this.accumulate(batches, firstMicroStep);
    this.microStep = firstMicroStep + (microBatches === undefined ? this.accumulation : batches.length);
    let allreduceMs = 0;
    let allreduceBytes = 0;
    if (this.comm !== null && this.comm.size > 1) {
      // every rank holds the sum of its share; summed over the ranks, the step's whole batch
      const t = performance.now();
      const totals = Float64Array.of(tokens, lossSum, overflow ? 1 : 0);
      this.comm.allReduceSum(totals);
      allreduceBytes = totals.byteLength + this.allReduceGradients();
      allreduceMs = performance.now() - t;
      [tokens, lossSum] = [totals[0]!, totals[1]!];
      overflow = totals[2]! > 0;
    }
    if (overflow && this.scaling === null) this.diverged(lossSum);
    const lr = this.schedule.lrAt(this.stepCount);
    if (tokens === 0) {
      this.stepCount++;
      return {
        step: this.stepCount,
        loss: NaN,
        lr,
        gradNorm: 0,
        tokens: 0,
        skipped: true,
        seconds: (performance.now() - t0) / 1000,
        allreduceMs,
        allreduceBytes,
      };
    }
    const norm = this.normGraph!;
    this.runGraph(norm.g, 'norm');
    const gradNorm = Math.sqrt(norm.g.read(norm.sumsq)[0]!) / (tokens * this.lossScale);
    overflow ||= !Number.isFinite(gradNorm);
    let skipped = false;
    if (overflow) {
      if (this.scaling === null) this.diverged(gradNorm, 'gradient norm');
      // fp16: skip the update and halve the scale, as PyTorch's GradScaler
      this.lossScale /= 2;
      this.goodSteps = 0;
      skipped = true;
      if (this.lossScale < 1) this.diverged(NaN, 'loss scale fell below 1 and the gradients still overflow:');
    } else {
      const clip =
        this.maxGradNorm > 0 && gradNorm > this.maxGradNorm ? this.maxGradNorm / (gradNorm + 1e-6) : 1;
      const up = this.updateGraph!;
      this.optimizer.lr = lr;
      up.g.set(up.factor, Float32Array.of(clip / (tokens * this.lossScale)));
      this.runGraph(up.g, 'update');
      if (this.scaling !== null && ++this.goodSteps >= this.scaling.growthInterval) {
        this.lossScale *= 2;
        this.goodSteps = 0;
      }
      if (this.memoryReport !== null && this.memoryReport.optimizer.rssBytes === 0) {
        this.memoryReport.optimizer = this.phase();
        this.memoryReport.backward.rssBytes ||= rss();
      }
    }
    this.grads.zero();
    this.stepCount++;
    const loss = lossSum / tokens;
    return {
      step: this.stepCount,
      loss,
      lr,
      gradNorm,
      tokens,
      skipped,
      seconds: (performance.now() - t0) / 1000,
      allreduceMs,
      allreduceBytes,
    };
  }

  /** Runs one of the step's graphs: plainly, or through the profiler when the `profile` option is set. */
  private runGraph(g: Graph, which: StepGraph): void {
    if (this.profiler === null) g.run();
    else this.profiler.run(g, which, this.stepCount + 1);
  }

  private createProfiler(p: true | ProfileOptions): StepProfiler {
    const step = p === true || p.step === undefined ? Math.min(2, this.totalSteps) : p.step;
    if (!Number.isInteger(step) || step < 1 || step > this.totalSteps)
      throw new ConfigError(`profile_step: ${step} must be a step of this run, 1 to ${this.totalSteps}`, {
        hint: 'leave it unset to profile step 2 (after a warm-up step)',
      });
    return new StepProfiler(step);
  }

  /**
   * The per-op profile of the profiled step (the `profile` option), once that step has run; null
   * without the option or before. Format it with `formatProfile`, write it with `writeProfileTrace`.
   *
   * @example
   * const t = new Trainer(prepared, data, { trainType: 'lora', maxSteps: 3, profile: true });
   * t.train();
   * console.log(formatProfile(t.profile()!).join('\n'));
   */
  profile(): StepProfile | null {
    return this.profiler?.result() ?? null;
  }

  /**
   * Sums every gradient buffer over the ranks, in buckets of whole tensors of at most 64 MiB (a
   * larger tensor goes alone). Returns the bytes summed.
   */
  private allReduceGradients(): number {
    const comm = this.comm!;
    const cap = 16 * 2 ** 20; // floats
    const tensors = this.grads.tensors;
    const total = tensors.reduce((n, t) => n + t.numel, 0);
    this.gradBucket ??= new Float32Array(Math.min(cap, total));
    const bucket = this.gradBucket;
    let pending: Tensor[] = [];
    let fill = 0;
    const flush = (): void => {
      if (pending.length === 0) return;
      const view = bucket.subarray(0, fill);
      let off = 0;
      for (const t of pending) {
        this.grads.read(t, view.subarray(off, off + t.numel));
        off += t.numel;
      }
      comm.allReduceSum(view);
      off = 0;
      for (const t of pending) {
        this.grads.write(t, view.subarray(off, off + t.numel));
        off += t.numel;
      }
      pending = [];
      fill = 0;
    };
    for (const t of tensors) {
      if (t.numel > cap) {
        flush();
        const data = this.grads.read(t);
        comm.allReduceSum(data);
        this.grads.write(t, data);
        continue;
      }
      if (fill + t.numel > cap) flush();
      pending.push(t);
      fill += t.numel;
    }
    flush();
    return total * 4;
  }

  /**
   * Makes every rank start from rank 0's state: trainable weights, optimizer state and progress
   * (LoRA's seeded initialisation is the same everywhere already; this also covers weights loaded
   * from files that differ, and a checkpoint read on one rank while it was being replaced).
   */
  private syncFromRank0(): void {
    this.synced = true;
    const comm = this.comm;
    if (comm === null || comm.size === 1) return;
    for (const p of this.params) {
      const data = p.store!.read(p);
      comm.broadcast(data, 0);
      p.store!.write(p, data);
    }
    const progress = Float64Array.of(
      this.stepCount,
      this.epoch,
      this.cursor,
      this.microStep,
      this.lossScale,
      this.goodSteps,
      this.optimizer.step,
    );
    comm.broadcast(progress, 0);
    const state = this.optimizer.stateTensors();
    for (const t of state) comm.broadcast(t.data, 0);
    this.optimizer.loadState(progress[6]!, state);
    const epoch = progress[1]!;
    if (epoch !== this.epoch) this.order = this.epochOrder(epoch);
    [this.stepCount, this.epoch, this.cursor, this.microStep, this.lossScale, this.goodSteps] = [
      progress[0]!,
      epoch,
      progress[2]!,
      progress[3]!,
      progress[4]!,
      progress[5]!,
    ];
  }

  private diverged(value: number, what = 'loss'): never {
    const last = this.lastCheckpoint;
    throw new TrainingError(
      `training stopped at step ${this.stepCount + 1}: the ${what} is ${value}${last === null ? '' : `; the last good checkpoint is ${last}`}`,
      { hint: 'lower the learning rate, keep gradient clipping on (max_grad_norm), or train in fp32' },
    );
  }
  private lastCheckpoint: string | null = null;

  // ------------------------------------------------------------------------------ evaluation

  /** Mean loss and perplexity over the validation data (or its first `evalExamples`). */
  evaluate(examples: readonly Example[] = this.data.validation ?? []): {
    loss: number;
    perplexity: number;
    tokens: number;
  } {
    if (examples.length === 0)
      throw new ConfigError('evaluation needs validation data', { hint: 'give a validation split' });
    this.ensureGraphs();
    const ev = this.evalGraph!;
    const limit = this.o.evalExamples ?? examples.length;
    // data parallelism: each rank evaluates a contiguous share, and the sums add up
    const [start, end] = shareOf(
      Math.min(limit, examples.length),
      this.comm?.rank ?? 0,
      this.comm?.size ?? 1,
    );
    const list = examples.slice(start, end);
    let total = 0;
    let tokens = 0;
    for (let i = 0; i < list.length; i += this.microBatchSize) {
      const collated = this.collate(list.slice(i, i + this.microBatchSize));
      if (collated.tokens === 0) continue;
      ev.g.set(ev.ids, collated.ids);
      ev.g.set(ev.labels, collated.labels);
      if (ev.mask !== null) ev.g.set(ev.mask, collated.mask!); // packing
      ev.g.run();
      total += ev.g.read(ev.loss)[0]!;
      tokens += collated.tokens;
    }
    if (this.comm !== null && this.comm.size > 1) {
      const sums = Float64Array.of(total, tokens);
      this.comm.allReduceSum(sums);
      [total, tokens] = [sums[0]!, sums[1]!];
    }
    const loss = total / tokens;
    return { loss, perplexity: Math.exp(loss), tokens };
  }

  // ------------------------------------------------------------------------------ the loop

  /** Trains to the last step: steps, periodic evaluation and checkpoints, a final evaluation and checkpoint. */
  train(): TrainResult {
    const o = this.o;
    if (o.outputDir !== undefined) cleanCheckpointLeftovers(o.outputDir);
    const losses: number[] = [];
    const evals: TrainResult['evals'] = [];
    const hasVal = (this.data.validation?.length ?? 0) > 0;
    const t0 = performance.now();
    let tokens = 0;
    while (this.stepCount < this.totalSteps) {
      const r = this.step();
      tokens += r.tokens;
      losses.push(r.loss);
      this.log({
        kind: r.skipped ? 'skip' : 'step',
        step: r.step,
        epoch: this.epochFloat(),
        loss: r.loss,
        lr: r.lr,
        gradNorm: r.gradNorm,
        tokens: r.tokens,
        tokensPerS: r.tokens / r.seconds,
        ...(this.scaling === null ? {} : { lossScale: this.lossScale }),
        ...(r.skipped
          ? { message: `gradients overflowed; update skipped, loss scale now ${this.lossScale}` }
          : {}),
        memory: { ...this.phase(), peakRssBytes: peakRss() },
        ...(this.comm === null
          ? {}
          : { worldSize: this.comm.size, allreduceMs: r.allreduceMs, allreduceBytes: r.allreduceBytes }),
      });
      const last = this.stepCount === this.totalSteps;
      if (hasVal && (((o.evalEvery ?? 0) > 0 && this.stepCount % o.evalEvery! === 0) || last)) {
        const e = this.evaluate();
        evals.push({ step: this.stepCount, loss: e.loss, perplexity: e.perplexity });
        this.log({
          kind: 'eval',
          step: this.stepCount,
          epoch: this.epochFloat(),
          loss: e.loss,
          perplexity: e.perplexity,
        });
      }
      if (
        o.outputDir !== undefined &&
        (((o.saveEvery ?? 0) > 0 && this.stepCount % o.saveEvery! === 0) || last)
      ) {
        const dir = path.join(o.outputDir, `checkpoint-${this.stepCount}`);
        // data parallelism: the ranks hold the same state; rank 0 writes it
        if ((this.comm?.rank ?? 0) === 0) {
          this.saveCheckpoint(dir);
          this.log({ kind: 'checkpoint', step: this.stepCount, epoch: this.epochFloat(), path: dir });
        } else this.lastCheckpoint = dir;
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    const memory = this.memory();
    return { steps: this.stepCount, losses, evals, memory, tokensPerS: tokens / seconds, seconds };
  }

  private epochFloat(): number {
    return this.epoch + this.cursor / this.data.train.length;
  }

  private log(r: LogRecord): void {
    this.onLog?.(r);
  }

  /** Memory per phase (measured when the graphs were first built and run). */
  memory(): MemoryReport {
    this.ensureGraphs();
    const m = this.memoryReport!;
    return { ...m, peakRssBytes: peakRss(), devices: this.memoryByDevice() };
  }

  // ------------------------------------------------------------------------------ checkpoints

  /**
   * Writes the trainable weights, optimizer state, schedule position, loss scale, RNG and data
   * position into `dir` (a temporary folder renamed into place: a crash leaves the last one whole).
   */
  saveCheckpoint(dir: string): string {
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    try {
      writeSafetensors(
        path.join(tmp, 'trainable.safetensors'),
        this.params.map((p) => ({
          name: p.name,
          shape: p.shape,
          dtype: 'F32' as const,
          data: p.store!.read(p),
        })),
      );
      writeSafetensors(
        path.join(tmp, 'optimizer.safetensors'),
        this.optimizer
          .stateTensors()
          .map((t) => ({ name: t.name, shape: t.shape, dtype: 'F32' as const, data: t.data })),
      );
      const state = {
        format: FORMAT_VERSION,
        identity: this.identity,
        step: this.stepCount,
        epoch: this.epoch,
        cursor: this.cursor,
        micro_step: this.microStep,
        seed: this.seed,
        loss_scale: this.lossScale,
        good_steps: this.goodSteps,
        optimizer: this.optimizer.state(),
        schedule: {
          name: this.schedule.name,
          lr: this.schedule.lr,
          total_steps: this.totalSteps,
          warmup_steps: this.schedule.warmupSteps,
        },
        batch_size: this.batchSize,
        gradient_accumulation_steps: this.accumulation,
        precision: this.precision,
        adapter:
          this.lora === null
            ? null
            : {
                base_model: this.source,
                rs_lora: this.lora.options.rsLora,
                dora: this.lora.options.dora,
                dropout: this.lora.options.dropout,
                modules: [...this.lora.modules.values()].map((m) => ({
                  module: m.module,
                  rank: m.rank,
                  alpha: m.alpha,
                  in_features: m.inFeatures,
                  out_features: m.outFeatures,
                })),
              },
      };
      writeFileAtomic(path.join(tmp, STATE_FILE), [JSON.stringify(state, null, 2) + '\n']);
      const old = `${dir}.old-${process.pid}`;
      if (existsSync(dir)) renameSync(dir, old);
      renameSync(tmp, dir);
      rmSync(old, { recursive: true, force: true });
    } catch (e) {
      rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
    this.lastCheckpoint = dir;
    return dir;
  }

  /**
   * Continues from a checkpoint of this same run setup: afterwards the trainer computes exactly the
   * steps the interrupted run would have.
   */
  loadCheckpoint(dir: string): void {
    const file = path.join(dir, STATE_FILE);
    if (!existsSync(file))
      throw new QtuneError('NOT_FOUND', `${dir} is not a qtune checkpoint (no ${STATE_FILE})`, {
        hint: 'point resume at a checkpoint-N folder of an output directory',
      });
    const state = readState(file) as {
      format: number;
      identity?: RunIdentity;
      step: number;
      epoch: number;
      cursor: number;
      micro_step: number;
      seed: number;
      loss_scale: number;
      good_steps: number;
      optimizer: { step: number };
      batch_size: number;
      gradient_accumulation_steps: number;
    };
    const id = state.identity;
    const mismatch =
      id?.model !== this.identity.model
        ? `another model (config ${String(id?.model)}, this one is ${this.identity.model})`
        : id.trainType !== this.identity.trainType || id.quantization !== this.identity.quantization
          ? `train type ${id.trainType}${id.quantization === null ? '' : ` over ${id.quantization}`}, this run is ${this.identity.trainType}${this.identity.quantization === null ? '' : ` over ${this.identity.quantization}`}`
          : JSON.stringify(id.params) !== JSON.stringify(this.identity.params)
            ? 'other trainable tensors (LoRA rank or target modules differ)'
            : null;
    if (mismatch !== null)
      throw new ConfigError(`checkpoint ${dir} was written for ${mismatch}`, {
        hint: 'resume with the model and settings that wrote it, or start a new run',
      });
    if (
      state.seed !== this.seed ||
      state.batch_size !== this.batchSize ||
      state.gradient_accumulation_steps !== this.accumulation
    )
      throw new ConfigError(
        `checkpoint ${dir} was written with seed ${state.seed}, batch_size ${state.batch_size}, gradient_accumulation_steps ${state.gradient_accumulation_steps}; this run has ${this.seed}, ${this.batchSize}, ${this.accumulation}`,
        { hint: 'use the same seed and batch settings to resume exactly' },
      );
    const counts = ['step', 'epoch', 'cursor', 'micro_step', 'good_steps'] as const;
    for (const k of counts) {
      if (!(Number.isSafeInteger(state[k]) && state[k] >= 0))
        throw corrupt(file, `${k} is ${shownValue(state[k])}, not a whole number ≥ 0`);
    }
    if (!(Number.isFinite(state.loss_scale) && state.loss_scale > 0))
      throw corrupt(file, `loss_scale is ${shownValue(state.loss_scale)}, not a number > 0`);
    const optStep = (state.optimizer as { step?: unknown } | null)?.step;
    if (!(Number.isSafeInteger(optStep) && (optStep as number) >= 0))
      throw corrupt(file, `optimizer.step is ${shownValue(optStep)}, not a whole number ≥ 0`);
    const weights = SafetensorsFile.open(path.join(dir, 'trainable.safetensors'));
    const opt = SafetensorsFile.open(path.join(dir, 'optimizer.safetensors'));
    try {
      for (const p of this.params) p.store!.write(p, weights.readF32(p.name));
      this.optimizer.loadState(
        state.optimizer.step,
        opt.names().map((n) => ({ name: n, shape: opt.entry(n).shape, data: opt.readF32(n) })),
      );
    } finally {
      weights.close();
      opt.close();
    }
    this.stepCount = state.step;
    this.epoch = state.epoch;
    this.cursor = state.cursor;
    this.microStep = state.micro_step;
    this.lossScale = state.loss_scale;
    this.goodSteps = state.good_steps;
    this.order = this.epochOrder(this.epoch);
    this.lastCheckpoint = dir;
    this.synced = false;
  }

  /** The LoRA/DoRA adapter saved in a checkpoint folder (for `qtune export`). */
  static checkpointAdapter(dir: string): LoraAdapterData {
    const file = path.join(dir, STATE_FILE);
    if (!existsSync(file))
      throw new QtuneError('NOT_FOUND', `${dir} is not a qtune checkpoint (no ${STATE_FILE})`, {
        hint: 'give a checkpoint-N folder of an output directory',
      });
    const a = readState(file)['adapter'] as Record<string, unknown> | null | undefined;
    if (a === undefined || a === null)
      throw new ConfigError(`checkpoint ${dir} holds no adapter (full or llama_pro training)`, {
        hint: 'export adapters from lora/qlora/dora runs',
      });
    const list = typeof a === 'object' ? a['modules'] : undefined;
    if (!Array.isArray(list) || list.some((m) => m === null || typeof m !== 'object'))
      throw corrupt(file, 'adapter.modules is not a list of modules');
    const entries = list as Record<string, unknown>[];
    for (const [k, kind] of [
      ['base_model', 'string'],
      ['rs_lora', 'boolean'],
      ['dora', 'boolean'],
      ['dropout', 'number'],
    ] as const) {
      if (typeof a[k] !== kind) throw corrupt(file, `adapter.${k} is ${shownValue(a[k])}, not a ${kind}`);
    }
    const weights = SafetensorsFile.open(path.join(dir, 'trainable.safetensors'));
    try {
      const modules = new Map<string, LoraModule>();
      for (const m of entries) {
        const name = m['module'];
        if (typeof name !== 'string' || name === '')
          throw corrupt(file, `adapter module name ${shownValue(name)} is not a name`);
        modules.set(name, {
          rank: m['rank'] as number,
          alpha: m['alpha'] as number,
          inFeatures: m['in_features'] as number,
          outFeatures: m['out_features'] as number,
          A: weights.readF32(`${name}.lora_A`),
          B: weights.readF32(`${name}.lora_B`),
          ...(a['dora'] === true ? { magnitude: weights.readF32(`${name}.lora_magnitude`) } : {}),
        });
      }
      const data: LoraAdapterData = {
        baseModel: a['base_model'] as string,
        rsLora: a['rs_lora'] as boolean,
        dora: a['dora'] as boolean,
        dropout: a['dropout'] as number,
        targetModules: [...new Set([...modules.keys()].map((m) => m.split('.').pop()!))],
        modules,
      };
      try {
        validateAdapter(data); // ranks, alphas and tensor sizes agree
      } catch (e) {
        throw e instanceof QtuneError ? corrupt(file, e.problem) : e;
      }
      return data;
    } finally {
      weights.close();
    }
  }

  /** The trained LoRA/DoRA tensors on the host, in the form the PEFT and GGUF writers take. */
  adapterWeights(): LoraAdapterData {
    if (this.lora === null)
      throw new ConfigError(`train_type ${this.trainType.name} trains no adapter`, {
        hint: 'save the model instead (full and llama_pro train the model itself)',
      });
    const modules = new Map<string, LoraModule>();
    for (const [name, m] of this.lora.toHost()) {
      modules.set(name, {
        rank: m.info.rank,
        alpha: m.info.alpha,
        inFeatures: m.info.inFeatures,
        outFeatures: m.info.outFeatures,
        A: m.A,
        B: m.B,
        ...(m.magnitude === undefined ? {} : { magnitude: m.magnitude }),
      });
    }
    const o = this.lora.options;
    return {
      baseModel: this.source,
      rsLora: o.rsLora,
      dora: o.dora,
      dropout: o.dropout,
      targetModules: [...new Set([...modules.keys()].map((m) => m.split('.').pop()!))],
      modules,
    };
  }

  /**
   * Writes what the run trained into `dir`: LoRA as a PEFT adapter (adapter_model.safetensors,
   * adapter_config.json) and a llama.cpp GGUF adapter (adapter.gguf); DoRA as a PEFT adapter (llama.cpp
   * has no DoRA: merge it with \`qtune merge\`); full and llama_pro as a model folder (dir/model).
   * Returns the paths written.
   */
  saveOutputs(dir: string, o: { dtype?: 'f32' | 'f16' | 'bf16' } = {}): string[] {
    makeFolder(dir, 'output_dir');
    if (this.lora !== null) {
      const data = this.adapterWeights();
      savePeftAdapter(dir, data);
      const written = [path.join(dir, 'adapter_model.safetensors'), path.join(dir, 'adapter_config.json')];
      if (!data.dora) {
        saveGgufLoraAdapter(path.join(dir, 'adapter.gguf'), data, this.model.config);
        written.push(path.join(dir, 'adapter.gguf'));
      }
      return written;
    }
    if (this.tokenizer === null)
      throw new ConfigError('saving a trained model needs its tokenizer; this model was loaded without one');
    return saveModel(this.model, path.join(dir, 'model'), this.tokenizer, { dtype: o.dtype ?? 'f32' });
  }

  /** Every weight of the model with the trained values (full and llama_pro), as f32. */
  modelWeights(): { name: string; shape: number[]; data: Float32Array }[] {
    return llamaWeights(this.model.config).map((w) => {
      const t = this.model.weight(w.name);
      return { name: w.name, shape: w.shape, data: t.store!.read(t) };
    });
  }

  dispose(): void {
    for (const x of [this.accGraph, this.normGraph, this.updateGraph, this.evalGraph]) x?.g.dispose();
    this.accGraph = this.normGraph = this.updateGraph = this.evalGraph = null;
    this.optimizer.dispose();
    this.grads.dispose();
    this.lora?.dispose();
    this.frozen?.dispose();
    this.frozen = null;
    this.disposeModel();
  }
}
