/**
 * Llama-family models in GGUF: the metadata ↔ config.json mapping, tensor names, the q/k row order,
 * and the tokenizer.
 *
 * - Tensor names: `blk.N.attn_q.weight` ↔ `model.layers.N.self_attn.q_proj.weight`, and so on.
 * - llama.cpp's `llama` architecture stores q_proj and k_proj rows reordered for its RoPE layout:
 *   HF row h·d + j·d/2 + i is GGUF row h·d + 2i + j (DESIGN.md §5). qtune computes in the HF layout,
 *   so it reorders on the way in and out; rows are whole (quantized blocks run along them), so this
 *   moves bytes without touching values. `qwen2` and `qwen3` (neox RoPE in llama.cpp) are not.
 * - Architectures: `llama` (also Mistral, as llama.cpp's converter writes it), `qwen2`, `qwen3`,
 *   `smollm3`, `phi3`, `gemma2` (with its soft-caps) and `gemma3`.
 * - Tokenizer: qtune writes llama.cpp's own tokenizer metadata and also the complete HF
 *   `tokenizer.json` as `tokenizer.huggingface.json`, and reads that back; for other files it uses a
 *   `tokenizer.json` beside the file, or rebuilds one from `tokenizer.ggml.*` (src/io/gguf-tokenizer.ts).
 *
 * The file format itself is src/io/gguf.ts; this mapping is here, beside the model, because it reads
 * and writes LlamaConfig and LlamaModel, and io/ sits below models/ (DESIGN.md §4).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { GGML_TYPE_IDS, type DType } from '../engine/dtype.js';
import { getEngine } from '../engine/library.js';
import { ConfigError, FormatError, QtuneError, errorText } from '../errors.js';
import { ggufGet, kv, writeGguf, type GgufFile, type GgufKv, type GgufTensorToWrite } from '../io/gguf.js';
import { ggufTokenizerJson } from '../io/gguf-tokenizer.js';
import { Tokenizer } from '../io/tokenizer.js';
import { encode } from '../tensor/host.js';
import { parseLlamaConfig, type LlamaConfig } from './config.js';
import type { LlamaModel } from './llama.js';

const LAYER_NAMES: [string, string][] = [
  ['input_layernorm.weight', 'attn_norm.weight'],
  ['self_attn.q_proj.weight', 'attn_q.weight'],
  ['self_attn.k_proj.weight', 'attn_k.weight'],
  ['self_attn.v_proj.weight', 'attn_v.weight'],
  ['self_attn.q_proj.bias', 'attn_q.bias'],
  ['self_attn.k_proj.bias', 'attn_k.bias'],
  ['self_attn.v_proj.bias', 'attn_v.bias'],
  ['self_attn.q_norm.weight', 'attn_q_norm.weight'],
  ['self_attn.k_norm.weight', 'attn_k_norm.weight'],
  ['self_attn.o_proj.weight', 'attn_output.weight'],
  ['post_attention_layernorm.weight', 'ffn_norm.weight'],
  ['mlp.gate_proj.weight', 'ffn_gate.weight'],
  ['mlp.up_proj.weight', 'ffn_up.weight'],
  ['mlp.down_proj.weight', 'ffn_down.weight'],
];
const GLOBAL_NAMES: [string, string][] = [
  ['model.embed_tokens.weight', 'token_embd.weight'],
  ['model.norm.weight', 'output_norm.weight'],
  ['lm_head.weight', 'output.weight'],
];

/** Phi-3's fused layers: llama.cpp's `attn_qkv`, and `ffn_up` holding gate and up (gate first). */
const FUSED_LAYER_NAMES: [string, string][] = [
  ['self_attn.qkv_proj.weight', 'attn_qkv.weight'],
  ['mlp.gate_up_proj.weight', 'ffn_up.weight'],
];

/** Gemma's norms: after attention, and before and after the MLP (llama.cpp's names). */
const SANDWICH_NAMES: [string, string][] = [
  ['post_attention_layernorm.weight', 'post_attention_norm.weight'],
  ['pre_feedforward_layernorm.weight', 'ffn_norm.weight'],
  ['post_feedforward_layernorm.weight', 'post_ffw_norm.weight'],
];

