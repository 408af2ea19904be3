/**
 * Ops that move data or reinterpret it: reshape/view, permute/transpose, contiguous, concat, slice,
 * cast, and the reductions sum/mean (which reduce over ggml's innermost dimension after moving the
 * axis there).
 */
import { isFloatDType, isQuantDType, type DType, GGML_TYPE_IDS } from '../../engine/dtype.js';
import { DTypeError, ShapeError, fmtShape } from '../../errors.js';
import { checkShape, ggmlAxis, normAxis, numel, toNe, type Shape } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { ggml, graphOf, isContiguous, requireFloat, strides, template } from './common.js';
import { scale } from './elementwise.js';

/** A copy of `x` laid out contiguously (no-op when it already is). */
export function contiguous(x: Tensor): Tensor {
  if (isContiguous(x)) return x;
  const g = graphOf('contiguous', x);
  const y = g.label('copy', () =>
    g.node((ctx) => ggml().cont(ctx, x.ptr), x.shape, x.dtype, x.requiresGrad, 'cont'),
  );
  return g.record('contiguous', [x], y, (dy) => [dy]);
}

function reshapeRaw(x: Tensor, shape: Shape, op: string): Tensor {
  const g = graphOf(op, x);
  const ne = toNe(shape);
  return g.node(
    (ctx) => ggml().reshape_4d(ctx, x.ptr, ne[0], ne[1], ne[2], ne[3]),
    shape,
    x.dtype,
    x.requiresGrad,
    op,
  );
}

function resolveShape(x: Tensor, shape: Shape, op: string): number[] {
  const out = [...shape];
  const infer = out.indexOf(-1);
  if (infer >= 0) {
    const rest = numel(out.filter((_, i) => i !== infer));
    out[infer] = x.numel / rest;
  }
  checkShape(out, op);
  if (numel(out) !== x.numel) {
    throw new ShapeError(
      `${op}: cannot reshape ${fmtShape(x.shape)} (${x.numel} elements) to ${fmtShape(shape)}`,
      {
        hint: 'the number of elements must stay the same',
      },
    );
  }
  return out;
}

/** The same elements under a new shape (one dimension may be -1). Copies first when `x` is not contiguous. */
export function reshape(x: Tensor, shape: Shape): Tensor {
  const out = resolveShape(x, shape, 'reshape');
  const src = contiguous(x);
  const y = reshapeRaw(src, out, 'reshape');
  return y.graph!.record('reshape', [src], y, (dy) => [reshape(dy, src.shape)]);
}

/** Like {@link reshape} but never copies: `x` must be contiguous. */
export function view(x: Tensor, shape: Shape): Tensor {
  if (!isContiguous(x)) {
    throw new ShapeError(`view: ${x.toString()} is not contiguous`, {
      hint: 'use reshape(), which copies, or contiguous() first',
    });
  }
  return reshape(x, shape);
}

/** Reorders dimensions: result dimension i is input dimension `dims[i]` (PyTorch's permute). */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const g = graphOf('permute', x);
  const r = x.rank;
  const norm = dims.map((d) => normAxis(d, r, 'permute'));
  if (norm.length !== r || new Set(norm).size !== r) {
    throw new ShapeError(
      `permute: ${JSON.stringify(dims)} is not a permutation of ${r} dimensions for ${fmtShape(x.shape)}`,
    );
  }
  const shape = norm.map((d) => x.shape[d]!);
  // ggml_permute takes, for each source ggml axis j, its destination axis.
  const ax = [0, 1, 2, 3];
  for (let i = 0; i < r; i++) ax[ggmlAxis(norm[i]!, r)] = ggmlAxis(i, r);
  const y = g.node(
    (ctx) => ggml().permute(ctx, x.ptr, ax[0]!, ax[1]!, ax[2]!, ax[3]!),
    shape,
    x.dtype,
    x.requiresGrad,
    'permute',
  );
  const inverse = new Array<number>(r);
  norm.forEach((d, i) => (inverse[d] = i));
  return g.record('permute', [x], y, (dy) => [permute(dy, inverse)]);
}

/** Swaps two dimensions (default: the last two). */
export function transpose(x: Tensor, d0 = -2, d1 = -1): Tensor {
  const r = x.rank;
  const a = normAxis(d0, r, 'transpose');
  const b = normAxis(d1, r, 'transpose');
  const dims = [...Array(r).keys()];
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims);
}

/** Joins `a` and `b` along `axis`; every other dimension must match. */
export function concat(a: Tensor, b: Tensor, axis: number): Tensor {
  const g = graphOf('concat', a, b);
  if (a.rank !== b.rank)
    throw new ShapeError(`concat: ranks differ (${fmtShape(a.shape)} and ${fmtShape(b.shape)})`);
  const ax = normAxis(axis, a.rank, 'concat');
  a.shape.forEach((d, i) => {
    if (i !== ax && d !== b.shape[i]) {
      throw new ShapeError(
        `concat: ${fmtShape(a.shape)} and ${fmtShape(b.shape)} differ outside axis ${axis}`,
      );
    }
  });
  if (a.dtype !== b.dtype) throw new DTypeError(`concat: types differ (${a.dtype} and ${b.dtype})`);
  const shape = a.shape.map((d, i) => (i === ax ? d + b.shape[i]! : d));
  const ca = contiguous(a);
  const cb = contiguous(b);
  const y = g.node(
    (ctx) => ggml().concat(ctx, ca.ptr, cb.ptr, ggmlAxis(ax, a.rank)),
    shape,
    a.dtype,
    a.requiresGrad || b.requiresGrad,
    'concat',
  );
  const na = a.shape[ax]!;
  return g.record('concat', [ca, cb], y, (dy) => [
    ca.requiresGrad ? slice(dy, ax, 0, na) : null,
    cb.requiresGrad ? slice(dy, ax, na, na + b.shape[ax]!) : null,
  ]);
}

