/**
 * Matrix products. `linear(x, w)` is `x @ wᵀ` with `w` stored `[out, in]` as in Hugging Face
 * checkpoints, which is exactly ggml's `mul_mat(w, x)`; `matmul(a, b)` is PyTorch's `a @ b`.
 *
 * Gradients (DESIGN.md §2): both are `mul_mat` on transposed copies, never `out_prod` (slow on CPU,
 * missing on GPUs for most types). For a frozen quantized weight, the input gradient uses the
 * weight dequantized to f32 and transposed inside the step's graph (exact, no persistent copy), or a
 * persistent transposed copy when the weight has one (`w.transposed`).
 */
import { GGML_TYPE_IDS, isFloatDType, isQuantDType } from '../../engine/dtype.js';
import { DTypeError, ShapeError, fmtShape } from '../../errors.js';
import type { Graph } from '../graph.js';
import { toNe } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { anyGrad, ggml, graphOf, requireF32, strides } from './common.js';
import { add, expand } from './elementwise.js';
import { contiguous, reshape, transpose } from './layout.js';

/**
 * `x @ wᵀ`: x `[..., in]`, w `[out, in]` (or batched `[..., out, in]`) → `[..., out]`.
 *
 * Batched weights broadcast the way ggml does: when x has `k` times as many matrices in a batch
 * dimension as w, consecutive groups of `k` share one matrix of w (grouped-query attention's
 * `repeat_interleave`). A weight with no batch dimensions is shared by every row of x.
 */
export function linear(input: Tensor, w: Tensor): Tensor {
  const g = graphOf('linear', input, w);
  requireF32('linear', input);
  // mul_mat reads the input's rows contiguously; permuted views that keep rows intact pass as they are
  const x = strides(input)[0] === 4 ? input : contiguous(input);
  if (!isFloatDType(w.dtype) && !isQuantDType(w.dtype)) {
    throw new DTypeError(`linear: weight ${w.toString()} has type ${w.dtype}`, {
      hint: 'weights are float or quantized',
    });
  }
  const inner = x.shape[x.rank - 1];
  const wIn = w.shape[w.rank - 1];
  if (w.rank < 2 || inner !== wIn) {
    throw new ShapeError(
      `linear: input ${fmtShape(x.shape)} and weight ${fmtShape(w.shape)} do not fit: x[..., ${inner}] needs w[out, ${inner}]`,
      {
        hint: 'the weight is stored [out_features, in_features]',
      },
    );
  }
  const xn = toNe(x.shape);
  const wn = toNe(w.shape);
  if (w.rank > 2 && (xn[2] % wn[2] !== 0 || xn[3] % wn[3] !== 0 || x.rank !== w.rank)) {
    throw new ShapeError(
      `linear: batch dimensions of weight ${fmtShape(w.shape)} must divide those of input ${fmtShape(x.shape)} (same rank)`,
    );
  }
  if (x.rank > 4) throw new ShapeError(`linear: input ${fmtShape(x.shape)} has more than 4 dimensions`);
  const out = [...x.shape.slice(0, -1), w.shape[w.rank - 2]!];
  const y = g.label('linear.fwd', () =>
    g.node((ctx) => ggml().mul_mat(ctx, w.ptr, x.ptr), out, 'f32', anyGrad(x, w), 'linear'),
  );
  return g.record('linear', [x, w], y, (dy) => [
    x.requiresGrad ? linearInputGrad(g, dy, w) : null,
    w.requiresGrad ? linearWeightGrad(dy, x, w) : null,
  ]);
}

/** dX = dY · W, as `mul_mat(Wᵀ, dY)` with Wᵀ contiguous: the gradient rule of `linear` for its input. */
export function linearInputGrad(g: Graph, dy: Tensor, weight: Tensor): Tensor {
  const w = weight.plain ?? weight; // a repacked copy's gradient reads the plain weight
  const wt = w.transposed ?? g.label('wT', () => transposedForGrad(g, w));
  const xShape = [...dy.shape.slice(0, -1), w.shape[w.rank - 1]!];
  return g.label('linear.dX', () =>
    g.node((ctx) => ggml().mul_mat(ctx, wt.ptr, dy.ptr), xShape, 'f32', false, 'linear_dx'),
  );
}

/**
 * Wᵀ inside the graph: quantized weights are dequantized to f32 first (exact). With `w.gradType`
 * bf16 or f16 (and a weight of another type), the transposing copy writes that type: one copy, and
 * the product runs the low-precision kernel.
 */
function transposedForGrad(g: Graph, w: Tensor): Tensor {
  const api = ggml();
  const src = isQuantDType(w.dtype) ? g.label('dequant', () => dequantize(g, w)) : w;
  const shape = [...w.shape.slice(0, -2), w.shape[w.rank - 1]!, w.shape[w.rank - 2]!];
  const to = w.gradType;
  if (to !== 'f32' && to !== src.dtype) {
    const lowp = g.node(
      (ctx) => api.cast(ctx, api.transpose(ctx, src.ptr), GGML_TYPE_IDS[to]),
      shape,
      to,
      false,
      'wT',
    );
    if (w.backend.supportsOp(lowp.ptr)) return lowp;
  }
  return g.node((ctx) => api.cont(ctx, api.transpose(ctx, src.ptr)), shape, src.dtype, false, 'wT');
}

/**
 * A quantized weight as f32. `cast` where the device can (ggml's CPY); otherwise a row lookup of every
 * row (GET_ROWS dequantizes every type on every backend, e.g. k-quants on Vulkan).
 */