type NameConfig = Pick<LlamaConfig, 'fused_projections' | 'sandwich_norms'>;

/** The per-layer name pairs of a config: Phi-3's fused layers and Gemma's norms come first. */
function layerNames(c: NameConfig | undefined): [string, string][] {
  return [
    ...(c?.sandwich_norms === true ? SANDWICH_NAMES : []),
    ...(c?.fused_projections === true ? FUSED_LAYER_NAMES : []),
    ...LAYER_NAMES,
  ];
}

/** The GGUF name of a Hugging Face checkpoint name (in a model of config `c`). */
export function hfToGgufName(name: string, c?: NameConfig): string {
  for (const [hf, gg] of GLOBAL_NAMES) if (name === hf) return gg;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(name);
  const names = layerNames({ fused_projections: true, sandwich_norms: c?.sandwich_norms ?? false });
  if (m !== null) for (const [hf, gg] of names) if (m[2] === hf) return `blk.${m[1]}.${gg}`;
  throw new QtuneError('INVALID_ARGUMENT', `no GGUF name for tensor ${name}`);
}

/**
 * The Hugging Face name of a GGUF tensor name in a model of config `c` (Phi-3's `ffn_up` is the
 * fused gate_up_proj, Gemma's `ffn_norm` the pre-MLP norm), or null for tensors qtune does not use.
 */
export function ggufToHfName(name: string, c?: NameConfig): string | null {
  for (const [hf, gg] of GLOBAL_NAMES) if (name === gg) return hf;
  const m = /^blk\.(\d+)\.(.+)$/.exec(name);
  if (m !== null) for (const [hf, gg] of layerNames(c)) if (m[2] === gg) return `model.layers.${m[1]}.${hf}`;
  return null;
}

/**
 * Reorders the rows of a q_proj/k_proj tensor between the HF and the llama.cpp layouts.
 * `toGguf`: HF row h·d + j·d/2 + i → GGUF row h·d + 2i + j; otherwise the inverse.
 */
export function reorderRopeRows(bytes: Uint8Array, rows: number, heads: number, toGguf: boolean): Uint8Array {
  const rowBytes = bytes.byteLength / rows;
  const d = rows / heads;
  const half = d / 2;
  const out = new Uint8Array(bytes.byteLength);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const hf = h * d + j * half + i;
        const gg = h * d + 2 * i + j;
        const [from, to] = toGguf ? [hf, gg] : [gg, hf];
        out.set(bytes.subarray(from * rowBytes, (from + 1) * rowBytes), to * rowBytes);
      }
    }
  }
  return out;
}

/** The GGUF architectures qtune reads and writes. */
export type GgufArch = 'llama' | 'qwen2' | 'qwen3' | 'smollm3' | 'phi3' | 'gemma2' | 'gemma3';
const GGUF_ARCHS: readonly GgufArch[] = ['llama', 'qwen2', 'qwen3', 'smollm3', 'phi3', 'gemma2', 'gemma3'];

/** llama.cpp's SmolLM3 leaves RoPE out of every layer `i` with `(i + 1) % 4 == 0`, and stores no list. */
const SMOLLM3_NO_ROPE_STEP = 4;

/** llama.cpp's architecture name for a config (Mistral is `llama`, as llama.cpp's converter writes it). */
export function ggufArch(c: LlamaConfig): GgufArch {
  return c.model_type === 'mistral' ? 'llama' : c.model_type === 'gemma3_text' ? 'gemma3' : c.model_type;
}

/**
 * The head count whose rows llama.cpp reorders in this tensor (q_proj, k_proj of `llama` and
 * `smollm3`, whose RoPE is llama.cpp's normal one), or null.
 */
