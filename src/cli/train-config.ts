/**
 * The training config: one flat, typed record with a default and a line of help per option, read
 * from YAML and overridden by `--key value` flags. Validated once, here: an unknown key or a bad
 * value is one ConfigError naming the key, the value and what is allowed.
 *
 * @example
 * const config = resolveTrainConfig(readConfigFile('run.yaml'), { lr: '1e-4' });
 */
import { DATASET_FORMATS } from '../data/formats.js';
import { ConfigError, quote, shownValue } from '../errors.js';
import { parseSize } from './config-file.js';
import { checkBestModel } from './run-outputs.js';
import { EVAL_PROMPT_OPTIONS } from './eval-prompts.js';
import { OPTIMIZER_NAMES } from '../optim/optimizer.js';
import { ADAPTER_DTYPES } from '../peft/lora-weights.js';
import { patternMap } from './pattern-option.js';
import { SCHEDULE_NAMES } from '../optim/schedule.js';
import { QUANT_METHODS } from '../quant/methods.js';
import { FROZEN_COPIES } from '../train/frozen.js';
import { COMPUTE_DTYPES } from '../train/kernel-choice.js';
import { DEFAULT_CHUNK_TOKENS, PRECISIONS } from '../train/trainer.js';
import { TRAIN_TYPES, resolveTrainType } from '../train/train-type.js';
import { closestName } from '../util/names.js';
import { UsageError } from './args.js';
import { OBJECTIVE_OPTIONS } from './objective-config.js';
import { GRPO_OPTIONS } from './grpo-config.js';
import { TRAIN_ALIASES, TRAIN_POINTERS, pointerHint } from './train-aliases.js';

type Kind = 'string' | 'number' | 'int' | 'boolean' | 'list' | 'numbers' | 'sizes' | 'map';

export interface OptionSpec {
  kind: Kind;
  default: string | number | boolean | string[] | number[] | null;
  help: string;
  choices?: readonly string[];
  min?: number;
  max?: number;
  /** The value must be above `min` (not equal). */
  minExclusive?: boolean;
  /** `map`: the values must be whole numbers. */
  whole?: boolean;
}

