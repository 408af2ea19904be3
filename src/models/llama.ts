/**
 * The Llama family in one file: Llama 2/3/3.1/3.2, TinyLlama, SmolLM, Mistral, Qwen2/2.5, Qwen3 and
 * SmolLM3 (whose `no_rope_layers` leave RoPE out of some layers), and Phi-3/3.5/4-mini (q, k, v from
 * one fused `qkv_proj`, gate and up from one `gate_up_proj`; LongRoPE; RoPE on part of each head),
 * and Gemma 2 and 3 (below).
 *
 *   x = embed_tokens[ids]
 *   per layer:  x += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = rms(x)·input_layernorm
 *               (Qwen3: q and k normed per head first, rope(rms(q_h)·q_norm), rope(rms(k_h)·k_norm))
 *               x += down_proj(silu(gate_proj(n)) · up_proj(n))                          n = rms(x)·post_attention_layernorm
 *   logits = lm_head(rms(x)·norm)          (lm_head = embed_tokens when tie_word_embeddings)
 *
 * Gemma 3: x = embed_tokens[ids]·√hidden; every norm scales by (1 + w); the attention's output is
 * normed (post_attention_layernorm) before it is added, the MLP is normed before
 * (pre_feedforward_layernorm) and after (post_feedforward_layernorm); the MLP is GeGLU with
 * tanh-GELU; scores scale by query_pre_attn_scalar^-½; sliding layers use their own RoPE base and
 * the window, global ones rope_theta with its scaling.
 *
 * Gemma 2: the same block without q/k norms and with one RoPE base; local and global layers
 * alternate (layer 0 local); the scaled scores are soft-capped, cap·tanh(s/cap), before the mask and
 * softmax (attn_logit_softcapping), and so are the logits (final_logit_softcapping).
 *
 * Weights are stored in the Hugging Face layout under the checkpoint's own names, so loading is a
 * walk over {@link llamaWeights}. Rotary embeddings use the HF (neox, rotate-half) layout; GGUF files,
 * whose q/k rows llama.cpp reorders, are converted back when they are read (src/models/llama-gguf.ts).
 */
import type { Backend } from '../engine/device.js';
import type { DType } from '../engine/dtype.js';
import { QtuneError } from '../errors.js';
import { checkpoint } from '../tensor/checkpoint.js';
import type { Graph } from '../tensor/graph.js';
import { add, affine, mul, scale } from '../tensor/ops/elementwise.js';
import { cast, concat, contiguous, permute, reshape, slice } from '../tensor/ops/layout.js';
import { linear, matmul } from '../tensor/ops/matmul.js';
import {
  embedding,
  gelu,
  llama3FreqFactors,
  rmsNorm,
  rope,
  softcap,
  softmax,
  swiglu,
} from '../tensor/ops/nn.js';
import { StoreGroup } from '../tensor/store-group.js';
import { TensorStore, type TensorSpec } from '../tensor/store.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LlamaConfig } from './config.js';
import { deviceOfGroup, mapDevices, singleDeviceMap, type DeviceMap } from './device-map.js';
import { llamaWeights, weightGroup, type WeightSpec } from './weights.js';

export { llamaWeights, weightGroup, type WeightRole, type WeightSpec } from './weights.js';

/**
 * Key and value cache for generation: `[B, n_kv_heads, capacity, head_dim]` per layer, each layer's
 * on the device of its block (`devices` is a backend, or the device of each layer of a split model).
 */
export class KVCache {
  readonly store: StoreGroup;
  readonly capacity: number;
  readonly batch: number;
  /** Tokens already in the cache. */
  length = 0;

  constructor(devices: Backend | ((layer: number) => Backend), c: LlamaConfig, capacity: number, batch = 1) {
    this.capacity = capacity;
    this.batch = batch;
    const deviceOf = typeof devices === 'function' ? devices : () => devices;
    const shape = [batch, c.num_key_value_heads, capacity, c.head_dim];
    const specs = [];
    for (let i = 0; i < c.num_hidden_layers; i++) {
      const backend = deviceOf(i);
      specs.push(
        { name: `k${i}`, shape, dtype: 'f32' as const, backend },
        { name: `v${i}`, shape, dtype: 'f32' as const, backend },
      );
    }
    this.store = StoreGroup.create(specs);
  }