export function ropeHeads(c: LlamaConfig, hfName: string): number | null {
  const arch = ggufArch(c);
  if (arch !== 'llama' && arch !== 'smollm3') return null;
  if (/\.self_attn\.q_proj\.(weight|bias)$/.test(hfName)) return c.num_attention_heads;
  if (/\.self_attn\.k_proj\.(weight|bias)$/.test(hfName)) return c.num_key_value_heads;
  return null;
}

/**
 * Gemma's norm weights, `w` in HF's (1 + w), are stored in GGUF as 1 + w (llama.cpp multiplies by
 * the stored weight): `delta` +1 on the way out, -1 on the way in. Norms are f32.
 */
function shiftNorm(c: LlamaConfig, hfName: string, bytes: Uint8Array, delta: number): Uint8Array {
  if (!c.norm_plus_one || !hfName.endsWith('norm.weight')) return bytes;
  const v = new Float32Array(bytes.slice().buffer);
  for (let i = 0; i < v.length; i++) v[i] = v[i]! + delta;
  return new Uint8Array(v.buffer);
}

/** Converts a GGUF tensor's bytes to the HF row order (and Gemma's norms to HF's offsets). */
export function ggufTensorToHf(
  c: LlamaConfig,
  hfName: string,
  shape: readonly number[],
  bytes: Uint8Array,
): Uint8Array {
  const heads = ropeHeads(c, hfName);
  const rows = heads === null ? bytes : reorderRopeRows(bytes, shape[0]!, heads, false);
  return shiftNorm(c, hfName, rows, -1);
}

/** The GGUF metadata key (after `<arch>.`) of each config.json field ggufToConfig reads from one. */
const GGUF_CONFIG_KEYS: Record<string, string> = {
  vocab_size: 'vocab_size',
  hidden_size: 'embedding_length',
  intermediate_size: 'feed_forward_length',
  num_hidden_layers: 'block_count',
  num_attention_heads: 'attention.head_count',
  num_key_value_heads: 'attention.head_count_kv',
  head_dim: 'attention.key_length',
  rms_norm_eps: 'attention.layer_norm_rms_epsilon',
  rope_theta: 'rope.freq_base',
  max_position_embeddings: 'context_length',
};

