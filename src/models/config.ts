/**
 * The Llama-family configuration, with the field names of Hugging Face's `config.json`, read and
 * validated once. Llama 2/3/3.1/3.2, TinyLlama and SmolLM are `llama`; Mistral is `mistral`; Qwen2 and
 * Qwen2.5 are `qwen2` (biases on q, k and v); Qwen3 is `qwen3` (an RMSNorm over each query and key
 * head before RoPE, no biases); SmolLM3 is `smollm3` (layers without RoPE, `no_rope_layers`);
 * Phi-3/3.5/4-mini are `phi3` (fused `qkv_proj` and `gate_up_proj`, longrope, partial rotary); Gemma 3
 * (text) is `gemma3_text` (GeGLU, (1 + w) norms around attention and MLP, scaled embeddings, q/k norms,
 * local layers with their own RoPE base and window beside global ones); Gemma 2 is `gemma2` (Gemma 3's
 * block without q/k norms, local and global layers alternating, attention scores and logits
 * soft-capped).
 * Anything qtune does not implement is refused by name.
 */
import { ConfigError } from '../errors.js';

export type ModelType =
  'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'smollm3' | 'phi3' | 'gemma2' | 'gemma3_text';
export const MODEL_TYPES: readonly ModelType[] = [
  'llama',
  'mistral',
  'qwen2',
  'qwen3',
  'smollm3',
  'phi3',
  'gemma2',
  'gemma3_text',
];

/** The Hugging Face class name of each model type (config.json's `architectures`). */
export const ARCHITECTURES: Record<ModelType, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  smollm3: 'SmolLM3ForCausalLM',
  phi3: 'Phi3ForCausalLM',
  gemma2: 'Gemma2ForCausalLM',
  gemma3_text: 'Gemma3ForCausalLM',
};

export interface Llama3RopeScaling {
  rope_type: 'llama3';
  factor: number;
  low_freq_factor: number;
  high_freq_factor: number;
  original_max_position_embeddings: number;
}

export interface LinearRopeScaling {
  rope_type: 'linear';
  factor: number;
}

/**
 * Phi-3's LongRoPE: per-frequency divisors, `short_factor` while a sequence stays within
 * `original_max_position_embeddings` and `long_factor` beyond it (HF's dynamic choice), and cos/sin
 * scaled by `attention_factor` (default `sqrt(1 + ln(s) / ln(original))`, s = max / original).
 */
export interface LongRopeScaling {
  rope_type: 'longrope';
  short_factor: number[];
  long_factor: number[];
  original_max_position_embeddings: number;
  attention_factor: number;
}

export type RopeScaling = Llama3RopeScaling | LinearRopeScaling | LongRopeScaling;

export interface LlamaConfig {
  model_type: ModelType;
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  head_dim: number;
  rms_norm_eps: number;
  rope_theta: number;
  max_position_embeddings: number;
  tie_word_embeddings: boolean;
  rope_scaling: RopeScaling | null;
  /** Biases on q_proj, k_proj and v_proj (Qwen2; Llama's and Qwen3's `attention_bias`). */
  attention_bias: boolean;
  /** An RMSNorm (weights `q_norm`, `k_norm` of `[head_dim]`) over each query and key head before RoPE (Qwen3). */
  qk_norm: boolean;
  /**
   * The attention window: a query sees the `sliding_window` keys up to itself (HF's
   * `kv_idx > q_idx - sliding_window`). Null when attention is full (Qwen2/3 unless
   * `use_sliding_window`).
   */
  sliding_window: number | null;
  /** Layers below this one attend fully, the rest through the window (Qwen2/3; 0 for Mistral). */
  max_window_layers: number;
  /**
   * SmolLM3's per-layer RoPE switch, HF's name and meaning: 1 where a layer applies RoPE, 0 where it
   * does not (NoPE). Null: every layer applies it.
   */
  no_rope_layers: number[] | null;
  /** Phi-3's fused projections: `qkv_proj` (q, k, v rows in that order) and `gate_up_proj` (gate, up). */
  fused_projections: boolean;
  /** How many of each head's dims RoPE rotates (`partial_rotary_factor` × head_dim; Phi-4-mini 0.75). */
  rope_dims: number;
  /** The MLP's activation: SwiGLU's silu, or Gemma's GeGLU with tanh-approximated GELU. */
  hidden_act: 'silu' | 'gelu_pytorch_tanh';
  /** Gemma: every RMSNorm scales by (1 + weight), the stored weight being the offset from 1. */
  norm_plus_one: boolean;
  /** Gemma: norms after attention and after the MLP too (post_attention_layernorm on the attention's output, pre/post_feedforward_layernorm around the MLP). */
  sandwich_norms: boolean;
  /** The embeddings' multiplier (Gemma: √hidden_size; else 1). */
  embedding_scale: number;
  /** The attention scores are scaled by its -½ power: Gemma's `query_pre_attn_scalar`, else head_dim. */
  query_pre_attn_scalar: number;
  /**
   * Gemma: which layers use the sliding window (`layer_types`; else Gemma 3 slides on every layer but
   * each `sliding_window_pattern`th, Gemma 2 on every other one from layer 0); null: from max_window_layers.
   */
  layer_types: ('sliding_attention' | 'full_attention')[] | null;
  /** Gemma 3: the sliding layers' RoPE base (no scaling on them); null: every layer uses rope_theta. */
  rope_local_base_freq: number | null;
  /**
   * Gemma 2: the attention scores, already scaled, become cap·tanh(scores/cap) before the mask and
   * the softmax (HF default 50); null: not capped.
   */
  attn_logit_softcapping: number | null;
  /** Gemma 2: the logits become cap·tanh(logits/cap) (HF default 30); null: not capped. */
  final_logit_softcapping: number | null;
  bos_token_id: number | null;
  eos_token_id: number[];
  pad_token_id: number | null;
  torch_dtype: string | null;
}

