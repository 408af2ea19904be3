/**
 * The neural-network ops of a Llama-family block: embedding lookup, RMS norm, rotary embeddings,
 * softmax with scale and causal mask, soft-capping, SiLU / SwiGLU / GELU, dropout. Each forward sits beside its
 * gradient rule; where ggml has a backward op (rms_norm_back, rope_ext_back, soft_max_ext_back,
 * silu_back, get_rows_back) the rule uses it, otherwise it is composed from forward ops.
 */
import type { CtxPtr, TensorPtr } from '../../engine/ggml.js';
import { DTypeError, QtuneError, ShapeError, fmtShape } from '../../errors.js';
import { numel } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { anyGrad, ggml, graphOf, requireF32, template } from './common.js';
import { affine, mul, scale } from './elementwise.js';
import { contiguous, reshape } from './layout.js';

/** Rows of `table` `[V, C]` picked by integer `ids` (any shape) → `[...ids.shape, C]`. */
export function embedding(table: Tensor, ids: Tensor): Tensor {
  const g = graphOf('embedding', table, ids);
  if (ids.dtype !== 'i32') throw new DTypeError(`embedding: ids must be i32, got ${ids.dtype}`);
  if (table.rank !== 2)
    throw new ShapeError(`embedding: table must be [vocab, dim], got ${fmtShape(table.shape)}`);
  const [V, C] = table.shape as [number, number];
  // get_rows aborts on an id outside the table: the graph checks every set of the ids first
  g.limitIndices(ids, V, `${table.name || 'embedding'} lookup`);
  const flat = ids.rank === 1 ? ids : reshape(ids, [ids.numel]);
  const rows = g.node(
    (ctx) => ggml().get_rows(ctx, table.ptr, flat.ptr),
    [ids.numel, C],
    'f32',
    table.requiresGrad,
    'embedding',
  );
  const picked = g.record('embedding', [table], rows, (dy) => [
    g.node(
      (ctx) => ggml().get_rows_back(ctx, contiguous(dy).ptr, flat.ptr, template(g, [V, C])),
      [V, C],
      'f32',
      false,
    ),
  ]);
  return ids.rank === 1 ? picked : reshape(picked, [...ids.shape, C]);
}

/** x / sqrt(mean(x², last axis) + eps) — RMSNorm without its weight (multiply by it with `mul`). */
export function rmsNorm(x: Tensor, eps: number): Tensor {
  const g = graphOf('rmsNorm', x);
  requireF32('rmsNorm', x);
  const src = contiguous(x);
  const y = g.node((ctx) => ggml().rms_norm(ctx, src.ptr, eps), x.shape, 'f32', src.requiresGrad, 'rms_norm');
  return g.record('rmsNorm', [src], y, (dy) => [
    g.node((ctx) => ggml().rms_norm_back(ctx, contiguous(dy).ptr, src.ptr, eps), x.shape, 'f32', false),
  ]);
}

export interface RopeOptions {
  /** Rotated dimensions per head (default: the whole head). */
  dims?: number;
  /** `normal` rotates adjacent pairs (GGUF llama layout); `neox` rotates the two halves (HF layout). */
  mode: 'normal' | 'neox';
  /** rope_theta */
  base: number;
  /** Linear position scaling (1 = none). */
  freqScale?: number;
  /** Per-frequency divisors `[dims/2]` (llama3 scaling, see {@link llama3FreqFactors}). */
  freqFactors?: Tensor | null;
  /** Original context length (used by YaRN only; kept for ggml). */
  nCtxOrig?: number;
  /** Scales cos and sin (LongRoPE's attention factor; 1 = none). */
  attnFactor?: number;
}

const ROPE_MODE = { normal: 0, neox: 2 } as const;

/**
 * Rotary position embedding of x `[..., T, H, D]` (tokens, heads, head dim) at integer `positions`
 * `[T]`.
 */