/** The config of a GGUF model (the architectures of {@link GgufArch}). */
export function ggufToConfig(g: GgufFile): LlamaConfig {
  const arch = ggufGet(g, 'general.architecture', 'string');
  if (!(GGUF_ARCHS as readonly unknown[]).includes(arch)) {
    throw new ConfigError(`${g.path}: general.architecture "${String(arch)}" is not supported`, {
      hint: `qtune reads ${GGUF_ARCHS.join(', ')} GGUF models`,
    });
  }
  const n = (key: string, def?: number): number | undefined => ggufGet(g, `${arch}.${key}`, 'number') ?? def;
  const embd = g.tensors.get('token_embd.weight');
  if (embd === undefined) throw new FormatError(g.path, 'has no token_embd.weight');
  const hidden = n('embedding_length');
  const heads = n('attention.head_count');
  const j: Record<string, unknown> = {
    model_type: arch === 'gemma3' ? 'gemma3_text' : arch,
    vocab_size: n('vocab_size') ?? embd.shape[0],
    hidden_size: hidden,
    intermediate_size: n('feed_forward_length'),
    num_hidden_layers: n('block_count'),
    num_attention_heads: heads,
    num_key_value_heads: n('attention.head_count_kv', heads),
    head_dim: n(
      'attention.key_length',
      hidden !== undefined && heads !== undefined ? hidden / heads : undefined,
    ),
    rms_norm_eps: n('attention.layer_norm_rms_epsilon'),
    rope_theta: n('rope.freq_base', 10000),
    max_position_embeddings: n('context_length', 2048),
    tie_word_embeddings: !g.tensors.has('output.weight'),
    attention_bias: g.tensors.has('blk.0.attn_q.bias'),
    bos_token_id: ggufGet(g, 'tokenizer.ggml.bos_token_id', 'number'),
    eos_token_id: ggufGet(g, 'tokenizer.ggml.eos_token_id', 'number'),
    pad_token_id: ggufGet(g, 'tokenizer.ggml.padding_token_id', 'number'),
  };
  const ropeDims = n('rope.dimension_count');
  if (ropeDims !== undefined && typeof j['head_dim'] === 'number' && ropeDims !== j['head_dim'])
    j['partial_rotary_factor'] = ropeDims / j['head_dim'];
  const window = n('attention.sliding_window');
  if (window !== undefined) j['sliding_window'] = window;
  if (arch === 'gemma2') {
    // llama.cpp's Gemma 2: caps 50 and 30 unless stored, scores scaled by head_dim^-½ (by
    // (hidden/heads)^-½ for the 46-layer 27B)
    j['attn_logit_softcapping'] = n('attn_logit_softcapping', 50);
    j['final_logit_softcapping'] = n('final_logit_softcapping', 30);
    if (typeof j['head_dim'] === 'number' && hidden !== undefined && heads !== undefined)
      j['query_pre_attn_scalar'] = j['num_hidden_layers'] === 46 ? hidden / heads : j['head_dim'];
  }
  const hfConfig = ggufGet(g, 'qtune.hf_config', 'string');
  if (hfConfig !== undefined) {
    // rope scaling and the sliding window as the HF config had them
    const extra = jsonObject(g, 'qtune.hf_config', hfConfig);
    for (const k of [
      'no_rope_layers',
      'layer_types',
      'rope_local_base_freq',
      'query_pre_attn_scalar',
      'attn_logit_softcapping',
      'final_logit_softcapping',
      'rope_scaling',
      'sliding_window',
      'use_sliding_window',
      'max_window_layers',
      'model_type',
      'eos_token_id',
      'torch_dtype',
    ]) {
      if (k in extra) j[k] = extra[k];
    }
  } else {
    const scaling = ggufGet(g, `${arch}.rope.scaling.type`, 'string');
    if (scaling === 'linear')
      j['rope_scaling'] = { rope_type: 'linear', factor: n('rope.scaling.factor', 1) };
    else if (g.tensors.has('rope_freqs.weight') || g.tensors.has('rope_factors_long.weight')) {
      throw new ConfigError(
        `${g.path}: rope scaling stored only as rope_freqs/rope_factors is not read yet`,
        {
          hint: 'convert from the Hugging Face folder, or put its config.json beside the GGUF file',
        },
      );
    }
  }
  try {
    return parseLlamaConfig(j);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    const field = e.details['field'];
    const key = typeof field === 'string' ? GGUF_CONFIG_KEYS[field] : undefined;
    const what = e.problem.replace('config.json: ', '');
    throw new ConfigError(`${g.path}: ${what}`, {
      hint:
        key === undefined
          ? 'the GGUF metadata does not describe a model qtune reads'
          : `it comes from the GGUF metadata ${arch}.${key}; the file is corrupt or not a ${arch} model`,
    });
  }
}

/** A metadata string that holds a JSON object, parsed. */
function jsonObject(g: GgufFile, key: string, text: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new FormatError(g.path, `metadata ${key} is not valid JSON (${errorText(e)})`, {
      hint: 'the file is corrupt; convert the model again',
    });
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new FormatError(g.path, `metadata ${key} is not a JSON object`, {
      hint: 'the file is corrupt; convert the model again',
    });
  return v as Record<string, unknown>;
}