/** Every option of `qtune train`, in the order `--help` lists them. */
export const TRAIN_OPTIONS = {
  model: {
    kind: 'string',
    default: null,
    help: 'base model: a Hugging Face folder, a .gguf file or a Hub id (required)',
  },
  backend: {
    kind: 'string',
    default: 'auto',
    help: 'device: auto, cpu, cuda, metal (mps), vulkan, or a device name such as Vulkan0',
  },
  devices: {
    kind: 'list',
    default: [],
    help: 'split the model over these devices in block order (e.g. vulkan0,cpu), or auto; instead of backend',
  },
  layer_split: {
    kind: 'numbers',
    default: [],
    help: 'with devices: proportions of the decoder blocks per device (e.g. 3,1); default by free memory',
  },
  device_map: {
    kind: 'list',
    default: [],
    help: 'the device of every decoder block (e.g. vulkan0,vulkan0,cpu,cpu); instead of layer_split',
  },
  max_memory: {
    kind: 'sizes',
    default: null,
    help: 'cap what qtune allocates per device (e.g. vulkan0=200MiB,cpu=8GiB)',
  },
  threads: { kind: 'int', default: null, min: 1, help: 'CPU threads (default: physical cores)' },
  train_type: { kind: 'string', default: 'lora', choices: TRAIN_TYPES, help: 'what trains' },
  ...OBJECTIVE_OPTIONS,
  ...GRPO_OPTIONS,
  quantization: {
    kind: 'string',
    default: null,
    choices: QUANT_METHODS,
    help: "the frozen base's quantization (default from train_type: qlora → nf4)",
  },
  lora_rank: { kind: 'int', default: 8, min: 1, help: 'LoRA rank r' },
  lora_alpha: { kind: 'number', default: 16, min: 0, minExclusive: true, help: 'LoRA alpha (scale alpha/r)' },
  lora_dropout: { kind: 'number', default: 0, min: 0, max: 0.99, help: 'dropout on the adapter input' },
  lora_target_modules: {
    kind: 'list',
    default: [],
    help: "modules to adapt: short names or globs over full names (default, or all-linear: every linear layer of the model's blocks)",
  },
  lora_rank_pattern: {
    kind: 'map',
    default: null,
    min: 1,
    whole: true,
    help: "per-module ranks, PEFT's rank_pattern: Python regexes over module names (first match wins), e.g. {q_proj: 16, 'layers\\.0\\..*': 4}; flag: q_proj=16,v_proj=4 or JSON",
  },
  lora_alpha_pattern: {
    kind: 'map',
    default: null,
    min: 0,
    minExclusive: true,
    help: "per-module alphas, PEFT's alpha_pattern, keyed as lora_rank_pattern",
  },
  use_rslora: { kind: 'boolean', default: false, help: 'scale by alpha/sqrt(r) (rsLoRA)' },
  dataset: {
    kind: 'string',
    default: null,
    help: 'training data: a .json/.jsonl file or a Hub dataset id (required unless dataset_format is dummy)',
  },
  dataset_format: {
    kind: 'string',
    default: 'alpaca',
    choices: DATASET_FORMATS,
    help: 'record layout of the dataset',
  },
  val_dataset: { kind: 'string', default: null, help: 'validation file (default: split off val_size)' },
  val_size: {
    kind: 'number',
    default: 0.05,
    min: 0,
    help: 'validation split: a fraction below 1 or a count of records',
  },
  max_samples: { kind: 'int', default: null, min: 1, help: 'use at most this many training records' },
  packing: {
    kind: 'boolean',
    default: false,
    help: 'pack several samples into one sequence (no attention across them)',
  },
  pad_to_sequence_len: {
    kind: 'boolean',
    default: false,
    help: 'pad every batch to context_length (one graph); default: each batch to its longest sample (dynamic padding)',
  },
  group_by_length: {
    kind: 'boolean',
    default: false,
    help: 'sort each run of 50 global batches by length, longest first, so a batch holds little padding',
  },
  context_length: {
    kind: 'int',
    default: 512,
    min: 8,
    help: 'tokens per sequence (longer samples are truncated)',
  },
  batch_size: { kind: 'int', default: 1, min: 1, help: 'sequences per micro-batch' },
  gradient_accumulation_steps: { kind: 'int', default: 1, min: 1, help: 'micro-batches per optimizer step' },
  num_epochs: {
    kind: 'number',
    default: 1,
    min: 0,
    minExclusive: true,
    help: 'passes over the training data (unless max_steps)',
  },
  max_steps: { kind: 'int', default: null, min: 1, help: 'optimizer steps (overrides num_epochs)' },
  precision: {
    kind: 'string',
    default: 'fp32',
    choices: PRECISIONS,
    help: 'fp32, bf16, fp16 (loss scaling), bf16_autocast, fp16_autocast',
  },
  loss_scale_growth_interval: {
    kind: 'int',
    default: 2000,
    min: 1,
    help: 'fp16: good steps after which the loss scale doubles (GradScaler growth_interval)',
  },
  gradient_checkpointing: {
    kind: 'boolean',
    default: null,
    help: 'recompute each decoder block in the backward pass (less memory; default: on over a quantized base such as qlora, else off)',
  },
  cross_entropy_chunk: {
    kind: 'int',
    default: DEFAULT_CHUNK_TOKENS,
    min: 0,
    help: 'token rows per chunk of the fused output layer + loss (the [tokens, vocab] logits never exist whole); 0: whole logits',
  },
  profile: {
    kind: 'boolean',
    default: false,
    help: 'profile one step per op (node by node): print the table at the end, write output_dir/profile.json',
  },
  profile_step: {
    kind: 'int',
    default: null,
    min: 1,
    help: 'with profile: the step to profile (default 2, after a warm-up step; the last if fewer)',
  },
  frozen_weight_copies: {
    kind: 'string',
    default: 'auto',
    choices: FROZEN_COPIES,
    help: 'persistent copies of the frozen weights for their matmuls (Wᵀ; W in the autocast type): auto (on for a float base that fits in memory), on, off',
  },
  quant_compute_dtype: {
    kind: 'string',
    default: 'auto',
    choices: COMPUTE_DTYPES,
    help: "a quantized base's input-gradient matmul type (bnb_4bit_compute_dtype): auto (bf16 where measured faster here), f32, bf16",
  },
  optimizer: { kind: 'string', default: 'adamw', choices: OPTIMIZER_NAMES, help: 'optimizer' },
  lr: { kind: 'number', default: 2e-4, min: 0, minExclusive: true, help: 'peak learning rate' },
  weight_decay: { kind: 'number', default: 0, min: 0, help: 'weight decay (not on norms and biases)' },
  max_grad_norm: { kind: 'number', default: 1, min: 0, help: 'clip the global gradient norm (0: off)' },
  lr_scheduler: {
    kind: 'string',
    default: 'constant',
    choices: SCHEDULE_NAMES,
    help: 'learning-rate schedule',
  },
  warmup_steps: {
    kind: 'int',
    default: null,
    min: 0,
    help: 'linear warmup steps (or warmup_ratio, not both)',
  },
  warmup_ratio: { kind: 'number', default: null, min: 0, max: 1, help: 'warmup as a fraction of the steps' },
  min_lr_ratio: { kind: 'number', default: null, min: 0, max: 1, help: 'cosine: floor as a fraction of lr' },
  num_cycles: { kind: 'int', default: null, min: 1, help: 'cosine_with_restarts: cycles' },
  eval_steps: { kind: 'int', default: 0, min: 0, help: 'evaluate every N steps (0: at the end only)' },
  save_steps: { kind: 'int', default: 0, min: 0, help: 'checkpoint every N steps (0: at the end only)' },
  load_best_model_at_end: {
    kind: 'boolean',
    default: false,
    help: 'end with the checkpoint of the best validation loss as the adapter/model (needs eval_steps; save_steps defaults to it)',
  },
  metric_for_best_model: {
    kind: 'string',
    default: 'eval_loss',
    choices: ['eval_loss', 'loss'],
    help: 'with load_best_model_at_end: the metric to keep the best of (lower is better)',
  },
  logging_steps: {
    kind: 'int',
    default: 10,
    min: 1,
    help: 'plain log line every N steps when not in a terminal',
  },
  adapter_dtype: {
    kind: 'string',
    default: 'f32',
    choices: ADAPTER_DTYPES,
    help: 'storage type of the saved adapter (adapter_model.safetensors and adapter.gguf); training is not affected',
  },
  output_dir: {
    kind: 'string',
    default: 'out',
    help: 'where checkpoints, the adapter, metrics and plots go',
  },
  mlx_adapter: {
    kind: 'boolean',
    default: false,
    help: 'also write the adapter for mlx-lm into output_dir/mlx (adapters.safetensors, adapter_config.json)',
  },
  overwrite_output_dir: {
    kind: 'boolean',
    default: false,
    help: 'train into an output_dir that holds an earlier run, removing what qtune wrote there',
  },
  resume_from_checkpoint: {
    kind: 'string',
    default: null,
    help: 'a checkpoint-N folder, or "latest" in output_dir',
  },
  resume_ignore_data_change: {
    kind: 'boolean',
    default: false,
    help: 'resume a checkpoint that was trained on other data (refused otherwise), going on with this data',
  },
  seed: { kind: 'int', default: 42, min: 0, help: 'seed of data order, initialisation and dropout' },
  ...EVAL_PROMPT_OPTIONS,
  log_to: {
    kind: 'list',
    default: [],
    choices: ['tensorboard', 'wandb'],
    help: 'also log to tensorboard and/or wandb',
  },
  dashboard: {
    kind: 'boolean',
    default: false,
    help: 'serve a live page of the run on 127.0.0.1 (charts, config, checkpoints, samples); see docs/dashboard.md',
  },
  dashboard_port: {
    kind: 'int',
    default: 0,
    min: 0,
    max: 65535,
    help: "the dashboard's port on 127.0.0.1 (0: any free port; the address is printed on stderr)",
  },
  dist_timeout: {
    kind: 'number',
    default: 600,
    min: 0,
    help: 'MPI runs: seconds a rank waits for the others in one collective before it ends the job (0: forever)',
  },
} as const satisfies Record<string, OptionSpec>;

