/**
 * A LoRA (or DoRA) adapter in host memory, in PyTorch/PEFT's layout: what a trainer hands over and what
 * the PEFT and GGUF writers, the readers and {@link mergeAdapter} take.
 *
 * Each adapted module `W` (shape `[out, in]`) gets `W + scale · B · A`, with `A` `[rank, in]` and `B`
 * `[out, rank]`, row-major. DoRA adds a magnitude vector `m` `[out]`:
 * `W' = m ⊙ (W + scale·B·A) / ‖W + scale·B·A‖` (norm of each output row).
 *
 * @example
 * const data: LoraAdapterData = {
 *   baseModel: 'TinyLlama/TinyLlama-1.1B-Chat-v1.0', rsLora: false, dora: false, dropout: 0,
 *   targetModules: ['q_proj'],
 *   modules: new Map([['model.layers.0.self_attn.q_proj',
 *     { rank: 8, alpha: 16, inFeatures: 2048, outFeatures: 2048, A: new Float32Array(8 * 2048), B: new Float32Array(2048 * 8) }]]),
 * };
 * loraScale(data.modules.get('model.layers.0.self_attn.q_proj')!, data.rsLora); // 2
 */
import { ConfigError, ShapeError, fmtShape, shownValue } from '../errors.js';
import { peftPatternRegExp } from './pattern.js';

/** The storage types an adapter is written in (`adapter_dtype`): its tensors are f32 in memory. */
export const ADAPTER_DTYPES = ['f32', 'f16', 'bf16'] as const;
export type AdapterDType = (typeof ADAPTER_DTYPES)[number];

/** `dtype` if it is an adapter storage type, else a ConfigError naming adapter_dtype. */
export function checkAdapterDType(dtype: unknown): AdapterDType {
  if (!(ADAPTER_DTYPES as readonly unknown[]).includes(dtype))
    throw new ConfigError(`adapter_dtype: ${JSON.stringify(dtype)} is not a type adapters are saved in`, {
      hint: `use ${ADAPTER_DTYPES.join(', ')}`,
      details: { field: 'adapter_dtype', value: dtype },
    });
  return dtype as AdapterDType;
}

/** One adapted linear layer. */
export interface LoraModule {
  rank: number;
  alpha: number;
  inFeatures: number;
  outFeatures: number;
  /** `[rank, in]`, row-major (torch layout of `lora_A.weight`). */
  A: Float32Array;
  /** `[out, rank]`, row-major (torch layout of `lora_B.weight`). */
  B: Float32Array;
  /** DoRA magnitude `[out]` (PEFT's `lora_magnitude_vector`). */
  magnitude?: Float32Array;
}

/** A whole adapter: its modules by full module name, and the settings PEFT records. */
export interface LoraAdapterData {
  /** The base model's Hub id or path (`base_model_name_or_path`). */
  baseModel: string;
  /** Scale `alpha/√rank` instead of `alpha/rank` (rank-stabilized LoRA). */
  rsLora: boolean;
  /** Weight-decomposed LoRA: every module carries a magnitude vector. */
  dora: boolean;
  dropout: number;
  /** Short module names the adapter targets: `q_proj`, `v_proj`, ... */
  targetModules: string[];
  /** By module name without `.weight`, e.g. `model.layers.0.self_attn.q_proj`. */
  modules: Map<string, LoraModule>;
}

/**
 * The factor a module's `B·A` is multiplied by, as PEFT computes it: `alpha / rank`, or
 * `alpha / √rank` with rsLoRA.
 *
 * @example
 * loraScale({ rank: 16, alpha: 32 } as LoraModule, true); // 8
 */
export function loraScale(m: Pick<LoraModule, 'rank' | 'alpha'>, rsLora: boolean): number {
  return rsLora ? m.alpha / Math.sqrt(m.rank) : m.alpha / m.rank;
}

