/**
 * Train types under the names users of the seed system know, resolved to what they mean here: which
 * adapter trains (none for full fine-tuning, LoRA, DoRA, or Llama-Pro's new blocks) and how the frozen
 * base is stored (float, or quantized by one of qtune's methods).
 */
import { ConfigError } from '../errors.js';
import { METHODS, isQuantMethod, type QuantMethod } from '../quant/methods.js';

export type AdapterKind = 'full' | 'lora' | 'dora' | 'llama_pro';

export interface ResolvedTrainType {
  /** The name as given. */
  name: string;
  adapter: AdapterKind;
  /** The frozen base's quantization method, or null for a float base. */
  quantization: QuantMethod | null;
}

/** name → adapter and the base's default quantization (undefined: float unless asked). */
const TYPES: Record<string, { adapter: AdapterKind; quantization?: QuantMethod; requiresQuant?: boolean }> = {
  full: { adapter: 'full' },
  lora: { adapter: 'lora' },
  custom_lora: { adapter: 'lora' },
  qlora: { adapter: 'lora', quantization: 'nf4', requiresQuant: true },
  custom_qlora: { adapter: 'lora', quantization: 'nf4', requiresQuant: true },
  dora: { adapter: 'dora' },
  llama_pro: { adapter: 'llama_pro' },
  // the seed system's combined names: method + adapter
  hqq_lora: { adapter: 'lora', quantization: 'hqq', requiresQuant: true },
  hqq_dora: { adapter: 'dora', quantization: 'hqq', requiresQuant: true },
  bnb_dora: { adapter: 'dora', quantization: 'nf4', requiresQuant: true },
  bnb_llama_pro: { adapter: 'llama_pro', quantization: 'nf4', requiresQuant: true },
  hqq_llama_pro: { adapter: 'llama_pro', quantization: 'hqq', requiresQuant: true },
};

export const TRAIN_TYPES = Object.keys(TYPES);

/**
 * Resolves a train type and an optional quantization method (`quantization: none` is a float base).
 *
 * @example
 * resolveTrainType('qlora')               // { adapter: 'lora', quantization: 'nf4' }
 * resolveTrainType('lora', 'int8')        // LoRA over an 8-bit base
 */
export function resolveTrainType(name: string, quantization?: string): ResolvedTrainType {
  const t = TYPES[name];
  if (t === undefined)
    throw new ConfigError(`train_type: "${name}" is not a train type`, {
      hint: `use one of ${TRAIN_TYPES.join(', ')}`,
    });
  if (quantization !== undefined && !isQuantMethod(quantization))
    throw new ConfigError(`quantization: "${quantization}" is not a method`, {
      hint: `use one of ${Object.keys(METHODS).join(', ')}`,
    });
  let q: QuantMethod | null = quantization ?? t.quantization ?? null;
  if (q === 'none') q = null;
  if (t.adapter === 'full' && q !== null)
    throw new ConfigError(`quantization: full fine-tuning trains every weight, so it cannot be ${q}`, {
      hint: 'use quantization: none with train_type: full, or train_type: qlora',
    });
  if (t.requiresQuant === true && q === null)
    throw new ConfigError(`quantization: ${name} trains over a quantized base; "none" contradicts it`, {
      hint: `use train_type: ${t.adapter === 'lora' ? 'lora' : t.adapter} for a float base`,
    });
  return { name, adapter: t.adapter, quantization: q };
}

/**
 * Whether gradient checkpointing is on when the user does not say: on over a quantized frozen base
 * (qlora, bnb_dora, hqq_lora, lora with a quantization...), as Unsloth does for QLoRA, since there
 * the kept activations are most of the step's memory; off over a float base. An explicit
 * `gradient_checkpointing` wins either way.
 */
export function defaultGradientCheckpointing(t: ResolvedTrainType): boolean {
  return t.quantization !== null;
}

/** One line for a run's startup, such as `gradient checkpointing: on (default for qlora over nf4; …)`. */
export function gradientCheckpointingLine(
  t: ResolvedTrainType,
  o: { gradientCheckpointing: boolean; gradientCheckpointingByDefault: boolean },
): string {
  const on = o.gradientCheckpointing;
  const why = o.gradientCheckpointingByDefault
    ? `default for ${t.name}${t.quantization === null ? '' : ` over ${t.quantization}`}; gradient_checkpointing: ${!on} changes it`
    : 'set';
  return `gradient checkpointing: ${on ? 'on' : 'off'} (${why})`;
}
