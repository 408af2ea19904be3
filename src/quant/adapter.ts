/**
 * The quantization adapter: quantizes a model's linear weights in place, one decoder block at a time
 * (the full-precision and the quantized model never exist whole at once), makes drop-in quantized
 * linear layers, prepares a quantized model for adapter training, and saves and loads GGUF.
 *
 * @example
 * const q = createQuantizationAdapter(backend, { method: 'nf4' });
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
import { blockSize, encode } from '../tensor/host.js';
import { add } from '../tensor/ops/elementwise.js';
import { linear } from '../tensor/ops/matmul.js';
import { TensorStore, type TensorSpec } from '../tensor/store.js';
import type { Tensor } from '../tensor/tensor.js';
import { modulePlan, validateQuantizationConfig, type QuantizationConfig } from './config.js';
import { hqqQuantize } from './hqq.js';
import { METHODS, type QuantMethod } from './methods.js';

/** Quantized bytes of a `[rows, cols]` weight by a method (HQQ through its solver, the rest through ggml). */
export function quantizeValues(
  values: Float32Array,
  shape: readonly [number, number],
  method: QuantMethod,
  dtype: DType,
): Uint8Array {
  if (method === 'hqq') return hqqQuantize(values, shape[1], { bits: dtype === 'q5_1' ? 5 : 4 });
  return encode(dtype, values, shape);
}

export interface QuantizeReport {
  quantized: { name: string; method: QuantMethod; dtype: DType }[];
  /** Weights left as they were, with the reason. */
  kept: { name: string; reason: string }[];
  bytesBefore: number;
  bytesAfter: number;
}

/** A drop-in linear layer over a quantized weight: `forward(x)` is `x @ Wᵀ (+ b)`. */
export class QuantizedLinear {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  private readonly store: TensorStore;

  constructor(store: TensorStore) {
    this.store = store;
    this.weight = store.get('weight');
    this.bias = store.has('bias') ? store.get('bias') : null;
  }

  forward(x: Tensor): Tensor {
    const y = linear(x, this.weight);
    return this.bias === null ? y : add(y, this.bias);
  }

  dispose(): void {
    this.store.dispose();
  }
}

export interface QuantizationAdapter {
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

export function createQuantizationAdapter(backend: Backend, config: QuantizationConfig): QuantizationAdapter {
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
          `the model lives on ${model.backends.map((b) => b.name).join(', ')}, the adapter quantizes on ${backend.name}`,
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

const F16_TO_INT8 = 34 / 64; // q8_0: 34 bytes per 32 weights, f16: 64

/**
 * The seed system's rule: quantize when the memory is below 1.2 × the model's f16 size, to 4 bits when
 * it is also below 1.5 × the int8 size. `nf4` when the backend trains through iq4_nl, else `int4`.
 */
export function recommendQuantization(
  f16Bytes: number,
  memoryBytes: number,
  trainQuantTypes: readonly DType[] = ['iq4_nl'],
): { method: QuantMethod; bits: number; reason: string } {
  const gb = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (memoryBytes >= 1.2 * f16Bytes) {
    return { method: 'none', bits: 16, reason: `${gb(memoryBytes)} ≥ 1.2 × the f16 model (${gb(f16Bytes)})` };
  }
  const int8 = f16Bytes * F16_TO_INT8;
  if (memoryBytes >= 1.5 * int8) {
    return {
      method: 'int8',
      bits: 8,
      reason: `${gb(memoryBytes)} < 1.2 × f16 (${gb(f16Bytes)}) but ≥ 1.5 × int8 (${gb(int8)})`,
    };
  }
  const method: QuantMethod = trainQuantTypes.includes('iq4_nl') ? 'nf4' : 'int4';
  return {
    method,
    bits: METHODS[method].defaultBits,
    reason: `${gb(memoryBytes)} < 1.5 × the int8 model (${gb(int8)})`,
  };
}