export function dequantize(g: Graph, w: Tensor): Tensor {
  const api = ggml();
  const viaCast = g.node((ctx) => api.cast(ctx, w.ptr, 0), w.shape, 'f32', false, 'dequant');
  // asked of the weight's device: in a graph over several devices, that is where the op runs
  if (w.rank !== 2 || w.backend.supportsOp(viaCast.ptr)) return viaCast;
  const rows = w.shape[0]!;
  const ids = g.constant(
    Int32Array.from({ length: rows }, (_, i) => i),
    [rows],
    'dequant_rows',
  );
  return g.node((ctx) => api.get_rows(ctx, w.ptr, ids.ptr), w.shape, 'f32', false, 'dequant');
}

/** dW = dYᵀ · X, summed over the rows (and the groups) that shared W. */
function linearWeightGrad(dy: Tensor, x: Tensor, w: Tensor): Tensor {
  return dy.graph!.label('linear.dW', () => weightGrad(dy, x, w));
}

/**
 * Xᵀ `[in, rows]` of each input that a 2-D weight gradient has read, per input tensor (so per graph):
 * an input that feeds several linears (q, k and v read the same normed x, gate and up too; every LoRA
 * A reads its module's input) is transposed once for all their weight gradients.
 */
const transposedInputs = new WeakMap<Tensor, Tensor>();

/** `x` as `[rows, in]`, transposed and contiguous: made once per input tensor. */
function transposedRows(x: Tensor): Tensor {
  const cached = transposedInputs.get(x);
  if (cached !== undefined && cached.graph === x.graph) return cached;
  const inner = x.shape[x.rank - 1]!;
  const xt = contiguous(transpose(reshape(x, [x.numel / inner, inner])));
  transposedInputs.set(x, xt);
  return xt;
}

function weightGrad(dy: Tensor, x: Tensor, w: Tensor): Tensor {
  const g = dy.graph!;
  const api = ggml();
  if (w.rank === 2) {
    const rows = x.numel / x.shape[x.rank - 1]!;
    const d2 = reshape(dy, [rows, dy.shape[dy.rank - 1]!]);
    const xt = transposedRows(x);
    const dt = contiguous(transpose(d2));
    return g.node((ctx) => api.mul_mat(ctx, xt.ptr, dt.ptr), w.shape, 'f32', false, 'linear_dw');
  }
  const xt = contiguous(transpose(x));
  const dt = contiguous(transpose(dy));
  const full = [...dy.shape.slice(0, -2), w.shape[w.rank - 2]!, w.shape[w.rank - 1]!];
  const dwFull = g.node((ctx) => api.mul_mat(ctx, xt.ptr, dt.ptr), full, 'f32', false, 'linear_dw');
  return sumGroups(dwFull, w.shape);
}

/**
 * Sums consecutive groups of matrices in the batch dimensions of `t` down to `shape` (the inverse of
 * ggml's grouped broadcasting in mul_mat): with ratio k, matrix i of the result is the sum of
 * matrices i·k .. i·k+k-1.
 */
function sumGroups(t: Tensor, shape: readonly number[]): Tensor {
  const g = t.graph!;
  const api = ggml();
  const tn = toNe(t.shape);
  const sn = toNe(shape);
  const r2 = tn[2] / sn[2];
  const r3 = tn[3] / sn[3];
  if (r2 === 1 && r3 === 1) return t;
  const esz = 4;
  const nb1 = tn[0] * esz;
  const nb2 = nb1 * tn[1];
  const nb3 = nb2 * tn[2];
  let acc: Tensor | null = null;
  for (let j3 = 0; j3 < r3; j3++) {
    for (let j2 = 0; j2 < r2; j2++) {
      // a strided view picking matrix i·r2 + j2 (and i·r3 + j3) for every i
      const v = g.node(
        (ctx) =>
          api.view_4d(ctx, t.ptr, sn[0], sn[1], sn[2], sn[3], nb1, nb2 * r2, nb3 * r3, j2 * nb2 + j3 * nb3),
        shape,
        'f32',
        false,
        'group',
      );
      acc = acc === null ? g.node((ctx) => api.cont(ctx, v.ptr), shape, 'f32', false) : add(acc, v);
    }
  }
  return acc!;
}

/** PyTorch's `a @ b`: a `[..., M, K]`, b `[..., K, N]` → `[..., M, N]`, batch dimensions broadcast. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  if (a.rank < 2 || b.rank < 2) {
    throw new ShapeError(
      `matmul: operands need at least 2 dimensions, got ${fmtShape(a.shape)} and ${fmtShape(b.shape)}`,
    );
  }
  if (a.shape[a.rank - 1] !== b.shape[b.rank - 2]) {
    throw new ShapeError(
      `matmul: ${fmtShape(a.shape)} @ ${fmtShape(b.shape)}: inner dimensions ${a.shape[a.rank - 1]} and ${b.shape[b.rank - 2]} differ`,
    );
  }
  const rank = Math.max(a.rank, b.rank);
  const pad = (s: readonly number[]) => [...new Array<number>(rank - s.length).fill(1), ...s];
  let x = a.rank === rank ? a : reshape(a, pad(a.shape));
  let bt = b.rank === rank ? b : reshape(b, pad(b.shape));
  // ggml broadcasts only the weight side; give the input side the full batch shape.
  const batch = x.shape.slice(0, -2).map((d, i) => Math.max(d, bt.shape[i]!));
  const xFull = [...batch, ...x.shape.slice(-2)];
  if (x.shape.some((d, i) => d !== xFull[i])) x = expand(x, xFull);
  bt = contiguous(transpose(bt));
  return linear(x, bt);
}