  dispose(): void {
    this.store.dispose();
  }
}

/**
 * Replaces `linear(x, W)` of a module (named like `model.layers.0.self_attn.q_proj`) — how adapters
 * such as LoRA wrap a layer without the model knowing them. Return null to keep the plain product.
 * A module's bias is added after.
 */
export type LinearHook = (module: string, x: Tensor, weight: Tensor) => Tensor | null;

export interface ForwardOptions {
  linear?: LinearHook;
  /** Position of the first token (the cache length when generating). */
  start?: number;
  /** Reads earlier keys and values from it and schedules this call's into it. */
  cache?: KVCache;
  /** Compute logits for the last position only (generation). */
  lastOnly?: boolean;
  /**
   * Gradient checkpointing: keep only each decoder block's input for the backward pass and
   * recompute the block's activations there (training only; not with a cache).
   */
  checkpoint?: boolean;
  /**
   * An additive attention mask, 0 where a query may see a key and -Infinity where not: an f32 tensor
   * `[T, T]` (every sequence) or `[B, 1, T, T]` (per sequence, broadcast over heads), of keys
   * `start + T` wide. It adds to the causal mask, so for packed samples the block-diagonal mask that
   * src/data/packing.ts builds keeps each sample to its own tokens. Positions need not restart per
   * sample: RoPE makes attention depend only on the distance between query and key.
   */
  mask?: Tensor;
  /**
   * The output layer's matmul type: an f32 head weight is cast to it in the graph (the trainer's
   * low-precision modes, as the linear hook casts the blocks' weights). Default: the weight's type.
   */
  headDType?: 'f16' | 'bf16';
  /**
   * The tensor the output layer multiplies instead of the model's head weight: a trainer's
   * persistent copy of it (in the matmul type, with its transposed copy). Wins over `headDType`.
   */
  headWeight?: Tensor;
}

/**
 * The sliding window's additive mask `[T, start + T]`: query `start + t` sees key `k` when
 * `start + t - W < k` (the causal part is the softmax's own), else -Infinity.
 */
export function slidingWindowMask(start: number, T: number, W: number): Float32Array {
  const total = start + T;
  const m = new Float32Array(T * total);
  for (let t = 0; t < T; t++) {
    const first = start + t - W + 1; // the first key the query sees
    for (let k = 0; k < first && k < total; k++) m[t * total + k] = -Infinity;
  }
  return m;
}

export class LlamaModel {
  readonly config: LlamaConfig;
  /**
   * One store per decoder block and one for the rest, so a block's weights can be replaced (quantized,
   * moved) without the whole model existing twice.
   */
  private readonly groups: Map<string, TensorStore>;

  constructor(config: LlamaConfig, groups: Map<string, TensorStore>) {
    this.config = config;
    this.groups = groups;
  }

