/**
 * The parts a {@link Trainer} is made of, built from its options in the order their checks must run
 * (settings, data, steps, memory, adapters, optimizer, graphs): a bad option is refused before
 * anything is allocated, and whatever was made before an error is freed with it.
 */
import { ConfigError } from '../errors.js';
import { GradScaler } from '../optim/grad-scaler.js';
import { createOptimizer, type Optimizer } from '../optim/optimizer.js';
import { createSchedule, type Schedule } from '../optim/schedule.js';
import type { Tensor } from '../tensor/tensor.js';
import { Batches } from '../data/batches.js';
import type { TrainData } from '../data/example.js';
import { dataFingerprint, type DataFingerprint } from '../data/fingerprint.js';
import { runIdentity, type RunSetup } from './checkpoint.js';
import { LoraLayers } from '../peft/lora.js';
import type { StepShape } from './memory.js';
import { resolveSettings, totalSteps, type Settings, type TrainerOptions } from './options.js';
import { GradientAllReduce } from './parallel.js';
import { checkStepMemory, computeDType, type PreparedModel } from './prepare.js';
import { createStepProfiler, type StepProfiler } from './profile.js';
import { EvalSamples } from './samples.js';
import { TrainStep } from './step.js';
import { checkObjectiveOptions, sequencesPerExample } from './objective.js';

export interface TrainerParts {
  settings: Settings;
  scaler: GradScaler;
  batches: Batches;
  totalSteps: number;
  profiler: StepProfiler | null;
  lora: LoraLayers | null;
  params: readonly Tensor[];
  optimizer: Optimizer;
  schedule: Schedule;
  graphs: TrainStep;
  /** Sequences per graph run: the micro-batch size × the objective's sequences per example. */
  rows: number;
  allReduce: GradientAllReduce;
  /** What checkpoints are written from and checked against. */
  run: RunSetup;
  /** The evalPrompts' generations, or null. */
  samples: EvalSamples | null;
}

/** Builds a trainer's parts over `prepared`; on an error, frees what was made and the model. */
export function assembleTrainer(prepared: PreparedModel, data: TrainData, o: TrainerOptions): TrainerParts {
  const { model, trainType } = prepared;
  const comm = o.comm ?? null;
  let lora: LoraLayers | null = null;
  let optimizer: Optimizer | null = null;
  let fingerprint: DataFingerprint | undefined;
  try {
    checkObjectiveOptions(o); // before anything is allocated
    const s = resolveSettings(prepared, o);
    const rows = s.microBatchSize * sequencesPerExample(o.objective, o.grpo);
    const scaler = GradScaler.create(s.precision === 'fp16' || s.precision === 'fp16_autocast', o.lossScale);
    const batches = new Batches(data, {
      ...s,
      vocabSize: model.config.vocab_size,
      rank: comm?.rank ?? 0,
      size: comm?.size ?? 1,
      collateRows: rows,
    });
    const total = totalSteps(o, s, data.train.length);
    const samples = EvalSamples.create(model, prepared.tokenizer, { ...o, seed: s.seed });
    const profiler =
      o.profile === undefined || o.profile === false ? null : createStepProfiler(o.profile, total);
    const shape: StepShape = {
      batchSize: rows, // the graphs' batch (a rank's share under data parallelism)
      seqLen: batches.seqLen,
      gradientAccumulationSteps: s.accumulation,
      gradientCheckpointing: s.gradientCheckpointing,
      quantized: trainType.quantization !== null,
      crossEntropyChunk: s.crossEntropyChunk,
    };
    checkStepMemory(model, shape);
    const dora = trainType.adapter === 'dora';
    if (trainType.adapter === 'lora' || dora)
      lora = LoraLayers.create(model, { rank: 8, alpha: 16, ...o.lora, dora, seed: s.seed });
    const params = lora?.params() ?? model.tensors().filter((t) => t.requiresGrad);
    if (params.length === 0)
      throw new ConfigError(`train_type: ${trainType.name} leaves nothing to train in this model`);
    optimizer = createOptimizer(model.backend, params, {
      name: 'adamw',
      lr: 2e-4,
      weight_decay: 0,
      ...o.optimizer,
    });
    const schedule = createSchedule({
      name: 'constant',
      ...o.schedule,
      lr: optimizer.lr,
      total_steps: total,
    });
    const graphs = new TrainStep({
      model,
      params,
      optimizer,
      lora,
      dora,
      shape,
      packed: batches.packed,
      computeDType: computeDType(s.precision),
      frozenCopies: o.frozenWeightCopies ?? 'auto',
      quantComputeDType: o.quantComputeDType ?? 'auto',
      profiler,
    });
    const run: RunSetup = {
      identity: runIdentity(model.config, trainType, params),
      seed: s.seed,
      batchSize: s.batchSize,
      accumulation: s.accumulation,
      precision: s.precision,
      source: prepared.source,
      lora,
      params,
      optimizer,
      schedule,
      totalSteps: total,
      scaler,
      settings: {
        max_grad_norm: s.maxGradNorm,
        context_length: batches.seqLen,
        padding: s.padding,
        group_by_length: s.groupByLength,
      },
      data: () => (fingerprint ??= dataFingerprint(data.train, data.source)),
    };
    const allReduce = new GradientAllReduce(comm, graphs.grads);
    return {
      settings: s,
      scaler,
      batches,
      totalSteps: total,
      profiler,
      lora,
      params,
      optimizer,
      schedule,
      graphs,
      rows,
      allReduce,
      run,
      samples,
    };
  } catch (e) {
    optimizer?.dispose();
    lora?.dispose();
    prepared.dispose();
    throw e;
  }
}