export type TrainOptionName = keyof typeof TRAIN_OPTIONS;

type ValueOf<S extends OptionSpec> = S['kind'] extends 'list'
  ? string[]
  : S['kind'] extends 'numbers'
    ? number[]
    : S['kind'] extends 'sizes' | 'map'
      ? Record<string, number>
      : S['kind'] extends 'boolean'
        ? boolean
        : S['kind'] extends 'string'
          ? string
          : number;

/** A validated config: every option present, null where it has no default and was not given. */
export type TrainConfig = {
  -readonly [K in TrainOptionName]: (typeof TRAIN_OPTIONS)[K]['default'] extends null
    ? ValueOf<(typeof TRAIN_OPTIONS)[K]> | null
    : ValueOf<(typeof TRAIN_OPTIONS)[K]>;
};

const SPECS: Record<string, OptionSpec> = TRAIN_OPTIONS;

export { parseSize, readConfigFile } from './config-file.js';

/**
 * The ConfigError for a key no option (or alias) has: the qtune way to say another trainer's name
 * (`adapter: lora` is `train_type: lora`), or the closest known option.
 */
function unknownOption(k: string, typed: string, dash: string, given: unknown): ConfigError {
  const shown = /^[\x21-\x7e]{1,60}$/.test(typed) ? `${dash}${typed}` : `${dash}${quote(typed)}`;
  const near = closestName(k, [...Object.keys(SPECS), ...Object.keys(TRAIN_ALIASES)]);
  const option = near === undefined ? undefined : (TRAIN_ALIASES[near] ?? near);
  return new ConfigError(`${shown}: unknown option`, {
    hint: Object.hasOwn(TRAIN_POINTERS, k)
      ? pointerHint(TRAIN_POINTERS[k]!, dash !== '', given)
      : option === undefined
        ? 'see `qtune train --help` for the options'
        : `did you mean ${dash}${option}?`,
    details: { field: k },
  });
}

