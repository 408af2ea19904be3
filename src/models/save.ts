/**
 * Saving a model: a Hugging Face folder (config.json, model.safetensors, tokenizer files,
 * generation_config.json; the folder appears whole, by rename) or a GGUF file (through
 * {@link writeLlamaGguf}). What `qtune merge` and the trainer's full-model output write.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, rmdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { QtuneError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { configToJson } from './config.js';
import { writeLlamaGguf } from './llama-gguf.js';
import type { LlamaModel } from './llama.js';

export type SaveDType = 'f32' | 'f16' | 'bf16';
export type SaveFormat = 'safetensors' | 'gguf';

export interface SaveModelOptions {
  /** Storage type of the weights (default f32). GGUF keeps norms in f32, as llama.cpp expects. */
  dtype?: SaveDType;
  /** Default: `gguf` when `out` ends with `.gguf`, else `safetensors`. */
  format?: SaveFormat;
  /** GGUF `general.name`. */
  name?: string;
}

const TORCH_DTYPE: Record<SaveDType, string> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };
const ST_DTYPE = { f32: 'F32', f16: 'F16', bf16: 'BF16' } as const;

/**
 * Saves a model: a Hugging Face folder at `out` (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json, generation_config.json) written into a temporary folder beside it and
 * renamed into place, or a GGUF file at `out` (atomic). `out` must not exist yet (an empty folder is
 * fine). Returns the files written.
 *
 * @example
 * saveModel(model, 'merged', tokenizer, { dtype: 'f16' });            // HF folder
 * saveModel(model, 'merged.gguf', tokenizer, { format: 'gguf' });    // llama.cpp model
 */
export function saveModel(
  model: LlamaModel,
  out: string,
  tokenizer: Tokenizer,
  o: SaveModelOptions = {},
): string[] {
  const dtype = o.dtype ?? 'f32';
  if (!(dtype in TORCH_DTYPE))
    throw new QtuneError('INVALID_ARGUMENT', `dtype ${dtype} is not one of f32, f16, bf16`, {
      details: { field: 'dtype', value: dtype },
    });
  const format = o.format ?? (out.endsWith('.gguf') ? 'gguf' : 'safetensors');
  if (format !== 'gguf' && format !== 'safetensors')
    throw new QtuneError('INVALID_ARGUMENT', `format ${String(format)} is not safetensors or gguf`, {
      details: { field: 'format', value: format },
    });
  const occupied = existsSync(out) && (statSync(out).isFile() || readdirSync(out).length > 0);
  if (occupied)
    throw new QtuneError('INVALID_ARGUMENT', `${out} already exists`, {
      hint: 'choose a new output path, or remove the old one first',
      details: { field: 'out', value: out },
    });
  if (format === 'gguf') {
    if (!out.endsWith('.gguf'))
      throw new QtuneError('INVALID_ARGUMENT', `a GGUF model is one file: ${out} must end with .gguf`, {
        details: { field: 'out', value: out },
      });
    writeLlamaGguf(out, model, tokenizer, { dtype, ...(o.name === undefined ? {} : { name: o.name }) });
    return [out];
  }

  const tmp = `${out.replace(/[\\/]+$/, '')}.tmp-${process.pid}-${Date.now()}`;
  mkdirSync(tmp, { recursive: true });
  try {
    const tensors: TensorToWrite[] = model.tensors().map((t) => ({
      name: t.name,
      shape: t.shape,
      data: t.read(),
      dtype: ST_DTYPE[dtype],
    }));
    writeSafetensors(path.join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    const config = { ...model.config, torch_dtype: TORCH_DTYPE[dtype] };
    writeFileAtomic(path.join(tmp, 'config.json'), [JSON.stringify(configToJson(config), null, 2) + '\n']);
    writeFileAtomic(path.join(tmp, 'tokenizer.json'), [JSON.stringify(tokenizer.json)]);
    const tokConfig = { ...tokenizer.config };
    if (tokenizer.hasOwnChatTemplate) tokConfig['chat_template'] = tokenizer.chatTemplate;
    writeFileAtomic(path.join(tmp, 'tokenizer_config.json'), [JSON.stringify(tokConfig, null, 2) + '\n']);
    const c = model.config;
    const gen: Record<string, unknown> = {};
    if (c.bos_token_id !== null) gen['bos_token_id'] = c.bos_token_id;
    if (c.eos_token_id.length > 0)
      gen['eos_token_id'] = c.eos_token_id.length === 1 ? c.eos_token_id[0] : c.eos_token_id;
    writeFileAtomic(path.join(tmp, 'generation_config.json'), [JSON.stringify(gen, null, 2) + '\n']);
    if (existsSync(out)) rmdirSync(out); // empty (checked above)
    renameSync(tmp, out);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return [
    'config.json',
    'model.safetensors',
    'tokenizer.json',
    'tokenizer_config.json',
    'generation_config.json',
  ].map((f) => path.join(out, f));
}