/** The tokenizer of a GGUF file (see the module comment for the order of sources). */
export function ggufTokenizer(g: GgufFile, config: LlamaConfig): Tokenizer {
  const embedded = ggufGet(g, 'tokenizer.huggingface.json', 'string');
  const chat = ggufGet(g, 'tokenizer.chat_template', 'string');
  const tokConfigJson = ggufGet(g, 'qtune.tokenizer_config', 'string');
  const tokConfig = tokConfigJson !== undefined ? jsonObject(g, 'qtune.tokenizer_config', tokConfigJson) : {};
  if (chat !== undefined) tokConfig['chat_template'] = chat;
  if (embedded !== undefined)
    return new Tokenizer(
      jsonObject(g, 'tokenizer.huggingface.json', embedded),
      tokConfig,
      config.eos_token_id,
    );
  const dir = path.dirname(g.path);
  if (existsSync(path.join(dir, 'tokenizer.json')))
    return Tokenizer.fromFolder(dir, config.eos_token_id, tokConfig);
  const json = ggufTokenizerJson(g);
  if (json !== null) {
    const tokens = ggufGet(g, 'tokenizer.ggml.tokens', 'array') as string[];
    const name = (id: number | null) => (id === null ? undefined : tokens[id]);
    const bos = name(config.bos_token_id);
    const eos = name(config.eos_token_id[0] ?? null);
    if (bos !== undefined) tokConfig['bos_token'] = bos;
    if (eos !== undefined) tokConfig['eos_token'] = eos;
    return new Tokenizer(json, tokConfig, config.eos_token_id);
  }
  const model = ggufGet(g, 'tokenizer.ggml.model', 'string');
  throw new QtuneError(
    'NOT_FOUND',
    `${g.path}: its tokenizer (tokenizer.ggml.model = ${String(model)}) cannot be rebuilt by qtune`,
    {
      hint: "put the model's tokenizer.json (and tokenizer_config.json) beside the GGUF file",
    },
  );
}

/** Metadata for llama.cpp's tokenizer, plus the HF files qtune reads back. */
function tokenizerKv(tok: Tokenizer, c: LlamaConfig): Map<string, GgufKv> {
  const out = new Map<string, GgufKv>();
  const model = tok.json['model'] as Record<string, unknown>;
  const vocab = model['vocab'] as Record<string, number>;
  const tokens = new Array<string>(c.vocab_size);
  const types = new Array<number>(c.vocab_size).fill(1);
  for (const [t, id] of Object.entries(vocab)) if (id < c.vocab_size) tokens[id] = t;
  const special = new Set<number>();
  for (const a of (tok.json['added_tokens'] as Record<string, unknown>[] | undefined) ?? []) {
    const id = a['id'] as number;
    if (id >= c.vocab_size) continue;
    tokens[id] = a['content'] as string;
    types[id] = a['special'] === true ? 3 : 4;
    if (a['special'] === true) special.add(id);
  }
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i] === undefined) {
      tokens[i] = `[PAD${i}]`;
      types[i] = 5; // unused
    }
  }
  const rawMerges = (model['merges'] as (string | [string, string])[] | undefined) ?? [];
  const merges = rawMerges.map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));
  const spm = model['byte_fallback'] === true;
  if (spm) {
    // SentencePiece-style BPE (Llama 2, Mistral): scores are minus the rank of the merge that makes
    // each token, which reproduces the HF tokenizer in llama.cpp (DESIGN.md §5)
    const rank = new Map<string, number>();
    merges.forEach((m, r) => {
      const t = m.replace(' ', '');
      if (!rank.has(t)) rank.set(t, r);
    });
    const scores = tokens.map((t) => -(rank.get(t) ?? 0));
    tokens.forEach((t, i) => {
      if (/^<0x[0-9A-F]{2}>$/.test(t)) types[i] = 6;
      else if (t === '<unk>') types[i] = 2;
    });
    out.set('tokenizer.ggml.model', kv.str('llama'));
    out.set('tokenizer.ggml.scores', kv.f32s(scores));
  } else {
    out.set('tokenizer.ggml.model', kv.str('gpt2'));
    // Qwen3 has Qwen2's pre-tokenizer, and llama.cpp's converter names it so; SmolLM3 has Llama 3's
    const arch = ggufArch(c);
    out.set('tokenizer.ggml.pre', kv.str(arch === 'qwen2' || arch === 'qwen3' ? 'qwen2' : 'llama-bpe'));
    out.set('tokenizer.ggml.merges', kv.strings(merges));
  }
  out.set('tokenizer.ggml.tokens', kv.strings(tokens));
  out.set('tokenizer.ggml.token_type', kv.i32s(types));
  if (tok.bosId !== null) out.set('tokenizer.ggml.bos_token_id', kv.u32(tok.bosId));
  const eos = c.eos_token_id[0] ?? tok.eosIds[0];
  if (eos !== undefined) out.set('tokenizer.ggml.eos_token_id', kv.u32(eos));
  if (tok.padId !== null) out.set('tokenizer.ggml.padding_token_id', kv.u32(tok.padId));
  const addBos = tok.config['add_bos_token'];
  out.set('tokenizer.ggml.add_bos_token', kv.bool(typeof addBos === 'boolean' ? addBos : spm));
  out.set('tokenizer.chat_template', kv.str(tok.chatTemplate));
  out.set('tokenizer.huggingface.json', kv.str(JSON.stringify(tok.json)));
  const cfg = { ...tok.config };
  delete cfg['chat_template'];
  out.set('qtune.tokenizer_config', kv.str(JSON.stringify(cfg)));
  return out;
}

