/**
 * What the commands that take `--adapter` (generate, chat, eval, merge, export) share:
 *
 * - an adapter is a PEFT folder, a llama.cpp LoRA .gguf, or a training checkpoint-N folder (its
 *   trainable tensors and trainer_state.json are read as the adapter they hold);
 * - its base model, when `--model` is not given, is the one the adapter names
 *   (`base_model_name_or_path`, a checkpoint's `adapter.base_model`, the `qtune.adapter.base_model`
 *   of a LoRA .gguf qtune wrote): a local path as it was saved
 *   (relative to the working directory, or to a folder above the adapter, where the run was started),
 *   or a Hub id;
 * - the prompt format the run trained on, from the run's resolved config ({@link RUN_CONFIG_FILE}).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { QtuneError } from '../errors.js';
import { readGguf } from '../io/gguf.js';
import { isHubId } from '../io/hub.js';
import { loadAdapter } from '../peft/apply.js';
import type { LoraAdapterData } from '../peft/lora-weights.js';
import { PEFT_CONFIG_FILE } from '../peft/peft.js';
import type { LlamaConfig } from '../models/config.js';
import { checkpointAdapter } from '../train/checkpoint.js';
import { UsageError } from './args.js';
import { RUN_CONFIG_FILE } from './run-folder.js';

export { RUN_CONFIG_FILE };

/** How generate/chat turn `--prompt` into the model's input. */
export const PROMPT_FORMATS = ['alpaca', 'chat', 'none'] as const;
export type PromptFormat = (typeof PROMPT_FORMATS)[number];

/**
 * Whether `location` is a qtune checkpoint folder (its trainable tensors) rather than a PEFT folder
 * or an output folder (which has a trainer_state.json of its own beside the adapter).
 */
export function isCheckpointFolder(location: string): boolean {
  return (
    existsSync(location) &&
    statSync(location).isDirectory() &&
    existsSync(path.join(location, 'trainable.safetensors')) &&
    !existsSync(path.join(location, PEFT_CONFIG_FILE))
  );
}

/**
 * The adapter at `location`: a checkpoint-N folder's LoRA/DoRA tensors, a PEFT folder or a LoRA
 * .gguf. A full or llama_pro checkpoint holds no adapter: the ConfigError says which model to pass.
 */
export function readAdapter(location: string, config: LlamaConfig): LoraAdapterData {
  return isCheckpointFolder(location) ? checkpointAdapter(location) : loadAdapter(location, config);
}

/** A JSON object file's field, or undefined when the file or the field is missing or unreadable. */
function jsonField(file: string, read: (o: Record<string, unknown>) => unknown): unknown {
  if (!existsSync(file)) return undefined;
  try {
    const o = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    return o !== null && typeof o === 'object' ? read(o as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The base model an adapter names, and the file that names it; null when it names none. */
export function adapterBaseName(location: string): { base: string; file: string } | null {
  if (!existsSync(location)) return null;
  if (!statSync(location).isDirectory()) {
    // a LoRA .gguf qtune wrote names its base; llama.cpp's converter's do not
    if (!location.endsWith('.gguf')) return null;
    const base = readGguf(location).kv.get('qtune.adapter.base_model')?.value;
    return typeof base === 'string' && base !== '' ? { base, file: location } : null;
  }
  const peft = path.join(location, PEFT_CONFIG_FILE);
  const state = path.join(location, 'trainer_state.json');
  const [file, base] = existsSync(peft)
    ? [peft, jsonField(peft, (o) => o['base_model_name_or_path'])]
    : [state, jsonField(state, (o) => (o['adapter'] as Record<string, unknown> | null)?.['base_model'])];
  return typeof base === 'string' && base !== '' ? { base, file } : null;
}

/**
 * The base model to load for `adapter` when `--model` is not given: the adapter's base as a local
 * path (as saved: from the working directory, else from a folder above the adapter), else as a Hub
 * id. A base that is neither is a UsageError naming it and `--model`.
 */
export function adapterBaseModel(command: string, adapter: string): string {
  const named = adapterBaseName(adapter);
  if (named === null)
    throw new UsageError(
      `${command}: --model is required (the adapter ${adapter} names no base model)`,
      'pass --model PATH|ORG/NAME, the model it was trained on',
    );
  const { base, file } = named;
  if (path.isAbsolute(base)) {
    if (existsSync(base)) return base;
  } else {
    if (existsSync(base)) return base;
    for (let dir = path.resolve(adapter); ; dir = path.dirname(dir)) {
      const candidate = path.join(dir, base);
      if (existsSync(candidate)) return candidate;
      if (path.dirname(dir) === dir) break;
    }
    if (isHubId(base)) return base;
  }
  throw new QtuneError(
    'NOT_FOUND',
    `${command}: the adapter's base model ${base} (named in ${file}) is not found`,
    {
      hint: `pass --model with the path of ${path.basename(base)} or its Hub id`,
      details: { field: 'model', value: base },
    },
  );
}

/** The run config next to an adapter: in its folder, or above a checkpoint-N folder. */
function runConfigFile(adapter: string): string | null {
  if (!existsSync(adapter) || !statSync(adapter).isDirectory()) return null;
  for (const dir of [adapter, path.dirname(adapter)]) {
    const file = path.join(dir, RUN_CONFIG_FILE);
    if (existsSync(file)) return file;
    if (!isCheckpointFolder(adapter)) break;
  }
  return null;
}

/**
 * The prompt format the run that wrote `adapter` trained on (its `dataset_format`: alpaca → alpaca,
 * chat → chat, the others → none), or null when no run config lies beside the adapter.
 */
export function savedPromptFormat(adapter: string): PromptFormat | null {
  const file = runConfigFile(adapter);
  if (file === null) return null;
  let format: unknown;
  try {
    format = (parseYaml(readFileSync(file, 'utf8')) as Record<string, unknown> | null)?.['dataset_format'];
  } catch {
    return null;
  }
  return format === 'alpaca' || format === 'chat' ? format : typeof format === 'string' ? 'none' : null;
}