export function rope(x: Tensor, positions: Tensor, o: RopeOptions): Tensor {
  const g = graphOf('rope', x, positions, o.freqFactors);
  requireF32('rope', x);
  if (positions.dtype !== 'i32' || positions.rank !== 1)
    throw new DTypeError('rope: positions must be an i32 vector [T]');
  if (x.rank < 3 || x.rank > 4 || x.shape[x.rank - 3] !== positions.shape[0]) {
    throw new ShapeError(
      `rope: x must be [..., T, heads, head_dim] with T = ${positions.shape[0]} positions, got ${fmtShape(x.shape)}`,
    );
  }
  const D = x.shape[x.rank - 1]!;
  const dims = o.dims ?? D;
  if (dims % 2 !== 0 || dims > D)
    throw new ShapeError(`rope: dims=${dims} must be even and at most head_dim=${D}`);
  const ff = o.freqFactors ?? null;
  if (ff !== null && (ff.dtype !== 'f32' || ff.numel !== dims / 2)) {
    throw new ShapeError(`rope: freqFactors must be f32 [${dims / 2}], got ${ff.toString()}`);
  }
  const params = [
    dims,
    ROPE_MODE[o.mode],
    o.nCtxOrig ?? 0,
    o.base,
    o.freqScale ?? 1,
    0,
    o.attnFactor ?? 1,
    0,
    0,
  ] as const;
  const src = contiguous(x);
  const api = ggml();
  const y = g.node(
    (ctx) => api.rope_ext(ctx, src.ptr, positions.ptr, ff?.ptr ?? null, ...params),
    x.shape,
    'f32',
    src.requiresGrad,
    'rope',
  );
  return g.record('rope', [src], y, (dy) => [
    g.node(
      (ctx) => api.rope_ext_back(ctx, contiguous(dy).ptr, positions.ptr, ff?.ptr ?? null, ...params),
      x.shape,
      'f32',
      false,
    ),
  ]);
}

/**
 * Llama 3.1's rope scaling as per-frequency divisors for {@link rope}'s `freqFactors`: 1 for high
 * frequencies, `factor` for low ones, interpolated between (HF `_compute_llama3_parameters`).
 */
export function llama3FreqFactors(o: {
  dims: number;
  base: number;
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}): Float32Array {
  const out = new Float32Array(o.dims / 2);
  const lowWavelen = o.originalMaxPositionEmbeddings / o.lowFreqFactor;
  const highWavelen = o.originalMaxPositionEmbeddings / o.highFreqFactor;
  for (let i = 0; i < out.length; i++) {
    const freq = Math.pow(o.base, (-2 * i) / o.dims);
    const wavelen = (2 * Math.PI) / freq;
    let scaled: number;
    if (wavelen < highWavelen) scaled = freq;
    else if (wavelen > lowWavelen) scaled = freq / o.factor;
    else {
      const smooth =
        (o.originalMaxPositionEmbeddings / wavelen - o.lowFreqFactor) / (o.highFreqFactor - o.lowFreqFactor);
      scaled = (1 - smooth) * (freq / o.factor) + smooth * freq;
    }
    out[i] = freq / scaled;
  }
  return out;
}

export interface SoftmaxOptions {
  /** Multiplies x before the softmax (attention's 1/√d). */
  scale?: number;
  /** Mask out keys after each query: x `[..., Tq, Tk]`, query i sees keys ≤ i + (Tk - Tq). */
  causal?: boolean;
  /** Additive mask `[Tq, Tk]` (or broadcastable over the leading dimensions), 0 or -Infinity. */
  mask?: Tensor | null;
}