type Json = Record<string, unknown>;

function num(
  j: Json,
  key: string,
  opts: { int?: boolean; min?: number; max?: number; def?: number } = {},
): number {
  const v = j[key] ?? opts.def;
  if (
    typeof v !== 'number' ||
    !Number.isFinite(v) ||
    (opts.int === true && !Number.isInteger(v)) ||
    v < (opts.min ?? -Infinity) ||
    v > (opts.max ?? Infinity)
  ) {
    throw new ConfigError(
      `config.json: ${key} = ${JSON.stringify(j[key])} is not ${opts.int ? 'an integer' : 'a number'}${opts.min === undefined ? '' : ` >= ${opts.min}`}${opts.max === undefined ? '' : ` and <= ${opts.max}`}`,
      { hint: `set ${key} in config.json`, details: { field: key, value: j[key] } },
    );
  }
  return v;
}

function tokenIds(v: unknown, key: string): number[] {
  if (v === undefined || v === null) return [];
  const arr = Array.isArray(v) ? v : [v];
  if (!arr.every((x) => Number.isInteger(x)))
    throw new ConfigError(`config.json: ${key} = ${JSON.stringify(v)} is not a token id or a list of them`);
  return arr as number[];
}

/**
 * SmolLM3's `no_rope_layers` (1 = RoPE, 0 = none), or, when absent, HF's default from
 * `no_rope_layer_interval` (4): every fourth layer without RoPE.
 */
function noRopeLayers(j: Json, layers: number): number[] {
  const v = j['no_rope_layers'];
  if (v === undefined || v === null) {
    const every = num(j, 'no_rope_layer_interval', { int: true, min: 1, def: 4 });
    return Array.from({ length: layers }, (_, i) => ((i + 1) % every === 0 ? 0 : 1));
  }
  if (!Array.isArray(v) || v.length !== layers || !v.every((x) => x === 0 || x === 1))
    throw new ConfigError(
      `config.json: no_rope_layers = ${JSON.stringify(v).slice(0, 80)} is not a list of ${layers} zeros and ones`,
      { hint: 'one entry per layer: 1 where the layer applies RoPE, 0 where it does not' },
    );
  return v as number[];
}

/**
 * Gemma's `layer_types`, or, when absent, HF's rule from `sliding_window_pattern` (Gemma 3: 6; Gemma 2
 * alternates, `every` 2): every layer slides but each pattern-th, which attends globally.
 */
function layerTypes(j: Json, layers: number, every: number): ('sliding_attention' | 'full_attention')[] {
  const v = j['layer_types'];
  if (v === undefined || v === null) {
    const pattern = num(j, 'sliding_window_pattern', { int: true, min: 1, def: every });
    return Array.from({ length: layers }, (_, i) =>
      (i + 1) % pattern === 0 ? 'full_attention' : 'sliding_attention',
    );
  }
  if (
    !Array.isArray(v) ||
    v.length !== layers ||
    !v.every((x) => x === 'sliding_attention' || x === 'full_attention')
  )
    throw new ConfigError(
      `config.json: layer_types is not a list of ${layers} "sliding_attention" / "full_attention" entries`,
    );
  return v as ('sliding_attention' | 'full_attention')[];
}

