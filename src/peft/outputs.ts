/**
 * What a run leaves behind: LoRA as a PEFT adapter (adapter_model.safetensors, adapter_config.json)
 * and a llama.cpp GGUF adapter (adapter.gguf); DoRA as a PEFT adapter (llama.cpp has no DoRA: merge
 * it with `qtune merge`); full and llama_pro as a model folder (dir/model). With `mlx: true`, LoRA and
 * DoRA also as an mlx-lm adapter in dir/mlx (adapters.safetensors, adapter_config.json).
 *
 * @example
 * saveTrainedOutputs('out', { model, tokenizer, lora, source: 'tiny-model' });
 */
import path from 'node:path';
import { saveGgufLoraAdapter } from './gguf-lora.js';
import { checkAdapterDType, type AdapterDType, type LoraAdapterData } from './lora-weights.js';
import { MLX_CONFIG_FILE, MLX_WEIGHTS_FILE, saveMlxAdapter } from './mlx-lora.js';
import { savePeftAdapter } from './peft.js';
import { ConfigError } from '../errors.js';
import { makeFolder } from '../io/folders.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { LlamaModel } from '../models/llama.js';
import { saveModel } from '../models/save.js';
import type { LoraLayers } from './lora.js';

/**
 * The trained LoRA/DoRA tensors on the host, in the form the PEFT and GGUF writers take; a run of
 * train type `trainType` without an adapter (full, llama_pro) gets a ConfigError.
 */
export function adapterData(lora: LoraLayers | null, baseModel: string, trainType = 'full'): LoraAdapterData {
  if (lora === null)
    throw new ConfigError(`train_type ${trainType} trains no adapter`, {
      hint: 'save the model instead (full and llama_pro train the model itself)',
    });
  return lora.adapterData(baseModel);
}

/**
 * How {@link saveTrainedOutputs} writes: the dtype of a saved model, of a saved adapter (PEFT and
 * GGUF; default f32 both), and whether to add the mlx-lm adapter.
 */
export interface SaveOutputsOptions {
  dtype?: 'f32' | 'f16' | 'bf16';
  adapterDType?: AdapterDType;
  /** Also write the adapter for mlx-lm into `dir/mlx` (LoRA and DoRA only). */
  mlx?: boolean;
}

/** Writes what a run trained into `dir` (see the file's comment). Returns the paths written. */
export function saveTrainedOutputs(
  dir: string,
  run: { model: LlamaModel; tokenizer: Tokenizer | null; lora: LoraLayers | null; source: string },
  o: SaveOutputsOptions = {},
): string[] {
  const adapterDType = checkAdapterDType(o.adapterDType ?? 'f32');
  if (o.mlx === true && run.lora === null)
    throw new ConfigError('mlx_adapter: this run trains no adapter, so there is no mlx-lm adapter to write', {
      hint: 'drop mlx_adapter for train_type full and llama_pro (they save the model itself)',
      details: { field: 'mlx_adapter', value: true },
    });
  makeFolder(dir, 'output_dir');
  if (run.lora !== null) {
    const data = adapterData(run.lora, run.source);
    savePeftAdapter(dir, data, { dtype: adapterDType });
    const written = [path.join(dir, 'adapter_model.safetensors'), path.join(dir, 'adapter_config.json')];
    if (!data.dora) {
      saveGgufLoraAdapter(path.join(dir, 'adapter.gguf'), data, run.model.config, { dtype: adapterDType });
      written.push(path.join(dir, 'adapter.gguf'));
    }
    if (o.mlx === true) {
      const mlxDir = path.join(dir, 'mlx');
      saveMlxAdapter(mlxDir, data, run.model.config);
      written.push(path.join(mlxDir, MLX_WEIGHTS_FILE), path.join(mlxDir, MLX_CONFIG_FILE));
    }
    return written;
  }
  if (run.tokenizer === null)
    throw new ConfigError('saving a trained model needs its tokenizer; this model was loaded without one');
  return saveModel(run.model, path.join(dir, 'model'), run.tokenizer, { dtype: o.dtype ?? 'f32' });
}