/** softmax(x·scale + mask) over the last axis. */
export function softmax(x: Tensor, o: SoftmaxOptions = {}): Tensor {
  const g = graphOf('softmax', x, o.mask);
  requireF32('softmax', x);
  const s = o.scale ?? 1;
  const mask = o.mask ?? null;
  if (mask !== null) {
    if (mask.requiresGrad) throw new QtuneError('INVALID_ARGUMENT', 'softmax: the mask cannot be trainable');
    if (
      mask.shape[mask.rank - 1] !== x.shape[x.rank - 1] ||
      (mask.shape[mask.rank - 2] ?? 1) < (x.shape[x.rank - 2] ?? 1)
    ) {
      throw new ShapeError(
        `softmax: mask ${fmtShape(mask.shape)} does not cover scores ${fmtShape(x.shape)}`,
      );
    }
  }
  const api = ggml();
  let src = contiguous(x);
  if (o.causal === true) {
    if (x.rank < 2) throw new ShapeError('softmax: a causal mask needs [..., Tq, Tk] scores');
    const nPast = x.shape[x.rank - 1]! - x.shape[x.rank - 2]!;
    const inner = src;
    src = g.node((ctx) => api.diag_mask_inf(ctx, inner.ptr, nPast), x.shape, 'f32', false, 'causal');
  }
  const masked = src;
  const y = g.node(
    (ctx) => api.soft_max_ext(ctx, masked.ptr, mask?.ptr ?? null, s, 0),
    x.shape,
    'f32',
    x.requiresGrad,
    'softmax',
  );
  // Masked entries have y = 0, so soft_max_ext_back gives them no gradient.
  return g.record('softmax', [x], y, (dy) => [
    g.node((ctx) => api.soft_max_ext_back(ctx, contiguous(dy).ptr, y.ptr, s, 0), x.shape, 'f32', false),
  ]);
}

/**
 * Soft-capping, cap·tanh(x / cap): x squashed into (−cap, cap), near x where |x| ≪ cap (Gemma 2's
 * attention scores before the mask, and its logits). The gradient is dy·(1 − tanh²) = dy·(1 − (y/cap)²),
 * from the forward's y.
 *
 * @example
 * const capped = softcap(scores, 50); // every score now within (−50, 50)
 */
export function softcap(x: Tensor, cap: number): Tensor {
  const g = graphOf('softcap', x);
  requireF32('softcap', x);
  if (!(cap > 0) || !Number.isFinite(cap))
    throw new QtuneError('INVALID_ARGUMENT', `softcap: cap ${cap} is not a positive number`);
  const src = contiguous(x);
  const api = ggml();
  const y = g.node(
    (ctx) => api.scale(ctx, api.tanh(ctx, api.scale(ctx, src.ptr, 1 / cap)), cap),
    x.shape,
    'f32',
    src.requiresGrad,
    'softcap',
  );
  return g.record('softcap', [src], y, (dy) => [
    g.node((ctx) => api.mul(ctx, contiguous(dy).ptr, softcapSlope(ctx, y.ptr, cap)), x.shape, 'f32', false),
  ]);
}

/** d softcap / dx from the forward's output y, as a ggml node of `ctx`: 1 − (y/cap)². */
export function softcapSlope(ctx: CtxPtr, y: TensorPtr, cap: number): TensorPtr {
  const api = ggml();
  return api.scale_bias(ctx, api.sqr(ctx, y), -1 / (cap * cap), 1);
}

/** x·sigmoid(x) */
export function silu(x: Tensor): Tensor {
  const g = graphOf('silu', x);
  requireF32('silu', x);
  const src = contiguous(x);
  const y = g.node((ctx) => ggml().silu(ctx, src.ptr), x.shape, 'f32', src.requiresGrad, 'silu');
  return g.record('silu', [src], y, (dy) => [
    g.node((ctx) => ggml().silu_back(ctx, contiguous(dy).ptr, src.ptr), x.shape, 'f32', false),
  ]);
}

/** silu(gate) · up: the Llama MLP's gate (`gate_proj` output) times its `up_proj` output. */
export function swiglu(gate: Tensor, up: Tensor): Tensor {
  const g = graphOf('swiglu', gate, up);
  requireF32('swiglu', gate, up);
  if (gate.shape.join() !== up.shape.join()) {
    throw new ShapeError(`swiglu: gate ${fmtShape(gate.shape)} and up ${fmtShape(up.shape)} differ`);
  }
  const a = contiguous(gate);
  const b = contiguous(up);
  const api = ggml();
  const y = g.node((ctx) => api.swiglu_split(ctx, a.ptr, b.ptr), gate.shape, 'f32', anyGrad(a, b), 'swiglu');
  return g.record('swiglu', [a, b], y, (dy) => {
    const d = contiguous(dy);
    return [
      a.requiresGrad
        ? g.node((ctx) => api.silu_back(ctx, mul(d, b).ptr, a.ptr), gate.shape, 'f32', false)
        : null,
      b.requiresGrad
        ? mul(
            d,
            g.node((ctx) => api.silu(ctx, a.ptr), gate.shape, 'f32', false),
          )
        : null,
    ];
  });
}