/** Phi-3's `rope_scaling` of type longrope, with `original_max_position_embeddings` where it is. */
function longRope(j: Json, r: Json, half: number): LongRopeScaling {
  const original = num(
    r['original_max_position_embeddings'] === undefined ? j : r,
    'original_max_position_embeddings',
    {
      int: true,
      min: 1,
    },
  );
  const factors = (key: string): number[] => {
    const v = r[key];
    if (!Array.isArray(v) || v.length !== half || !v.every((x) => typeof x === 'number' && x > 0))
      throw new ConfigError(
        `config.json: rope_scaling.${key} is not a list of ${half} positive numbers (one per rotated frequency)`,
      );
    return v as number[];
  };
  const max = num(j, 'max_position_embeddings', { int: true, min: 1, def: 2048 });
  const s = max / original;
  const def = s <= 1 ? 1 : Math.sqrt(1 + Math.log(s) / Math.log(original));
  return {
    rope_type: 'longrope',
    short_factor: factors('short_factor'),
    long_factor: factors('long_factor'),
    original_max_position_embeddings: original,
    attention_factor:
      r['attention_factor'] === undefined || r['attention_factor'] === null
        ? def
        : num(r, 'attention_factor', { min: 0 }),
  };
}

/**
 * Gemma3TextConfig's defaults (transformers): a multimodal checkpoint's `text_config` holds only the
 * keys that differ from them.
 */
const GEMMA3_TEXT_DEFAULTS: Json = {
  vocab_size: 262208,
  hidden_size: 2304,
  intermediate_size: 9216,
  num_hidden_layers: 26,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  rope_local_base_freq: 10000,
  query_pre_attn_scalar: 256,
  sliding_window: 4096,
  max_position_embeddings: 131072,
};

/**
 * The text model of a Gemma 3 multimodal config (`model_type: gemma3`, Gemma 3 4B and up): its
 * `text_config` over Gemma3TextConfig's defaults, with the token ids and dtype of the outer config
 * where the inner one lacks them. The vision tower's `vision_config` is not read.
 */
function gemma3TextConfig(j: Json): Json {
  const t = j['text_config'];
  if (t === null || typeof t !== 'object' || Array.isArray(t))
    throw new ConfigError('config.json: model_type "gemma3" has no text_config object', {
      hint: "a Gemma 3 multimodal config.json holds its text model's settings in text_config",
    });
  const outer: Json = {};
  for (const k of ['bos_token_id', 'eos_token_id', 'pad_token_id', 'torch_dtype', 'tie_word_embeddings'])
    if (j[k] !== undefined) outer[k] = j[k];
  return { ...GEMMA3_TEXT_DEFAULTS, ...outer, ...(t as Json), model_type: 'gemma3_text' };
}

