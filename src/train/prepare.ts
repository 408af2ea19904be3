/**
 * Model preparation: loading a model for a train type and precision. Trainable weights are f32
 * (master weights); the frozen base is stored in the precision's type, and quantized as it is read
 * when the train type says so (qlora and its kin), so that the f32 model never exists whole.
 *
 * @example
 * const prepared = await prepareModel('tiny-model', { trainType: 'qlora' });
 * const trainer = new Trainer(prepared, data, { maxSteps: 100 });
 */
import { existsSync, statSync } from 'node:fs';
import type { Backend } from '../engine/device.js';
import type { DType, FloatDType } from '../engine/dtype.js';
import { availableMemory } from '../engine/memory.js';
import { ConfigError, QtuneError } from '../errors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { LlamaModel } from '../models/llama.js';
import { loadModel, loadWeights, readConfig, type DeviceRequest, type LoadOptions } from '../models/load.js';
import { methodDType } from '../quant/methods.js';
import { readExpansion, type Expansion } from '../peft/expand.js';
import { stepActivationsLowerBound, stepMemoryError, type StepShape } from './memory.js';
import { createQuantizer } from './quantize.js';
import { resolveTrainType, type ResolvedTrainType } from './train-type.js';

export type Precision = 'fp32' | 'bf16' | 'fp16' | 'bf16_autocast' | 'fp16_autocast';
export const PRECISIONS: readonly Precision[] = ['fp32', 'bf16', 'fp16', 'bf16_autocast', 'fp16_autocast'];

/** Storage type of frozen float weights for a precision. */
function frozenDType(p: Precision): FloatDType {
  return p === 'bf16' ? 'bf16' : p === 'fp16' ? 'f16' : 'f32';
}

/** Matmul type of the low-precision modes (weights cast in the graph), or null. */
export function computeDType(p: Precision): FloatDType | null {
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
  /** The precision the frozen base was loaded for (the trainer trains in it). */
  precision: Precision;
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
  const quantizer = createQuantizer(model.backend, {
    method: trainType.quantization,
    skipModules: [
      'lm_head',
      'model.embed_tokens',
      ...(expansion?.newLayers.map((i) => `model.layers.${i}.*`) ?? []),
    ],
  });
  quantizer.quantizeModel(model);
}

export function checkPrecision(precision: string): Precision {
  if (!PRECISIONS.includes(precision as Precision))
    throw new ConfigError(`precision: "${precision}" is not a precision`, {
      hint: `use one of ${PRECISIONS.join(', ')}`,
    });
  return precision as Precision;
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
  precision: Precision;
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
  return { trainType, precision, expansion, onLoad, options };
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
  const { trainType, precision, expansion } = plan;
  return { source, model, tokenizer, trainType, precision, expansion, dispose };
}