/** A value to show in "needs a value": the default, or one of the choices, or a placeholder. */
function exampleValue(spec: OptionSpec): string {
  if (spec.default !== null && !Array.isArray(spec.default)) return String(spec.default);
  return spec.choices?.[0] ?? (spec.kind === 'string' ? 'VALUE' : spec.kind === 'list' ? 'a,b' : '1');
}

/** Converts a value from YAML (typed) or from a flag (a string) and checks it against its spec. */
function coerce(key: string, spec: OptionSpec, raw: unknown, fromFlag: boolean): unknown {
  const bad = (why: string, fix: string): never => {
    throw new ConfigError(`${key}: ${shownValue(raw)} ${why}`, {
      hint: fix,
      details: { field: key, value: raw },
    });
  };
  if (raw === null) return spec.default; // `key:` with no value (or ~) leaves the default
  switch (spec.kind) {
    case 'boolean': {
      if (typeof raw === 'boolean') return raw;
      if (fromFlag && (raw === 'true' || raw === 'false')) return raw === 'true';
      return bad('is not true or false', `set ${key} to true or false`);
    }
    case 'int':
    case 'number': {
      const n =
        typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (!Number.isFinite(n)) return bad('is not a number', `set ${key} to a number`);
      if (spec.kind === 'int' && !Number.isInteger(n))
        return bad('is not a whole number', `set ${key} to an integer`);
      const range =
        spec.min !== undefined && spec.max !== undefined
          ? `from ${spec.min} to ${spec.max}`
          : spec.min !== undefined
            ? `${spec.minExclusive === true ? 'above' : 'at least'} ${spec.min}`
            : `at most ${spec.max}`;
      if (spec.min !== undefined && (n < spec.min || (spec.minExclusive === true && n === spec.min)))
        return bad(`is out of range`, `${key} must be ${range}`);
      if (spec.max !== undefined && n > spec.max) return bad('is out of range', `${key} must be ${range}`);
      return n;
    }
    case 'string': {
      const s = typeof raw === 'string' ? raw : typeof raw === 'number' ? String(raw) : undefined;
      if (s === undefined) return bad('is not a string', `set ${key} to a text value`);
      if (spec.choices !== undefined && !spec.choices.includes(s))
        return bad('is not allowed', `${key} must be one of ${spec.choices.join(', ')}`);
      return s;
    }
    case 'list': {
      const list =
        typeof raw === 'string'
          ? raw
              .split(',')
              .map((x) => x.trim())
              .filter((x) => x !== '')
          : raw;
      if (!Array.isArray(list) || !list.every((x) => typeof x === 'string'))
        return bad(
          'is not a list of names',
          `set ${key} to a list such as [a, b] (or a,b on the command line)`,
        );
      const strings = list;
      const wrong = spec.choices === undefined ? undefined : strings.find((x) => !spec.choices!.includes(x));
      if (wrong !== undefined)
        return bad(
          `contains ${quote(wrong)}, which is not allowed`,
          `${key} takes ${spec.choices!.join(', ')}`,
        );
      return strings;
    }
    case 'numbers': {
      const list: unknown = typeof raw === 'string' ? raw.split(',').filter((x) => x.trim() !== '') : raw;
      const nums = Array.isArray(list)
        ? list.map((x) => (typeof x === 'number' ? x : typeof x === 'string' ? Number(x) : NaN))
        : [NaN];
      if (nums.some((n) => !(Number.isFinite(n) && n >= 0)))
        return bad(
          'is not a list of numbers ≥ 0',
          `set ${key} to a list such as [3, 1] (or 3,1 on the command line)`,
        );
      return nums;
    }
    case 'map':
      return patternMap(key, raw, spec, bad);
    case 'sizes': {
      const entries: [string, unknown][] =
        typeof raw === 'string'
          ? raw
              .split(',')
              .filter((x) => x.trim() !== '')
              .map((x) => {
                const i = x.indexOf('=');
                return i < 0 ? [x.trim(), undefined] : [x.slice(0, i).trim(), x.slice(i + 1)];
              })
          : typeof raw === 'object' && !Array.isArray(raw)
            ? Object.entries(raw as Record<string, unknown>)
            : [['', undefined]];
      const out: Record<string, number> = {};
      for (const [device, size] of entries) {
        const bytes = parseSize(size);
        if (device === '' || !Number.isFinite(bytes))
          return bad(
            'is not a mapping of device to size',
            `set ${key} to e.g. {vulkan0: 200MiB} (or vulkan0=200MiB,cpu=8GiB on the command line)`,
          );
        out[device] = bytes;
      }
      return out;
    }
  }
}