/** Parses and validates a `config.json` object. */
export function parseLlamaConfig(j: Json): LlamaConfig {
  if (j['model_type'] === 'gemma3') return parseLlamaConfig(gemma3TextConfig(j));
  const modelType = j['model_type'];
  if (typeof modelType !== 'string' || !(MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ConfigError(`config.json: model_type "${String(modelType)}" is not supported`, {
      hint: `qtune supports ${MODEL_TYPES.join(', ')} (Llama 2/3/3.1/3.2, TinyLlama, SmolLM, Mistral, Qwen2/2.5, Qwen3, SmolLM3, Phi-3/4-mini, Gemma 2, Gemma 3 text)`,
    });
  }
  const gemma2 = modelType === 'gemma2';
  const gemma = modelType === 'gemma3_text' || gemma2;
  const act = j['hidden_activation'] ?? j['hidden_act'] ?? (gemma ? 'gelu_pytorch_tanh' : 'silu');
  if (act !== (gemma ? 'gelu_pytorch_tanh' : 'silu'))
    throw new ConfigError(`config.json: hidden_act ${JSON.stringify(act)} is not supported`, {
      hint: gemma ? 'Gemma uses gelu_pytorch_tanh' : 'Llama-family models use silu',
    });
  if (!gemma2)
    for (const key of ['attn_logit_softcapping', 'final_logit_softcapping'])
      if (j[key] !== undefined && j[key] !== null)
        throw new ConfigError(`config.json: ${key} = ${JSON.stringify(j[key])} is not supported`, {
          hint: `qtune soft-caps Gemma 2 (model_type gemma2) only; set ${key} to null for ${modelType}`,
        });
  // Gemma 2's caps: HF's defaults when absent, none when null
  const cap = (key: string, def: number): number | null => {
    if (!gemma2 || j[key] === null) return null;
    const v = num(j, key, { def });
    if (v <= 0)
      throw new ConfigError(`config.json: ${key} = ${v} is not a positive number`, {
        hint: `a soft-cap is cap·tanh(x/cap) with cap > 0 (Gemma 2: 50 for attention, 30 for logits); null turns it off`,
        details: { field: key, value: v },
      });
    return v;
  };
  if (j['mlp_bias'] === true)
    throw new ConfigError('config.json: mlp_bias = true is not supported', {
      hint: 'Llama-family MLPs have no biases',
    });
  const hidden = num(j, 'hidden_size', { int: true, min: 1 });
  const heads = num(j, 'num_attention_heads', { int: true, min: 1 });
  const kvHeads = num(j, 'num_key_value_heads', { int: true, min: 1, def: heads });
  if (heads % kvHeads !== 0) {
    throw new ConfigError(
      `config.json: num_attention_heads = ${heads} is not a multiple of num_key_value_heads = ${kvHeads}`,
    );
  }
  const headDim = num(j, 'head_dim', { int: true, min: 2, def: hidden / heads });
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new ConfigError(
      `config.json: head_dim = ${headDim} (hidden_size / num_attention_heads) must be an even integer`,
    );
  }
  const rotary = num(j, 'partial_rotary_factor', { min: 0, max: 1, def: 1 });
  const ropeDims = Math.round(headDim * rotary);
  if (ropeDims < 2 || ropeDims % 2 !== 0)
    throw new ConfigError(
      `config.json: partial_rotary_factor = ${rotary} rotates ${ropeDims} of head_dim ${headDim}, not an even number >= 2`,
    );
  let ropeScaling: RopeScaling | null = null;
  const rs = j['rope_scaling'];
  if (rs !== undefined && rs !== null) {
    const r = rs as Json;
    const type = r['rope_type'] ?? r['type'];
    if (type === 'llama3') {
      ropeScaling = {
        rope_type: 'llama3',
        factor: num(r, 'factor', { min: 1 }),
        low_freq_factor: num(r, 'low_freq_factor', { min: 0 }),
        high_freq_factor: num(r, 'high_freq_factor', { min: 0 }),
        original_max_position_embeddings: num(r, 'original_max_position_embeddings', { int: true, min: 1 }),
      };
      if (ropeScaling.high_freq_factor <= ropeScaling.low_freq_factor) {
        throw new ConfigError(
          'config.json: rope_scaling.high_freq_factor must be larger than low_freq_factor',
        );
      }
    } else if (type === 'linear') {
      ropeScaling = { rope_type: 'linear', factor: num(r, 'factor', { min: 1 }) };
    } else if (type === 'longrope') {
      ropeScaling = longRope(j, r, Math.round(headDim * rotary) / 2);
    } else if (type !== 'default') {
      throw new ConfigError(`config.json: rope_scaling type "${String(type)}" is not supported`, {
        hint: 'qtune implements llama3, linear and longrope rope scaling',
      });
    }
  }
  const qwen = modelType === 'qwen2' || modelType === 'qwen3' || modelType === 'smollm3';
  const layers = num(j, 'num_hidden_layers', { int: true, min: 1 });
  const window =
    modelType === 'mistral' || modelType === 'phi3' || gemma || (qwen && j['use_sliding_window'] === true)
      ? // Gemma 2's window unless told (HF's default; its config.json always has one)
        (j['sliding_window'] ?? (gemma2 ? 4096 : null))
      : null;
  const eos = tokenIds(j['eos_token_id'], 'eos_token_id');
  const bos = tokenIds(j['bos_token_id'], 'bos_token_id');
  const pad = tokenIds(j['pad_token_id'], 'pad_token_id');
  return {
    model_type: modelType as ModelType,
    // token ids are int32 in ggml
    vocab_size: num(j, 'vocab_size', { int: true, min: 1, max: 2 ** 31 - 1 }),
    hidden_size: hidden,
    intermediate_size: num(j, 'intermediate_size', { int: true, min: 1 }),
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    rms_norm_eps: num(j, 'rms_norm_eps', { min: 0, def: 1e-6 }),
    rope_theta: num(j, 'rope_theta', { min: 1, def: 10000 }),
    max_position_embeddings: num(j, 'max_position_embeddings', { int: true, min: 1, def: 2048 }),
    tie_word_embeddings: (j['tie_word_embeddings'] ?? gemma) === true,
    rope_scaling: ropeScaling,
    attention_bias: modelType === 'qwen2' || j['attention_bias'] === true,
    qk_norm: modelType === 'qwen3' || modelType === 'gemma3_text',
    sliding_window:
      window === undefined || window === null
        ? null
        : num({ sliding_window: window }, 'sliding_window', { int: true, min: 1 }),
    max_window_layers: qwen ? num(j, 'max_window_layers', { int: true, min: 0, def: 28 }) : 0,
    no_rope_layers: modelType === 'smollm3' ? noRopeLayers(j, layers) : null,
    fused_projections: modelType === 'phi3',
    rope_dims: ropeDims,
    hidden_act: gemma ? 'gelu_pytorch_tanh' : 'silu',
    norm_plus_one: gemma,
    sandwich_norms: gemma,
    embedding_scale: gemma ? Math.sqrt(hidden) : 1,
    query_pre_attn_scalar: gemma ? num(j, 'query_pre_attn_scalar', { min: 1, def: headDim }) : headDim,
    layer_types: gemma ? layerTypes(j, layers, gemma2 ? 2 : 6) : null,
    rope_local_base_freq:
      modelType === 'gemma3_text' ? num(j, 'rope_local_base_freq', { min: 1, def: 10000 }) : null,
    attn_logit_softcapping: cap('attn_logit_softcapping', 50),
    final_logit_softcapping: cap('final_logit_softcapping', 30),
    bos_token_id: bos[0] ?? null,
    eos_token_id: eos,
    pad_token_id: pad[0] ?? null,
    torch_dtype: typeof j['torch_dtype'] === 'string' ? j['torch_dtype'] : null,
  };
}

