/**
 * Running a model with an adapter without changing its weights: the adapter's matrices are uploaded
 * to the model's device and applied through `LlamaModel.forward`'s linear hook, as PEFT's
 * `lora.Linear.forward` computes it (dropout off, inference):
 *
 *   LoRA:  y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ
 *   DoRA:  y = (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) ⊙ m / ‖W + s·B·A‖      (norm of each output row, computed once)
 *
 * Also {@link loadAdapter}, which reads a PEFT folder or a llama.cpp LoRA GGUF.
 *
 * @example
 * const adapter = createAdapterHook(model, loadAdapter('runs/lora-1', model.config));
 * const logits = model.forward(g, ids, { linear: adapter.hook });
 * // ... compute, then
 * adapter.dispose();
 */
import { existsSync, statSync } from 'node:fs';
import { ConfigError, QtuneError, ShapeError, fmtShape } from '../errors.js';
import type { LlamaConfig } from '../models/config.js';
import type { LinearHook, LlamaModel } from '../models/llama.js';
import { add, mul, scale } from '../tensor/ops/elementwise.js';
import { linear } from '../tensor/ops/matmul.js';
import { StoreGroup, type PlacedSpec } from '../tensor/store-group.js';
import { loadGgufLoraAdapter } from './gguf-lora.js';
import { loraScale, validateAdapter, type LoraAdapterData, type LoraModule } from './lora-weights.js';
import { loadPeftAdapter } from './peft.js';

/**
 * Reads an adapter: a folder is a PEFT adapter ({@link loadPeftAdapter}), a `.gguf` file a llama.cpp
 * LoRA adapter ({@link loadGgufLoraAdapter}, which needs the base model's config).
 *
 * @example
 * const data = loadAdapter('lora.gguf', model.config);
 */
export function loadAdapter(location: string, modelConfig: LlamaConfig): LoraAdapterData {
  if (!existsSync(location))
    throw new QtuneError('NOT_FOUND', `adapter ${location} does not exist`, {
      hint: 'give a PEFT adapter folder or a LoRA .gguf file',
    });
  if (statSync(location).isDirectory()) return loadPeftAdapter(location);
  if (location.endsWith('.gguf')) return loadGgufLoraAdapter(location, modelConfig);
  throw new QtuneError('INVALID_ARGUMENT', `adapter ${location} is a file but not .gguf`, {
    hint: 'give a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or a LoRA .gguf file',
  });
}

/**
 * Checks that every module of the adapter is a linear weight of the model with the adapter's shape.
 * Throws {@link ConfigError} naming the first module that does not fit.
 */
export function checkAdapterFitsModel(model: LlamaModel, data: LoraAdapterData): void {
  validateAdapter(data);
  const linear = new Set(model.linearModules());
  for (const [name, m] of data.modules) {
    const weight = `${name}.weight`;
    if (!linear.has(name))
      throw new ConfigError(`adapter module ${name} is not a linear layer of this model`, {
        hint: 'the adapter was trained for another base model, or targets modules qtune does not adapt',
        details: { module: name },
      });
    const shape = model.weight(weight).shape;
    if (shape[0] !== m.outFeatures || shape[1] !== m.inFeatures)
      throw new ShapeError(
        `adapter module ${name} is ${m.outFeatures}×${m.inFeatures} but the model's ${weight} is ${fmtShape(shape)}`,
        {
          hint: 'the adapter was trained for another base model',
          details: { module: name, value: [m.outFeatures, m.inFeatures] },
        },
      );
  }
}

/** `W + s·B·A` as f32 `[out, in]`, accumulated in f64 per row. */
export function loraDelta(w: Float32Array, m: LoraModule, s: number): Float32Array {
  const { rank: r, inFeatures: nIn, outFeatures: nOut, A, B } = m;
  const out = new Float32Array(nOut * nIn);
  const row = new Float64Array(nIn);
  for (let o = 0; o < nOut; o++) {
    for (let i = 0; i < nIn; i++) row[i] = 0;
    for (let k = 0; k < r; k++) {
      const b = B[o * r + k]!;
      if (b === 0) continue;
      const base = k * nIn;
      for (let i = 0; i < nIn; i++) row[i]! += b * A[base + i]!;
    }
    const wo = o * nIn;
    for (let i = 0; i < nIn; i++) out[wo + i] = w[wo + i]! + s * row[i]!;
  }
  return out;
}

/** DoRA's `m / ‖V‖` for each output row of `V` `[out, in]` (PEFT: weight_norm over dim 1). */
export function doraRowScale(v: Float32Array, magnitude: Float32Array, nIn: number): Float32Array {
  const nOut = magnitude.length;
  const out = new Float32Array(nOut);
  for (let o = 0; o < nOut; o++) {
    let ss = 0;
    for (let i = o * nIn; i < (o + 1) * nIn; i++) ss += v[i]! * v[i]!;
    const norm = Math.sqrt(ss);
    out[o] = norm === 0 ? 0 : magnitude[o]! / norm;
  }
  return out;
}

export interface AdapterHook {
  /** Pass as `forward(g, ids, { linear: hook })`. */
  hook: LinearHook;
  /**
   * The adapter's tensors (`<module>.lora_A`, `.lora_B`, DoRA `.dora_scale`), each on the device of
   * the weight it adapts.
   */
  store: StoreGroup;
  dispose(): void;
}

/**
 * Uploads an adapter to the model's device and returns the linear hook that applies it. For DoRA the
 * row scales `m/‖W + s·B·A‖` are computed once from the model's current weights.
 *
 * @example
 * const { hook, dispose } = createAdapterHook(model, loadPeftAdapter('runs/dora-1'));
 * const logits = model.forward(g, ids, { linear: hook });
 */
export function createAdapterHook(model: LlamaModel, data: LoraAdapterData): AdapterHook {
  checkAdapterFitsModel(model, data);
  const specs: PlacedSpec[] = [];
  for (const [name, m] of data.modules) {
    const backend = model.weight(`${name}.weight`).backend;
    specs.push({ name: `${name}.lora_A`, shape: [m.rank, m.inFeatures], dtype: 'f32', backend }); // (r, in)
    specs.push({ name: `${name}.lora_B`, shape: [m.outFeatures, m.rank], dtype: 'f32', backend }); // (out, r)
    if (data.dora) specs.push({ name: `${name}.dora_scale`, shape: [m.outFeatures], dtype: 'f32', backend }); // (out)
  }
  const store = StoreGroup.create(specs);
  const write = (name: string, values: Float32Array) => {
    const t = store.get(name);
    t.store!.write(t, values);
  };
  const scales = new Map<string, number>();
  try {
    for (const [name, m] of data.modules) {
      const s = loraScale(m, data.rsLora);
      scales.set(name, s);
      write(`${name}.lora_A`, m.A);
      write(`${name}.lora_B`, m.B);
      if (data.dora) {
        const v = loraDelta(model.weight(`${name}.weight`).read(), m, s);
        write(`${name}.dora_scale`, doraRowScale(v, m.magnitude!, m.inFeatures));
      }
    }
  } catch (e) {
    store.dispose();
    throw e;
  }
  const hook: LinearHook = (module, x, w) => {
    const s = scales.get(module);
    if (s === undefined) return null;
    const y = add(
      linear(x, w),
      scale(linear(linear(x, store.get(`${module}.lora_A`)), store.get(`${module}.lora_B`)), s),
    );
    return data.dora ? mul(y, store.get(`${module}.dora_scale`)) : y;
  };
  return { hook, store, dispose: () => store.dispose() };
}