const GELU_C = Math.sqrt(2 / Math.PI);
const GELU_K = 0.044715;

/**
 * GELU, tanh approximation (PyTorch `gelu(approximate='tanh')`): 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))).
 * Composed from f32 elementwise ops (ggml_gelu's CPU kernel reads a float16 table, ~1e-3 off), so
 * forward and backward are exact to f32 rounding on every device.
 */
export function gelu(x: Tensor): Tensor {
  const g = graphOf('gelu', x);
  requireF32('gelu', x);
  const src = contiguous(x);
  const api = ggml();
  // 0.5·x·(1 + tanh(√(2/π)(x + k·x³))) in f32 from ggml's elementwise ops: ggml_gelu on the CPU reads
  // a table at x rounded to f16 (relative errors ~5e-4, which put Gemma 3's logits 3e-4 off PyTorch)
  const y = g.node(
    (ctx) => {
      const s = src.ptr;
      const inner = api.mul(ctx, s, api.scale_bias(ctx, api.mul(ctx, s, s), GELU_K, 1));
      const t = api.tanh(ctx, api.scale(ctx, inner, GELU_C));
      return api.mul(ctx, s, api.scale_bias(ctx, t, 0.5, 0.5));
    },
    x.shape,
    'f32',
    src.requiresGrad,
    'gelu',
  );
  return g.record('gelu', [src], y, (dy) => {
    // d/dx = 0.5(1 + t) + 0.5·x·(1 - t²)·√(2/π)(1 + 3k·x²),  t = tanh(√(2/π)(x + k·x³))
    const x2 = mul(src, src);
    const inner = mul(src, affine(x2, GELU_K, 1)); // x + k·x³
    const t = g.node((ctx) => api.tanh(ctx, scale(inner, GELU_C).ptr), x.shape, 'f32', false);
    const left = affine(t, 0.5, 0.5);
    const sech2 = affine(mul(t, t), -1, 1);
    const right = mul(mul(scale(src, 0.5 * GELU_C), sech2), affine(x2, 3 * GELU_K, 1));
    const deriv = g.node((ctx) => api.add(ctx, left.ptr, right.ptr), x.shape, 'f32', false);
    return [mul(dy, deriv)];
  });
}

/**
 * Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1-p). The mask
 * is a per-run input generated on the host from `seed` and the graph's run count, so a run is
 * reproducible and identical on every device.
 */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  const g = graphOf('dropout', x);
  requireF32('dropout', x);
  if (!(p >= 0 && p < 1)) throw new QtuneError('INVALID_ARGUMENT', `dropout: p=${p} must be in [0, 1)`);
  if (p === 0) return x;
  const mask = g.input(x.shape, 'f32', 'dropout_mask');
  const stream = dropoutStreams.get(g) ?? 0;
  dropoutStreams.set(g, stream + 1);
  g.beforeRun(() => g.set(mask, dropoutMask(seed, stream, g.runCount, numel(x.shape), p)));
  return mul(x, mask);
}
const dropoutStreams = new WeakMap<object, number>();

/** The mask {@link dropout} uses on run `step`: 0 or 1/(1-p) per element. */
export function dropoutMask(seed: number, stream: number, step: number, n: number, p: number): Float32Array {
  // xoshiro128** seeded through splitmix32 from (seed, stream, step)
  let s = (seed ^ Math.imul(stream + 1, 0x9e3779b9) ^ Math.imul(step + 1, 0x85ebca6b)) >>> 0;
  const split = (): number => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  const keep = 1 / (1 - p);
  const threshold = Math.floor(p * 2 ** 32);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const r = Math.imul(rotl(Math.imul(b, 5) >>> 0, 7), 9) >>> 0;
    const t = (b << 9) >>> 0;
    c = (c ^ a) >>> 0;
    d = (d ^ b) >>> 0;
    b = (b ^ c) >>> 0;
    a = (a ^ d) >>> 0;
    c = (c ^ t) >>> 0;
    d = rotl(d, 11);
    out[i] = r < threshold ? 0 : keep;
  }
  return out;
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