/**
 * The value most modules share, the first seen on a tie: the `r` and `lora_alpha` a PEFT config
 * states (the rest go to rank_pattern/alpha_pattern), the one alpha of a llama.cpp adapter.
 */
export function mostCommon(values: number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0]!;
  for (const [v, n] of counts) if (n > counts.get(best)!) best = v;
  return best;
}

/** The short name of a module (`q_proj` for `model.layers.0.self_attn.q_proj`). */
export function shortModuleName(module: string): string {
  return module.slice(module.lastIndexOf('.') + 1);
}

/**
 * Checks one module's numbers and array sizes; `dora` requires a magnitude vector.
 * Throws a {@link ConfigError} or {@link ShapeError} naming the module.
 */
export function validateLoraModule(name: string, m: LoraModule, dora: boolean): void {
  for (const key of ['rank', 'inFeatures', 'outFeatures'] as const) {
    if (!Number.isInteger(m[key]) || m[key] < 1)
      throw new ConfigError(
        `adapter module ${name}: ${key} = ${shownValue(m[key])} is not a positive integer`,
        {
          details: { module: name, field: key, value: m[key] },
        },
      );
  }
  if (!Number.isFinite(m.alpha))
    throw new ConfigError(`adapter module ${name}: alpha = ${shownValue(m.alpha)} is not a finite number`, {
      details: { module: name, field: 'alpha', value: m.alpha },
    });
  const check = (what: string, arr: Float32Array, shape: number[]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    if (arr.length !== n)
      throw new ShapeError(
        `adapter module ${name}: ${what} holds ${arr.length} values, ${fmtShape(shape)} needs ${n}`,
        {
          hint: `${what} is row-major ${fmtShape(shape)} (torch layout)`,
          details: { module: name, field: what, value: arr.length },
        },
      );
  };
  check('A', m.A, [m.rank, m.inFeatures]);
  check('B', m.B, [m.outFeatures, m.rank]);
  if (m.magnitude !== undefined) check('magnitude', m.magnitude, [m.outFeatures]);
  else if (dora)
    throw new ConfigError(`adapter module ${name}: a DoRA adapter needs a magnitude vector`, {
      hint: 'set magnitude ([out]) on every module, or dora: false',
      details: { module: name, field: 'magnitude' },
    });
}

/** Validates every module of an adapter (see {@link validateLoraModule}). */
export function validateAdapter(data: LoraAdapterData): void {
  if (data.modules.size === 0)
    throw new ConfigError('the adapter has no modules', { hint: 'add at least one LoraModule' });
  if (!(data.dropout >= 0 && data.dropout < 1))
    throw new ConfigError(`adapter dropout = ${data.dropout} is not in [0, 1)`, {
      details: { field: 'dropout', value: data.dropout },
    });
  for (const [name, m] of data.modules) validateLoraModule(name, m, data.dora);
}

/**
 * PEFT's choice among `rank_pattern` / `alpha_pattern` keys (peft.utils.other.get_pattern_key): each
 * key is a Python regular expression ({@link peftPatternRegExp} translates it) that must match the
 * end of the full module name right after a dot, or the whole name (`^` anchors it to the whole
 * name); the first key in the record's order that matches wins, however specific a later one is.
 * Returns that key, or undefined when none matches. A key that cannot be run is a ConfigError.
 *
 * @example
 * patternKey(['q_proj', '^model.layers.1.self_attn.q_proj'], 'model.layers.1.self_attn.q_proj'); // 'q_proj'
 */
export function patternKey(keys: Iterable<string>, module: string, field = 'pattern'): string | undefined {
  for (const key of keys) if (peftPatternRegExp(key, field).test(module)) return key;
  return undefined;
}

/** Rejects pattern keys that cannot be run as PEFT runs them, naming the field and the key. */
export function checkPatternKeys(field: string, patterns: Readonly<Record<string, unknown>>): void {
  for (const key of Object.keys(patterns)) peftPatternRegExp(key, field);
}