/**
 * llama.cpp's Gemma 2 metadata: both soft-caps. What llama.cpp cannot express is refused, as it would
 * run another model: a missing cap (it always caps), local and global layers other than alternating
 * from a local layer 0, and a `query_pre_attn_scalar` other than the one it derives.
 */
function gemma2Kv(file: string, c: LlamaConfig): [string, GgufKv][] {
  const refuse = (what: string): never => {
    throw new ConfigError(`${file}: ${what}, which llama.cpp's gemma2 cannot express`, {
      hint: 'llama.cpp would run another model; save a Hugging Face folder instead',
    });
  };
  const attn = c.attn_logit_softcapping;
  const final = c.final_logit_softcapping;
  if (attn === null || final === null) return refuse('a soft-cap is off (null)');
  if (c.layer_types?.some((t, i) => (t === 'sliding_attention') !== (i % 2 === 0)) === true)
    refuse(`layer_types ${JSON.stringify(c.layer_types)} do not alternate from a sliding layer 0`);
  const derived = c.num_hidden_layers === 46 ? c.hidden_size / c.num_attention_heads : c.head_dim;
  if (c.query_pre_attn_scalar !== derived)
    refuse(
      `query_pre_attn_scalar = ${c.query_pre_attn_scalar} differs from ${derived} (head_dim, or hidden/heads at 46 layers)`,
    );
  return [
    ['gemma2.attn_logit_softcapping', kv.f32(attn)],
    ['gemma2.final_logit_softcapping', kv.f32(final)],
  ];
}

/**
 * Writes a model as GGUF (architecture {@link ggufArch}), each tensor in its stored type, or
 * converted to `dtype` when given (norms stay f32).
 */
