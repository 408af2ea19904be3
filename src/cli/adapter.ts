/**
 * What the commands that take `--adapter` (generate, chat, eval, merge, export) share: an adapter is
 * a PEFT folder, a llama.cpp LoRA .gguf, or a training checkpoint-N folder (its trainable tensors and
 * trainer_state.json are read as the adapter they hold).
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { loadAdapter } from '../peft/apply.js';
import type { LoraAdapterData } from '../peft/lora-weights.js';
import { PEFT_CONFIG_FILE } from '../peft/peft.js';
import type { LlamaConfig } from '../models/config.js';
import { checkpointAdapter } from '../train/checkpoint.js';

/** Whether `location` is a qtune checkpoint folder (trainer_state.json) rather than a PEFT folder. */
export function isCheckpointFolder(location: string): boolean {
  return (
    existsSync(location) &&
    statSync(location).isDirectory() &&
    existsSync(path.join(location, 'trainer_state.json')) &&
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
