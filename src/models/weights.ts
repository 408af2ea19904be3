/**
 * The weights of a Llama-family model, by config: each weight's checkpoint name (the Hugging Face
 * one), shape `[out, in]` and role, and the storage group it lives in. What a family adds (biases,
 * Qwen3's q/k norms, Phi-3's fused layers, Gemma's norms around attention and MLP) is read here from
 * the config, so loading, quantizing, adapting and saving all follow one list.
 */
import type { LlamaConfig } from './config.js';

export type WeightRole = 'embedding' | 'linear' | 'norm' | 'bias' | 'lm_head';

export interface WeightSpec {
  name: string;
  shape: number[];
  role: WeightRole;
}

/** Every weight of a model: its checkpoint name, shape `[out, in]` and role. */
export function llamaWeights(c: LlamaConfig): WeightSpec[] {
  const hd = c.head_dim;
  const w: WeightSpec[] = [
    { name: 'model.embed_tokens.weight', shape: [c.vocab_size, c.hidden_size], role: 'embedding' },
  ];
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    w.push({ name: `${p}.input_layernorm.weight`, shape: [c.hidden_size], role: 'norm' });
    const qkv: [string, number][] = [
      ['q', c.num_attention_heads * hd],
      ['k', c.num_key_value_heads * hd],
      ['v', c.num_key_value_heads * hd],
    ];
    if (c.fused_projections) {
      const rows = qkv.reduce((n, [, r]) => n + r, 0);
      w.push({ name: `${p}.self_attn.qkv_proj.weight`, shape: [rows, c.hidden_size], role: 'linear' });
    } else {
      for (const [x, rows] of qkv)
        w.push({ name: `${p}.self_attn.${x}_proj.weight`, shape: [rows, c.hidden_size], role: 'linear' });
    }
    if (c.attention_bias) {
      w.push({ name: `${p}.self_attn.q_proj.bias`, shape: [c.num_attention_heads * hd], role: 'bias' });
      w.push({ name: `${p}.self_attn.k_proj.bias`, shape: [c.num_key_value_heads * hd], role: 'bias' });
      w.push({ name: `${p}.self_attn.v_proj.bias`, shape: [c.num_key_value_heads * hd], role: 'bias' });
    }
    if (c.qk_norm) {
      w.push({ name: `${p}.self_attn.q_norm.weight`, shape: [hd], role: 'norm' });
      w.push({ name: `${p}.self_attn.k_norm.weight`, shape: [hd], role: 'norm' });
    }
    w.push({
      name: `${p}.self_attn.o_proj.weight`,
      shape: [c.hidden_size, c.num_attention_heads * hd],
      role: 'linear',
    });
    w.push({ name: `${p}.post_attention_layernorm.weight`, shape: [c.hidden_size], role: 'norm' });
    if (c.sandwich_norms) {
      w.push({ name: `${p}.pre_feedforward_layernorm.weight`, shape: [c.hidden_size], role: 'norm' });
      w.push({ name: `${p}.post_feedforward_layernorm.weight`, shape: [c.hidden_size], role: 'norm' });
    }
    const F = c.intermediate_size;
    if (c.fused_projections)
      w.push({ name: `${p}.mlp.gate_up_proj.weight`, shape: [2 * F, c.hidden_size], role: 'linear' });
    else {
      w.push({ name: `${p}.mlp.gate_proj.weight`, shape: [F, c.hidden_size], role: 'linear' });
      w.push({ name: `${p}.mlp.up_proj.weight`, shape: [F, c.hidden_size], role: 'linear' });
    }
    w.push({
      name: `${p}.mlp.down_proj.weight`,
      shape: [c.hidden_size, c.intermediate_size],
      role: 'linear',
    });
  }
  w.push({ name: 'model.norm.weight', shape: [c.hidden_size], role: 'norm' });
  if (!c.tie_word_embeddings)
    w.push({ name: 'lm_head.weight', shape: [c.vocab_size, c.hidden_size], role: 'lm_head' });
  return w;
}

/** The storage group of a weight: `layer.N` for decoder block N, else `model`. */
export function weightGroup(name: string): string {
  const m = /^model\.layers\.(\d+)\./.exec(name);
  return m === null ? 'model' : `layer.${m[1]}`;
}