export function writeLlamaGguf(
  file: string,
  model: LlamaModel,
  tokenizer: Tokenizer,
  o: { dtype?: DType; name?: string } = {},
): void {
  const c = model.config;
  const arch = ggufArch(c);
  const nope = c.no_rope_layers;
  if (nope !== null && nope.some((r, i) => r !== ((i + 1) % SMOLLM3_NO_ROPE_STEP === 0 ? 0 : 1)))
    throw new ConfigError(
      `${file}: no_rope_layers ${JSON.stringify(nope)} is not llama.cpp's pattern (no RoPE in every ${SMOLLM3_NO_ROPE_STEP}th layer)`,
      { hint: 'llama.cpp would run another model; save a Hugging Face folder instead' },
    );
  const meta = new Map<string, GgufKv>([
    ['general.architecture', kv.str(arch)],
    ['general.name', kv.str(o.name ?? 'qtune model')],
    [`${arch}.vocab_size`, kv.u32(c.vocab_size)],
    [`${arch}.context_length`, kv.u32(c.max_position_embeddings)],
    [`${arch}.embedding_length`, kv.u32(c.hidden_size)],
    [`${arch}.block_count`, kv.u32(c.num_hidden_layers)],
    [`${arch}.feed_forward_length`, kv.u32(c.intermediate_size)],
    [`${arch}.attention.head_count`, kv.u32(c.num_attention_heads)],
    [`${arch}.attention.head_count_kv`, kv.u32(c.num_key_value_heads)],
    [`${arch}.attention.key_length`, kv.u32(c.head_dim)],
    [`${arch}.attention.value_length`, kv.u32(c.head_dim)],
    [`${arch}.rope.dimension_count`, kv.u32(c.rope_dims)],
    [`${arch}.attention.layer_norm_rms_epsilon`, kv.f32(c.rms_norm_eps)],
    [`${arch}.rope.freq_base`, kv.f32(c.rope_theta)],
    [
      'qtune.hf_config',
      kv.str(
        JSON.stringify({
          model_type: c.model_type,
          rope_scaling: c.rope_scaling,
          sliding_window: c.sliding_window,
          use_sliding_window: c.sliding_window !== null,
          max_window_layers: c.max_window_layers,
          no_rope_layers: c.no_rope_layers,
          ...(c.model_type === 'gemma3_text'
            ? {
                layer_types: c.layer_types,
                rope_local_base_freq: c.rope_local_base_freq,
                query_pre_attn_scalar: c.query_pre_attn_scalar,
              }
            : {}),
          ...(c.model_type === 'gemma2'
            ? {
                layer_types: c.layer_types,
                query_pre_attn_scalar: c.query_pre_attn_scalar,
                attn_logit_softcapping: c.attn_logit_softcapping,
                final_logit_softcapping: c.final_logit_softcapping,
              }
            : {}),
          eos_token_id: c.eos_token_id,
          torch_dtype: c.torch_dtype,
        }),
      ),
    ],
  ]);
  if (c.rope_scaling?.rope_type === 'linear') {
    meta.set(`${arch}.rope.scaling.type`, kv.str('linear'));
    meta.set(`${arch}.rope.scaling.factor`, kv.f32(c.rope_scaling.factor));
  }
  if (c.sliding_window !== null) meta.set(`${arch}.attention.sliding_window`, kv.u32(c.sliding_window));
  if (c.rope_local_base_freq !== null) meta.set(`${arch}.rope.freq_base_swa`, kv.f32(c.rope_local_base_freq));
  if (c.model_type === 'gemma2') for (const [k, v] of gemma2Kv(file, c)) meta.set(k, v);
  for (const [k, v] of tokenizerKv(tokenizer, c)) meta.set(k, v);

  const tensors: GgufTensorToWrite[] = [];
  if (c.rope_scaling?.rope_type === 'longrope') {
    // llama.cpp's LongRoPE: both factor lists as tensors, the attention factor and the original context
    const rs = c.rope_scaling;
    meta.set(`${arch}.rope.scaling.attn_factor`, kv.f32(rs.attention_factor));
    meta.set(`${arch}.rope.scaling.original_context_length`, kv.u32(rs.original_max_position_embeddings));
    for (const [name, f] of [
      ['rope_factors_long.weight', rs.long_factor],
      ['rope_factors_short.weight', rs.short_factor],
    ] as const) {
      const data = Float32Array.from(f);
      tensors.push({ name, shape: [f.length], dtype: 'f32', data: new Uint8Array(data.buffer) });
    }
  }
  for (const t of model.tensors()) {
    let bytes = t.store!.readBytes(t);
    let dtype = t.dtype;
    if (o.dtype !== undefined && o.dtype !== dtype && t.rank === 2) {
      const { api } = getEngine();
      const inner = t.shape[1]!;
      if (inner % api.blck_size(GGML_TYPE_IDS[o.dtype]) === 0) {
        bytes = encode(o.dtype, t.read(), t.shape);
        dtype = o.dtype;
      }
    }
    const heads = ropeHeads(c, t.name);
    if (heads !== null) bytes = reorderRopeRows(bytes, t.shape[0]!, heads, true);
    bytes = shiftNorm(c, t.name, bytes, 1);
    tensors.push({ name: hfToGgufName(t.name, c), shape: t.shape, dtype, data: bytes });
  }
  writeGguf(file, meta, tensors);
}
