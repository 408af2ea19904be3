/**
 * Merging an adapter into a model's weights (`saveModel` in models/save.ts writes the result).
 *
 *   LoRA:  W' = W + s·B·A
 *   DoRA:  W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖        (norm of each output row, PEFT's weight_norm over dim 1)
 *
 * with `s = alpha/rank` (`alpha/√rank` with rsLoRA), as PEFT's `merge_and_unload`: {@link fuseLora},
 * what `LoraLinear.fuse` computes. The result is computed on the host (f64 accumulation per row) from
 * the weight's f32 values and written back in the weight's storage type; quantized weights are
 * refused (merging into them would requantize).
 *
 * @example
 * const { model, tokenizer } = await loadModel('TinyLlama', { backend: 'cpu', dtype: 'f32' });
 * mergeAdapter(model, loadPeftAdapter('runs/lora-1'));
 * saveModel(model, 'merged', tokenizer, { dtype: 'bf16' });
 */
import { isQuantDType } from '../engine/dtype.js';
import { QtuneError } from '../errors.js';
import type { LlamaModel } from '../models/llama.js';
import { checkAdapterFitsModel } from './apply.js';
import { fuseLora } from './lora-linear.js';
import { loraScale, type LoraAdapterData } from './lora-weights.js';

export interface MergeReport {
  /** The weights that changed, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  merged: string[];
}

/**
 * Fuses an adapter into the model's weights, in place. Every adapted weight must be a float type
 * (f32, f16, bf16; f32 keeps the merge exact): a quantized weight gets a {@link QtuneError}
 * `DTYPE` telling to load the base in f32. Modules are checked against the model first, so a
 * mismatch leaves the model untouched.
 *
 * @example
 * const report = mergeAdapter(model, loadPeftAdapter('runs/dora-1'));
 * console.log(report.merged.length);
 */
export function mergeAdapter(model: LlamaModel, data: LoraAdapterData): MergeReport {
  checkAdapterFitsModel(model, data);
  for (const name of data.modules.keys()) {
    const t = model.weight(`${name}.weight`);
    if (isQuantDType(t.dtype))
      throw new QtuneError('DTYPE', `cannot merge into ${t.name}: it is quantized (${t.dtype})`, {
        hint: "load the base model in f32 (loadModel(..., { dtype: 'f32' })) and merge, then quantize the result",
        details: { field: t.name, value: t.dtype },
      });
  }
  const merged: string[] = [];
  for (const [name, m] of data.modules) {
    const t = model.weight(`${name}.weight`);
    model.write(t.name, fuseLora(t.read(), m, loraScale(m, data.rsLora), data.dora)); // (out, in)
    merged.push(t.name);
  }
  return { merged };
}