  /**
   * Allocates a model's weights (zero-filled) on `backend`, or split over devices by a
   * {@link DeviceMap}; `dtypeOf` picks each weight's storage type (norms and biases stay f32).
   */
  static allocate(
    placement: Backend | DeviceMap,
    config: LlamaConfig,
    dtypeOf: (w: WeightSpec) => DType = () => 'f32',
    trainable: (w: WeightSpec) => boolean = () => false,
  ): LlamaModel {
    const map = 'blocks' in placement ? placement : singleDeviceMap(placement, config.num_hidden_layers);
    if (map.blocks.length !== config.num_hidden_layers)
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `the device map places ${map.blocks.length} blocks, the model has ${config.num_hidden_layers}`,
      );
    const byGroup = new Map<string, TensorSpec[]>();
    for (const w of llamaWeights(config)) {
      const dtype = w.role === 'norm' || w.role === 'bias' ? ('f32' as const) : dtypeOf(w);
      const g = weightGroup(w.name);
      byGroup.set(g, [
        ...(byGroup.get(g) ?? []),
        { name: w.name, shape: w.shape, dtype, requiresGrad: trainable(w) },
      ]);
    }
    const groups = new Map<string, TensorStore>();
    try {
      for (const [g, specs] of byGroup) groups.set(g, TensorStore.create(deviceOfGroup(map, g), specs));
    } catch (e) {
      for (const st of groups.values()) st.dispose();
      throw e;
    }
    return new LlamaModel(config, groups);
  }

  /** Every weight, in checkpoint order. */
  tensors(): Tensor[] {
    return llamaWeights(this.config).map((w) => this.weight(w.name));
  }

  /** Bytes of all weight buffers. */
  get bytes(): number {
    let n = 0;
    for (const st of this.groups.values()) n += st.bytes;
    return n;
  }

  /** Writes f32 values (converted or quantized to the weight's type) or raw bytes into a weight. */
  write(name: string, data: Float32Array | Uint8Array): void {
    const t = this.weight(name);
    t.store!.write(t, data);
  }

  /** The store holding a decoder block's weights (or `model` for the rest). */
  group(key: string): TensorStore {
    const st = this.groups.get(key);
    if (st === undefined) throw new QtuneError('INVALID_ARGUMENT', `the model has no weight group ${key}`);
    return st;
  }

  /** Replaces a group's store (holding the same weight names) and frees the old one. */
  replaceGroup(key: string, store: TensorStore): void {
    const old = this.group(key);
    for (const t of old.tensors) {
      if (!store.has(t.name))
        throw new QtuneError('INVALID_ARGUMENT', `replacement for ${key} lacks ${t.name}`);
    }
    if (store.backend !== old.backend)
      throw new QtuneError('INVALID_ARGUMENT', `replacement for ${key} lives on another device`);
    this.groups.set(key, store);
    old.dispose();
  }

  /** The device of the embeddings and the LM head: the model's only one unless it is split. */
  get backend(): Backend {
    return this.group('model').backend;
  }

  /**
   * A copy of the model on another device, group by group (device to device through ggml); this
   * model stays valid. Quantized weights keep their bytes.
   *
   * @example
   * const onGpu = model.to(manager.select('vulkan'));
   * model.dispose(); // when the CPU copy is no longer needed
   */
  to(backend: Backend): LlamaModel {
    const groups = new Map<string, TensorStore>();
    try {
      for (const [key, store] of this.groups) groups.set(key, store.to(backend));
    } catch (e) {
      for (const st of groups.values()) st.dispose();
      throw e;
    }
    return new LlamaModel(this.config, groups);
  }

  /** Where each block (and the head group) lives. */
  get deviceMap(): DeviceMap {
    const c = this.config;
    return {
      blocks: Array.from({ length: c.num_hidden_layers }, (_, i) => this.group(`layer.${i}`).backend),
      model: this.backend,
    };
  }

  /**
   * Every device holding weights, in the order graphs over this model give ggml's scheduler: the
   * accelerators first in block order, the CPU last. One device unless the model is split.
   */
  get backends(): Backend[] {
    const list = mapDevices(this.deviceMap);
    return list.length === 1 ? list : [...list.filter((b) => !b.isCpu), ...list.filter((b) => b.isCpu)];
  }

  /** Whether the model's weights live on more than one device. */
  get isSplit(): boolean {
    return this.backends.length > 1;
  }

  /** Bytes of weights on `backend`. */
  bytesOn(backend: Backend): number {
    let n = 0;
    for (const st of this.groups.values()) if (st.backend === backend) n += st.bytes;
    return n;
  }

  weight(name: string): Tensor {
    return this.group(weightGroup(name)).get(name);
  }

  has(name: string): boolean {
    return this.groups.get(weightGroup(name))?.has(name) ?? false;
  }

  /**
   * The linear layers of the decoder blocks, by module name (`model.layers.0.self_attn.q_proj`, the
   * weight's name without `.weight`), in checkpoint order: the layers the forward's {@link LinearHook}
   * sees, and what an adapter may wrap. Read from {@link llamaWeights}, so it follows the config.
   *
   * @example
   * model.linearModules().length; // 7 * config.num_hidden_layers
   */
  linearModules(): string[] {
    return llamaWeights(this.config)
      .filter((w) => w.role === 'linear')
      .map((w) => w.name.slice(0, -'.weight'.length));
  }

  /**
   * Logits `[B, T, vocab]` (or `[B, 1, vocab]` with `lastOnly`) for token ids `[B, T]`, an i32 input
   * of `g`. Positions run from `start`.
   */
  forward(g: Graph, ids: Tensor, o: ForwardOptions = {}): Tensor {
    const { hidden, head } = this.forwardHidden(g, ids, o);
    return g.build(() => this.logits(hidden, head)); // (B, T, V)
  }

  /**
   * The forward pass up to the output layer: the final normed hidden state `[B, T, hidden]` and the
   * output layer's weight `[vocab, hidden]` as the forward would use it (cast to `headDType`), so
   * {@link logits}`(hidden, head)` are the logits (`linear(hidden, head)`, then Gemma 2's soft-cap). For
   * a loss that never holds all the logits at once (`linearCrossEntropy` with the config's
   * `final_logit_softcapping` as its `softcap`, the trainer's default).
   */
  forwardHidden(g: Graph, ids: Tensor, o: ForwardOptions = {}): { hidden: Tensor; head: Tensor } {
    const c = this.config;
    if (ids.dtype !== 'i32' || ids.rank !== 2)
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `LlamaModel.forward: ids must be i32 [B, T], got ${ids.toString()}`,
      );
    const [B, T] = ids.shape as [number, number];
    const start = o.start ?? o.cache?.length ?? 0;
    const total = start + T;
    if (o.checkpoint === true && o.cache !== undefined)
      throw new QtuneError(
        'INVALID_ARGUMENT',
        'gradient checkpointing is for training; it cannot fill a KV cache',
      );
    if (o.cache !== undefined && (total > o.cache.capacity || o.cache.batch !== B)) {
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `the KV cache holds ${o.cache.capacity} tokens for batch ${o.cache.batch}; asked for ${total} at batch ${B}`,
      );
    }
    if (o.mask !== undefined) {
      const m = o.mask.shape;
      const ok =
        o.mask.dtype === 'f32' &&
        ((m.length === 2 && m[0] === T && m[1] === total) ||
          (m.length === 4 && m[0] === B && m[1] === 1 && m[2] === T && m[3] === total));
      if (!ok)
        throw new QtuneError(
          'INVALID_ARGUMENT',
          `LlamaModel.forward: mask must be f32 [${T}, ${total}] or [${B}, 1, ${T}, ${total}], got ${o.mask.toString()}`,
        );
    }
    return g.build(() => {
      const positions = g.constant(
        Int32Array.from({ length: T }, (_, i) => start + i),
        [T],
        'positions',
      );
      const rs = c.rope_scaling;
      // LongRoPE (Phi-3): the long factors once the sequence is past the original context, as HF
      const longrope =
        rs?.rope_type === 'longrope'
          ? total > rs.original_max_position_embeddings
            ? rs.long_factor
            : rs.short_factor
          : null;
      const factors =
        rs?.rope_type === 'llama3'
          ? llama3FreqFactors({
              dims: c.rope_dims,
              base: c.rope_theta,
              factor: rs.factor,
              lowFreqFactor: rs.low_freq_factor,
              highFreqFactor: rs.high_freq_factor,
              originalMaxPositionEmbeddings: rs.original_max_position_embeddings,
            })
          : longrope === null
            ? null
            : Float32Array.from(longrope);
      const freqFactors = factors === null ? null : g.constant(factors, [c.rope_dims / 2], 'rope_freqs');
      // the sliding window as an additive mask, on the layers it applies to, when a query would
      // otherwise see keys beyond it
      const W = c.sliding_window;
      const windowed =
        W !== null && total > W
          ? g.constant(slidingWindowMask(start, T, W), [T, total], 'sliding_window_mask')
          : null;
      const windowMask =
        windowed === null ? undefined : o.mask === undefined ? windowed : add(o.mask, windowed);
      const ropeOpts = {
        mode: 'neox' as const,
        dims: c.rope_dims,
        base: c.rope_theta,
        freqScale: rs?.rope_type === 'linear' ? 1 / rs.factor : 1,
        freqFactors,
        nCtxOrig: c.max_position_embeddings,
        attnFactor: rs?.rope_type === 'longrope' ? rs.attention_factor : 1,
      };

      // Gemma 3's sliding layers: their own RoPE base, unscaled
      const localRope =
        c.rope_local_base_freq === null
          ? ropeOpts
          : { ...ropeOpts, base: c.rope_local_base_freq, freqScale: 1, freqFactors: null, attnFactor: 1 };
      const slides = (i: number): boolean =>
        c.layer_types === null ? i >= c.max_window_layers : c.layer_types[i] === 'sliding_attention';

      let x = embedding(this.weight('model.embed_tokens.weight'), ids); // (B, T, C)
      if (c.embedding_scale !== 1) x = scale(x, c.embedding_scale);
      for (let i = 0; i < c.num_hidden_layers; i++) {
        const block = (h: Tensor): Tensor => {
          const p = `model.layers.${i}`;
          const local = slides(i);
          let attn = this.attention(g, this.norm(h, `${p}.input_layernorm`), i, {
            B,
            T,
            start,
            positions,
            ropeOpts: local ? localRope : ropeOpts,
            cache: o.cache,
            hook: o.linear,
            mask: local && windowMask !== undefined ? windowMask : o.mask,
          });
          if (c.sandwich_norms) attn = this.norm(attn, `${p}.post_attention_layernorm`);
          h = add(h, attn);
          const n2 = this.norm(
            h,
            `${p}.${c.sandwich_norms ? 'pre_feedforward' : 'post_attention'}_layernorm`,
          );
          let mlp = this.project(`${p}.mlp.down_proj`, this.gatedUp(p, n2, o.linear), o.linear);
          if (c.sandwich_norms) mlp = this.norm(mlp, `${p}.post_feedforward_layernorm`);
          return add(h, mlp);
        };
        x = g.scope(`layers.${i}`, () => (o.checkpoint === true ? checkpoint([x], block) : block(x)));
      }
      if (o.lastOnly === true && T > 1) x = slice(x, 1, T - 1, T); // (B, 1, C)
      const h = this.norm(x, 'model.norm');
      const head = c.tie_word_embeddings
        ? this.weight('model.embed_tokens.weight')
        : this.weight('lm_head.weight');
      const headIn =
        o.headWeight ?? (o.headDType !== undefined && head.dtype === 'f32' ? cast(head, o.headDType) : head);
      return { hidden: h, head: headIn };
    });
  }

  /**
   * The logits of {@link forwardHidden}'s hidden state and head: `linear(hidden, head)`, soft-capped
   * where the config says (Gemma 2's final_logit_softcapping).
   */
  logits(hidden: Tensor, head: Tensor): Tensor {
    const z = linear(hidden, head);
    const cap = this.config.final_logit_softcapping;
    return cap === null ? z : softcap(z, cap);
  }

  /**
   * act(gate) · up of a block's MLP (silu, or Gemma's tanh-GELU), from gate_proj and up_proj or from
   * Phi-3's fused gate_up_proj.
   */
  private gatedUp(p: string, n: Tensor, hook: LinearHook | undefined): Tensor {
    const glu = (gate: Tensor, up: Tensor): Tensor =>
      this.config.hidden_act === 'silu' ? swiglu(gate, up) : mul(gelu(gate), up);
    if (!this.config.fused_projections)
      return glu(this.project(`${p}.mlp.gate_proj`, n, hook), this.project(`${p}.mlp.up_proj`, n, hook));
    const F = this.config.intermediate_size;
    const gu = this.project(`${p}.mlp.gate_up_proj`, n, hook); // (B, T, 2F): gate, then up
    return glu(slice(gu, -1, 0, F), slice(gu, -1, F, 2 * F));
  }

  /** RMSNorm of x's innermost axis times a norm weight `module.weight`: w, or Gemma's (1 + w). */
  private norm(x: Tensor, module: string): Tensor {
    const w = this.weight(`${module}.weight`);
    return mul(rmsNorm(x, this.config.rms_norm_eps), this.config.norm_plus_one ? affine(w, 1, 1) : w);
  }

  /** A module's linear layer: `x @ Wᵀ (+ bias)`, or what the hook makes of it. */
  private project(module: string, x: Tensor, hook: LinearHook | undefined): Tensor {
    const w = this.weight(`${module}.weight`);
    const y = hook?.(module, x, w) ?? linear(x, w);
    return this.has(`${module}.bias`) ? add(y, this.weight(`${module}.bias`)) : y;
  }

  private attention(
    g: Graph,
    n: Tensor,
    layer: number,
    a: {
      B: number;
      T: number;
      start: number;
      positions: Tensor;
      ropeOpts: Parameters<typeof rope>[2];
      cache: KVCache | undefined;
      hook: LinearHook | undefined;
      mask: Tensor | undefined;
    },
  ): Tensor {
    const c = this.config;
    const p = `model.layers.${layer}.self_attn`;
    const { B, T } = a;
    const H = c.num_attention_heads;
    const Hkv = c.num_key_value_heads;
    const hd = c.head_dim;
    // Phi-3: one product for q, k and v, cut into its q, k and v columns
    const fused = c.fused_projections ? this.project(`${p}.qkv_proj`, n, a.hook) : null;
    const offsets = { q: 0, k: H * hd, v: (H + Hkv) * hd };
    const proj = (name: 'q' | 'k' | 'v', heads: number): Tensor => {
      const flat =
        fused === null
          ? this.project(`${p}.${name}_proj`, n, a.hook)
          : contiguous(slice(fused, -1, offsets[name], offsets[name] + heads * hd));
      const x = reshape(flat, [B, T, heads, hd]);
      // Qwen3: an RMSNorm over each head's hd values (ggml normalises the innermost axis)
      return c.qk_norm && name !== 'v' ? this.norm(x, `${p}.${name}_norm`) : x;
    };
    // SmolLM3's NoPE layers attend without positions
    const withRope = (x: Tensor): Tensor =>
      c.no_rope_layers?.[layer] === 0 ? x : rope(x, a.positions, a.ropeOpts);
    const q = permute(withRope(proj('q', H)), [0, 2, 1, 3]); // (B, H, T, hd)
    let k = permute(withRope(proj('k', Hkv)), [0, 2, 1, 3]); // (B, Hkv, T, hd)
    let v = permute(proj('v', Hkv), [0, 2, 1, 3]); // (B, Hkv, T, hd)
    if (a.cache !== undefined) {
      const kc = a.cache.store.get(`k${layer}`);
      const vc = a.cache.store.get(`v${layer}`);
      g.assign(kc, k, { axis: 2, start: a.start });
      g.assign(vc, v, { axis: 2, start: a.start });
      if (a.start > 0) {
        k = concat(slice(kc, 2, 0, a.start), k, 2); // (B, Hkv, start+T, hd)
        v = concat(slice(vc, 2, 0, a.start), v, 2);
      }
    }
    // query heads h·r .. h·r+r-1 share kv head h (ggml's grouped broadcasting = HF's repeat_kv)
    const scores = g.label('attn.matmul', () => linear(q, k)); // (B, H, T, start+T)
    const s = 1 / Math.sqrt(c.query_pre_attn_scalar);
    const cap = c.attn_logit_softcapping;
    // Gemma 2 caps the scaled scores; the softmax then adds the masks to the capped ones
    const probs =
      cap === null
        ? softmax(scores, { scale: s, causal: true, mask: a.mask ?? null })
        : softmax(softcap(scale(scores, s), cap), { causal: true, mask: a.mask ?? null });
    const out = g.label('attn.matmul', () => matmul(probs, v)); // (B, H, T, hd)
    const merged = reshape(permute(out, [0, 2, 1, 3]), [B, T, H * hd]);
    return this.project(`${p}.o_proj`, merged, a.hook);
  }

  dispose(): void {
    for (const st of this.groups.values()) st.dispose();
  }
}
