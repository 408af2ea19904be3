/**
 * The names other trainers give qtune's training options, so that a config written for Axolotl or
 * Hugging Face's TrainingArguments mostly reads as it is: an alias is the same option under another
 * name; a pointer is a name whose value qtune spells differently, refused with the qtune way to
 * say it. docs/cli.md lists both.
 */
import { OPTIMIZER_NAMES } from '../optim/optimizer.js';
import type { TrainOptionName } from './train-config.js';

/** Each is accepted, in the file and as a flag, for the option it names. */
export const TRAIN_ALIASES: Readonly<Record<string, TrainOptionName>> = {
  base_model: 'model', // Axolotl
  model_name_or_path: 'model', // Hugging Face
  lora_r: 'lora_rank', // Axolotl
  r: 'lora_rank', // PEFT's LoraConfig
  format: 'dataset_format', // qtune eval's --format
  sample_packing: 'packing', // Axolotl
  val_set_size: 'val_size', // Axolotl
  sequence_len: 'context_length', // Axolotl
  max_seq_length: 'context_length', // TRL
  micro_batch_size: 'batch_size', // Axolotl
  per_device_train_batch_size: 'batch_size', // Hugging Face
  num_train_epochs: 'num_epochs', // Hugging Face
  learning_rate: 'lr', // Axolotl, Hugging Face
  lr_scheduler_type: 'lr_scheduler', // Hugging Face
  cosine_min_lr_ratio: 'min_lr_ratio', // Axolotl
  report_to: 'log_to', // Hugging Face
  port: 'dashboard_port', // qtune dashboard's --port
  max_new_tokens: 'max_completion_length', // GRPO: what generation calls it
};

/** A name whose value differs in qtune: the option and value to give instead, and what else may go there. */
export interface TrainPointer {
  option: TrainOptionName;
  value: string;
  note?: string;
  /** Values that mean the same in qtune's option: shown as given (`adapter: qlora` → `train_type: qlora`). */
  same?: readonly string[];
}

export const TRAIN_POINTERS: Readonly<Record<string, TrainPointer>> = {
  adapter: { option: 'train_type', value: 'lora', note: 'or qlora, dora', same: ['lora', 'qlora'] }, // Axolotl
  load_in_4bit: { option: 'train_type', value: 'qlora', note: 'which quantizes the base to nf4' }, // Axolotl
  load_in_8bit: { option: 'quantization', value: 'int8' }, // Axolotl
  bf16: { option: 'precision', value: 'bf16' }, // Axolotl, Hugging Face
  fp16: { option: 'precision', value: 'fp16' }, // Axolotl, Hugging Face
  optim: {
    option: 'optimizer',
    value: 'adamw',
    note: `or ${OPTIMIZER_NAMES.filter((n) => n !== 'adamw').join(', ')}`,
  }, // Hugging Face's adamw_torch, ...
  datasets: { option: 'dataset', value: 'FILE', note: 'one file, its layout in dataset_format' }, // Axolotl's list
  wandb_project: { option: 'log_to', value: 'wandb' }, // Axolotl
};

/** `in qtune: train_type: lora, or qlora, dora` (or `--train_type lora` for a flag); `given` is the value set. */
export function pointerHint(p: TrainPointer, flag: boolean, given: unknown): string {
  const same = typeof given === 'string' && p.same?.includes(given) === true;
  const value = same ? given : p.value;
  const said = flag ? `--${p.option} ${value}` : `${p.option}: ${value}`;
  return `in qtune: ${said}${same || p.note === undefined ? '' : `, ${p.note}`}`;
}
