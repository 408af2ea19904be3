/**
 * Running a model with an adapter without changing its weights: the adapter's matrices are uploaded
 * to the model's device, one {@link LoraLinear} per module, and applied through
 * `LlamaModel.forward`'s linear hook, as PEFT's `lora.Linear.forward` computes it (dropout off,
 * inference):
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
import { StoreGroup, type PlacedSpec } from '../tensor/store-group.js';
import { loadGgufLoraAdapter } from './gguf-lora.js';
import { LoraLinear, doraRowScale, loraWeight } from './lora-linear.js';
import { loraScale, validateAdapter, type LoraAdapterData } from './lora-weights.js';
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

export interface AdapterHook {
  /** Pass as `forward(g, ids, { linear: hook })`. */
  hook: LinearHook;
  /** The adapted layers by module name (each applies itself: {@link LoraLinear.apply}). */
  modules: ReadonlyMap<string, LoraLinear>;
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
  const kind = { dora: data.dora, trainable: false };
  const specs: PlacedSpec[] = [];
  for (const [name, m] of data.modules)
    specs.push(...LoraLinear.specs(name, m, model.weight(`${name}.weight`).backend, kind));
  const store = StoreGroup.create(specs);
  const write = (name: string, values: Float32Array) => {
    const t = store.get(name);
    t.store!.write(t, values);
  };
  const modules = new Map<string, LoraLinear>();
  try {
    for (const [name, m] of data.modules) {
      const s = loraScale(m, data.rsLora);
      modules.set(name, LoraLinear.fromStore(store, name, m, s, kind));
      write(`${name}.lora_A`, m.A);
      write(`${name}.lora_B`, m.B);
      if (data.dora) {
        const v = loraWeight(model.weight(`${name}.weight`).read(), m, s); // (out, in)
        write(`${name}.dora_scale`, doraRowScale(v, m.magnitude!, m.inFeatures));
      }
    }
  } catch (e) {
    store.dispose();
    throw e;
  }
  const hook: LinearHook = (module, x, w) => modules.get(module)?.apply(x, w) ?? null;
  return { hook, modules, store, dispose: () => store.dispose() };
}