/** The `config.json` object for a config (what `createTinyModel` and GGUF import write). */
export function configToJson(c: LlamaConfig): Json {
  const j: Json = {
    architectures: [ARCHITECTURES[c.model_type]],
    model_type: c.model_type,
    vocab_size: c.vocab_size,
    hidden_size: c.hidden_size,
    intermediate_size: c.intermediate_size,
    num_hidden_layers: c.num_hidden_layers,
    num_attention_heads: c.num_attention_heads,
    num_key_value_heads: c.num_key_value_heads,
    head_dim: c.head_dim,
    hidden_act: c.hidden_act,
    rms_norm_eps: c.rms_norm_eps,
    rope_theta: c.rope_theta,
    max_position_embeddings: c.max_position_embeddings,
    tie_word_embeddings: c.tie_word_embeddings,
    rope_scaling: c.rope_scaling,
    torch_dtype: c.torch_dtype ?? 'float32',
  };
  if (c.model_type === 'llama' || c.model_type === 'qwen3' || c.model_type === 'smollm3')
    j['attention_bias'] = c.attention_bias;
  if (c.no_rope_layers !== null) j['no_rope_layers'] = c.no_rope_layers;
  if (c.model_type === 'gemma3_text' || c.model_type === 'gemma2') {
    j['query_pre_attn_scalar'] = c.query_pre_attn_scalar;
    j['layer_types'] = c.layer_types;
  }
  if (c.model_type === 'gemma3_text') j['rope_local_base_freq'] = c.rope_local_base_freq;
  if (c.model_type === 'gemma2') {
    j['attn_logit_softcapping'] = c.attn_logit_softcapping;
    j['final_logit_softcapping'] = c.final_logit_softcapping;
  }
  if (c.rope_dims !== c.head_dim) j['partial_rotary_factor'] = c.rope_dims / c.head_dim;
  if (c.rope_scaling?.rope_type === 'longrope')
    j['original_max_position_embeddings'] = c.rope_scaling.original_max_position_embeddings;
  if (c.sliding_window !== null) j['sliding_window'] = c.sliding_window;
  if (c.model_type === 'qwen2' || c.model_type === 'qwen3')
    j['use_sliding_window'] = c.sliding_window !== null;
  if (c.bos_token_id !== null) j['bos_token_id'] = c.bos_token_id;
  if (c.eos_token_id.length > 0)
    j['eos_token_id'] = c.eos_token_id.length === 1 ? c.eos_token_id[0] : c.eos_token_id;
  if (c.pad_token_id !== null) j['pad_token_id'] = c.pad_token_id;
  return j;
}