/** Elements `start` (inclusive) to `end` (exclusive) along `axis`: a view, no copy. */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const g = graphOf('slice', x);
  const ax = normAxis(axis, x.rank, 'slice');
  const dim = x.shape[ax]!;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > dim || start >= end) {
    throw new ShapeError(
      `slice: [${start}, ${end}) is not a non-empty range within dimension ${axis} of size ${dim}`,
    );
  }
  if (isQuantDType(x.dtype) && ax === x.rank - 1) {
    throw new DTypeError(`slice: cannot cut inside the rows of quantized ${x.dtype} tensor`, {
      hint: 'slice whole rows',
    });
  }
  const shape = x.shape.map((d, i) => (i === ax ? end - start : d));
  const nb = strides(x);
  const ga = ggmlAxis(ax, x.rank);
  const ne = toNe(shape);
  const y = g.node(
    (ctx) => ggml().view_4d(ctx, x.ptr, ne[0], ne[1], ne[2], ne[3], nb[1], nb[2], nb[3], start * nb[ga]!),
    shape,
    x.dtype,
    x.requiresGrad,
    'slice',
  );
  return g.record('slice', [x], y, (dy) => {
    const pad = [0, 0, 0, 0, 0, 0, 0, 0];
    pad[2 * ga] = start;
    pad[2 * ga + 1] = dim - end;
    const c = contiguous(dy);
    return [
      g.node(
        (ctx) =>
          ggml().pad_ext(ctx, c.ptr, pad[0]!, pad[1]!, pad[2]!, pad[3]!, pad[4]!, pad[5]!, pad[6]!, pad[7]!),
        x.shape,
        'f32',
        false,
      ),
    ];
  });
}

/**
 * Converts to another type. Quantized tensors dequantize to f32 only (ggml's CPU backend aborts on
 * quantized → f16/bf16, DESIGN.md pitfall 6), so those go through f32.
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  const g = graphOf('cast', x);
  if (x.dtype === dtype) return x;
  if (!isFloatDType(dtype))
    throw new DTypeError(`cast: cannot cast to ${dtype}`, { hint: 'cast to f32, f16 or bf16' });
  if (isQuantDType(x.dtype) && dtype !== 'f32') return cast(cast(x, 'f32'), dtype);
  if (!isFloatDType(x.dtype) && !isQuantDType(x.dtype))
    throw new DTypeError(`cast: cannot cast ${x.dtype} to ${dtype}`);
  const trainable = isFloatDType(x.dtype) && x.requiresGrad;
  const y = g.label('cast', () =>
    g.node((ctx) => ggml().cast(ctx, x.ptr, GGML_TYPE_IDS[dtype]), x.shape, dtype, trainable, 'cast'),
  );
  return g.record('cast', [x], y, (dy) => [cast(dy, x.dtype)]);
}

/** Sum of all elements (shape `[]`), or over one axis (kept as size 1 with `keepDim`). */
export function sum(x: Tensor, axis?: number, keepDim = false): Tensor {
  const g = graphOf('sum', x);
  requireFloat('sum', x);
  if (axis === undefined) {
    const src = contiguous(x);
    const y = g.node((ctx) => ggml().sum(ctx, src.ptr), [], x.dtype, x.requiresGrad, 'sum');
    return g.record('sum', [src], y, (dy) => [broadcastBack(dy, x.shape)]);
  }
  const ax = normAxis(axis, x.rank, 'sum');
  const kept = x.shape.map((d, i) => (i === ax ? 1 : d));
  const ga = ggmlAxis(ax, x.rank);
  let src = x;
  if (ga !== 0) {
    // move the axis innermost, keeping the others in order, so the result reshapes straight back
    const order = [...[...Array(x.rank).keys()].filter((i) => i !== ax), ax];
    src = contiguous(permute(x, order));
  } else {
    src = contiguous(x);
  }
  const rows = g.node(
    (ctx) => ggml().sum_rows(ctx, src.ptr),
    src.shape.map((d, i) => (i === src.rank - 1 ? 1 : d)),
    x.dtype,
    src.requiresGrad,
    'sum_rows',
  );
  const summed = g.record('sum_rows', [src], rows, (dy) => [broadcastBack(dy, src.shape)]);
  const keptT = reshape(summed, kept);
  return keepDim
    ? keptT
    : reshape(
        keptT,
        x.shape.filter((_, i) => i !== ax),
      );
}

/** Mean of all elements, or over one axis. */
export function mean(x: Tensor, axis?: number, keepDim = false): Tensor {
  const n = axis === undefined ? x.numel : x.shape[normAxis(axis, x.rank, 'mean')]!;
  return scale(sum(x, axis, keepDim), 1 / n);
}

/** Repeats a reduced gradient over the dimensions it was reduced from. */
function broadcastBack(dy: Tensor, shape: Shape): Tensor {
  const g = dy.graph!;
  return g.node((ctx) => ggml().repeat(ctx, dy.ptr, template(g, shape)), shape, dy.dtype, false);
}