/**
 * The full config: defaults, then the file's values, then the flags' (strings from the command
 * line). Checks every key and value, and the options that depend on each other.
 */
export function resolveTrainConfig(
  file: Record<string, unknown>,
  flags: Record<string, string | boolean> = {},
): TrainConfig {
  const out: Record<string, unknown> = {};
  for (const [k, spec] of Object.entries(SPECS)) out[k] = spec.default;
  for (const [source, values] of [
    ['file', file],
    ['flag', flags],
  ] as const) {
    const named = new Map<string, string>(); // option -> the name it was given under, in this source
    for (const [typed, v] of Object.entries(values)) {
      const dash = source === 'flag' ? '--' : '';
      // a flag's `-` is `_` (`--context-length`); messages show the flag as typed
      const k = source === 'flag' ? typed.replace(/-/g, '_') : typed;
      // not inherited names (constructor)
      const name = Object.hasOwn(SPECS, k)
        ? k
        : Object.hasOwn(TRAIN_ALIASES, k)
          ? TRAIN_ALIASES[k]
          : undefined;
      if (name === undefined) throw unknownOption(k, typed, dash, v);
      const spec = SPECS[name]!;
      const earlier = named.get(name);
      if (earlier !== undefined)
        throw new ConfigError(`${dash}${earlier} and ${dash}${typed} are both set: both name ${name}`, {
          hint: 'give one of them',
          details: { field: name },
        });
      named.set(name, typed);
      // a flag with no value (`--lr` at the end, or before another flag) is true: fine for a switch
      if (source === 'flag' && v === true && spec.kind !== 'boolean')
        throw new UsageError(`--${typed} needs a value`, `e.g. --${typed} ${exampleValue(spec)}`);
      // a YAML true or false for a text or number option is read as its text (then checked)
      out[name] = coerce(
        k,
        spec,
        typeof v === 'boolean' && spec.kind !== 'boolean' ? String(v) : v,
        source === 'flag',
      );
    }
  }
  const c = out as TrainConfig;
  if (c.model === null)
    throw new ConfigError('model: missing', {
      hint: 'set model to a model folder, a .gguf file or a Hub id',
    });
  if (c.dataset === null && c.dataset_format !== 'dummy')
    throw new ConfigError('dataset: missing', {
      hint: 'set dataset to a .json/.jsonl file or a Hub dataset id, or dataset_format: dummy for a smoke run',
    });
  if (c.warmup_steps !== null && c.warmup_ratio !== null)
    throw new ConfigError(
      `warmup_steps: ${c.warmup_steps} and warmup_ratio: ${c.warmup_ratio} are both set`,
      {
        hint: 'give one of them',
      },
    );
  if (c.layer_split.length > 0 && c.device_map.length > 0)
    throw new ConfigError('layer_split and device_map are both set', { hint: 'give one of them' });
  if (c.layer_split.length > 0 && !c.devices.includes('auto') && c.layer_split.length !== c.devices.length)
    throw new ConfigError(
      `layer_split: [${c.layer_split.join(', ')}] has ${c.layer_split.length} proportions for ${c.devices.length} devices`,
      {
        hint: 'give one proportion per entry of devices, e.g. devices: [vulkan0, cpu] with layer_split: [3, 1]',
      },
    );
  if ((c.devices.length > 0 || c.device_map.length > 0) && c.backend !== 'auto')
    throw new ConfigError(`backend: ${c.backend} is set with devices/device_map`, {
      hint: 'give devices to split the model over several, or backend to keep it on one',
    });
  if (c.devices.includes('auto') && c.devices.length > 1)
    throw new ConfigError(`devices: [${c.devices.join(', ')}] mixes auto with device names`, {
      hint: 'use devices: auto, or list the devices',
    });
  if (c.profile_step !== null && !c.profile)
    throw new ConfigError(`profile_step: ${c.profile_step} is set without profile`, {
      hint: 'add --profile (or profile: true), or drop profile_step',
    });
  if (c.load_best_model_at_end) checkBestModel(c);
  if (c.val_size >= 1 && !Number.isInteger(c.val_size))
    throw new ConfigError(`val_size: ${c.val_size} is neither a fraction below 1 nor a whole count`, {
      hint: 'use e.g. 0.05 or 100',
    });
  const adapter = TRAIN_TYPES.includes(c.train_type) ? resolveTrainType(c.train_type).adapter : null;
  if (c.mlx_adapter && (adapter === 'full' || adapter === 'llama_pro'))
    throw new ConfigError(`mlx_adapter: train_type ${c.train_type} trains no adapter to write for mlx-lm`, {
      hint: 'drop mlx_adapter, or train with lora, qlora or dora',
      details: { field: 'mlx_adapter', value: true },
    });
  return c;
}

/** `--help` text: every option with its default. */
export function trainOptionsHelp(): string[] {
  return Object.entries(SPECS).map(([k, s]) => {
    const def =
      s.default === null
        ? ''
        : ` (default: ${Array.isArray(s.default) ? s.default.join(',') || '[]' : String(s.default)})`;
    const choices =
      s.choices !== undefined && s.kind !== 'list' && s.choices.length <= 8
        ? ` [${s.choices.join('|')}]`
        : '';
    const aliases = Object.keys(TRAIN_ALIASES).filter((a) => TRAIN_ALIASES[a] === k);
    const also = aliases.length === 0 ? '' : ` (also ${aliases.join(', ')})`;
    return `  --${k.padEnd(28)} ${s.help}${also}${choices}${def}`;
  });
}
