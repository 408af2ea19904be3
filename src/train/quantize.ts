/**
 * The quantizer: quantizes a model's linear weights in place, one decoder block at a time
 * (the full-precision and the quantized model never exist whole at once), makes drop-in quantized
 * linear layers, prepares a quantized model for adapter training, and saves and loads GGUF.
 *
 * It reads a LlamaModel's weight table, saves through writeLlamaGguf and loads through loadModel, so
 * it sits above both models/ and quant/ (DESIGN.md §4: models never import quant, and quant does not
 * import models); the quantized layers themselves are src/quant/linear.ts.
 *
 * @example
 * const q = createQuantizer(backend, { method: 'nf4' });
 * const report = q.quantizeModel(model);
 * q.prepareForTraining(model);
 * q.save(model, tokenizer, 'model-nf4.gguf');
 */
import type { Backend } from '../engine/device.js';
import type { DType } from '../engine/dtype.js';
import { QtuneError, ShapeError } from '../errors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { writeLlamaGguf } from '../models/llama-gguf.js';
import { llamaWeights, weightGroup, type LlamaModel } from '../models/llama.js';
import { loadModel, type LoadedModel, type LoadOptions } from '../models/load.js';
import { modulePlan, validateQuantizationConfig, type QuantizationConfig } from '../quant/config.js';
import { QuantizedLinear, quantizeValues } from '../quant/linear.js';
import type { QuantMethod } from '../quant/methods.js';
import { blockSize } from '../tensor/host.js';
import { TensorStore, type TensorSpec } from '../tensor/store.js';

export interface QuantizeReport {
  quantized: { name: string; method: QuantMethod; dtype: DType }[];
  /** Weights left as they were, with the reason. */
  kept: { name: string; reason: string }[];
  bytesBefore: number;
  bytesAfter: number;
}

export interface Quantizer {
  readonly backend: Backend;
  readonly config: QuantizationConfig;
  /**
   * `onGroup` is called once per block, when its quantized copy exists beside the original and just
   * before the original is freed (the moment of peak memory).
   */
  quantizeModel(model: LlamaModel, options?: { onGroup?: (group: string) => void }): QuantizeReport;
  createQuantizedLinear(
    weight: Float32Array,
    shape: readonly [number, number],
    options?: { bias?: Float32Array; module?: string },
  ): QuantizedLinear;
  prepareForTraining(model: LlamaModel): { frozen: string[] };
  save(model: LlamaModel, tokenizer: Tokenizer, file: string): void;
  load(file: string, options?: Omit<LoadOptions, 'backend'>): Promise<LoadedModel>;
}

export function createQuantizer(backend: Backend, config: QuantizationConfig): Quantizer {
  const problems = validateQuantizationConfig(config);
  if (problems.length > 0) {
    throw new QtuneError(
      'INVALID_ARGUMENT',
      `quantization config: ${problems.map((p) => `${p.field}: ${p.message}`).join('; ')}`,
    );
  }
  return {
    backend,
    config,

    quantizeModel(model, options = {}) {
      if (!model.backends.includes(backend))
        throw new QtuneError(
          'INVALID_ARGUMENT',
          `the model lives on ${model.backends.map((b) => b.name).join(', ')}, the quantizer quantizes on ${backend.name}`,
        );
      const report: QuantizeReport = { quantized: [], kept: [], bytesBefore: model.bytes, bytesAfter: 0 };
      const specs = llamaWeights(model.config);
      const groups = [...new Set(specs.map((w) => weightGroup(w.name)))];
      for (const group of groups) {
        const old = model.group(group);
        const plans = old.tensors.map((t) => {
          const spec = specs.find((w) => w.name === t.name)!;
          if (spec.role === 'norm' || spec.role === 'bias') return { t, plan: null };
          const plan = modulePlan(config, t.name.replace(/\.weight$/, ''));
          if (plan === null) {
            report.kept.push({ name: t.name, reason: 'skipped by the config' });
            return { t, plan: null };
          }
          if (t.shape[1]! % blockSize(plan.dtype) !== 0) {
            report.kept.push({
              name: t.name,
              reason: `rows of ${t.shape[1]} are not whole ${plan.dtype} blocks of ${blockSize(plan.dtype)}`,
            });
            return { t, plan: null };
          }
          return { t, plan };
        });
        if (plans.every(({ plan }) => plan === null)) continue; // nothing to quantize: leave the block as it is
        // each block is quantized where it lives (a split model keeps its device map)
        const store = TensorStore.create(
          old.backend,
          plans.map(({ t, plan }) => ({ name: t.name, shape: t.shape, dtype: plan?.dtype ?? t.dtype })),
        );
        try {
          for (const { t, plan } of plans) {
            if (plan === null) store.write(store.get(t.name), old.readBytes(t));
            else {
              store.write(
                store.get(t.name),
                quantizeValues(t.read(), t.shape as [number, number], plan.method, plan.dtype),
              );
              report.quantized.push({ name: t.name, method: plan.method, dtype: plan.dtype });
            }
          }
        } catch (e) {
          store.dispose();
          throw e;
        }
        options.onGroup?.(group); // the high-water mark: this block exists twice, nothing else does
        model.replaceGroup(group, store);
      }
      report.bytesAfter = model.bytes;
      return report;
    },

    createQuantizedLinear(weight, shape, options = {}) {
      const plan = modulePlan(config, options.module ?? 'linear');
      if (weight.length !== shape[0] * shape[1])
        throw new ShapeError(`createQuantizedLinear: ${weight.length} values for [${shape.join(', ')}]`);
      const dtype = plan?.dtype ?? 'f32';
      const specs: TensorSpec[] = [{ name: 'weight', shape, dtype }];
      if (options.bias !== undefined) specs.push({ name: 'bias', shape: [shape[0]], dtype: 'f32' });
      const store = TensorStore.create(backend, specs);
      try {
        store.write(
          store.get('weight'),
          plan === null ? weight : quantizeValues(weight, shape, plan.method, plan.dtype),
        );
        if (options.bias !== undefined) store.write(store.get('bias'), options.bias);
      } catch (e) {
        store.dispose();
        throw e;
      }
      return new QuantizedLinear(store);
    },

    prepareForTraining(model) {
      const frozen: string[] = [];
      for (const t of model.tensors()) {
        if (t.requiresGrad)
          throw new QtuneError('INVALID_ARGUMENT', `${t.name} is trainable; a quantized base must be frozen`);
        const spec = llamaWeights(model.config).find((w) => w.name === t.name)!;
        if ((spec.role === 'norm' || spec.role === 'bias') && t.dtype !== 'f32') {
          throw new QtuneError('INVALID_ARGUMENT', `${t.name} is ${t.dtype}; norms and biases stay f32`);
        }
        frozen.push(t.name);
      }
      return { frozen };
    },

    save(model, tokenizer, file) {
      writeLlamaGguf(file, model, tokenizer, { name: `qtune ${config.method}` });
    },

    load(file, options = {}) {
      return loadModel(file, { ...options, backend });
    },
  };
}
