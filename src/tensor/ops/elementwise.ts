/**
 * Elementwise ops with PyTorch broadcasting (dimensions equal or 1, aligned from the right). ggml
 * broadcasts its second operand by tiling, which equals size-1 broadcasting; when the first operand
 * is the smaller one it is repeated (or the operands swapped when the op commutes).
 */
import { ShapeError, fmtShape } from '../../errors.js';
import { broadcastShapes, sameShape, type Shape } from '../shape.js';
import { Tensor } from '../tensor.js';
import { anyGrad, ggml, graphOf, requireFloat, requireSameDType, sameNe, template } from './common.js';
import { contiguous } from './layout.js';

type Binary = 'add' | 'sub' | 'mul' | 'div';

/** Sums a broadcast gradient back to `shape` (the inverse of broadcasting). */
export function reduceTo(dy: Tensor, shape: Shape): Tensor {
  const g = dy.graph!;
  if (sameNe(dy.shape, shape)) return sameShape(dy.shape, shape) ? dy : retag(dy, shape);
  return g.node((ctx) => ggml().repeat_back(ctx, dy.ptr, template(g, shape)), shape, dy.dtype, false);
}

/** Broadcasts `x` to `shape` (a copy). The gradient sums it back. */
export function expand(x: Tensor, shape: Shape): Tensor {
  const g = graphOf('expand', x);
  const out = broadcastShapes(x.shape, shape, 'expand');
  if (!sameShape(out, shape)) {
    throw new ShapeError(`expand: ${fmtShape(x.shape)} cannot be broadcast to ${fmtShape(shape)}`);
  }
  if (sameNe(x.shape, shape)) return sameShape(x.shape, shape) ? x : retag(x, shape);
  const y = g.node(
    (ctx) => ggml().repeat(ctx, x.ptr, template(g, shape)),
    shape,
    x.dtype,
    x.requiresGrad,
    'expand',
  );
  return g.record('expand', [x], y, (dy) => [reduceTo(dy, x.shape)]);
}

/** The same ggml tensor under another shape with the same `ne` (e.g. `[3]` and `[1, 3]`). */
export function retag(t: Tensor, shape: Shape): Tensor {
  return new Tensor({
    ptr: t.ptr,
    shape,
    dtype: t.dtype,
    kind: t.kind,
    graph: t.graph,
    store: t.store,
    requiresGrad: t.requiresGrad,
    name: t.name,
  });
}

function binary(op: Binary, a: Tensor, b: Tensor): Tensor {
  const g = graphOf(op, a, b);
  requireFloat(op, a, b);
  requireSameDType(op, a, b);
  const shape = broadcastShapes(a.shape, b.shape, op);
  let x = a;
  let y = b;
  if (!sameNe(x.shape, shape)) {
    if ((op === 'add' || op === 'mul') && sameNe(y.shape, shape)) [x, y] = [b, a];
    else x = expand(a, shape);
  }
  x = contiguous(x); // ggml's kernels need contiguous rows in the first operand (the second may be a view)
  const api = ggml();
  return g.node((ctx) => api[op](ctx, x.ptr, y.ptr), shape, a.dtype, anyGrad(a, b), op);
}

/** a + b */
export function add(a: Tensor, b: Tensor): Tensor {
  const out = binary('add', a, b);
  return out.graph!.record('add', [a, b], out, (dy) => [reduceTo(dy, a.shape), reduceTo(dy, b.shape)]);
}

/** a - b */
export function sub(a: Tensor, b: Tensor): Tensor {
  const out = binary('sub', a, b);
  return out.graph!.record('sub', [a, b], out, (dy) => [
    reduceTo(dy, a.shape),
    b.requiresGrad ? reduceTo(scale(dy, -1), b.shape) : null,
  ]);
}

/** a * b */
export function mul(a: Tensor, b: Tensor): Tensor {
  const out = binary('mul', a, b);
  return out.graph!.record('mul', [a, b], out, (dy) => [
    a.requiresGrad ? reduceTo(mul(dy, b), a.shape) : null,
    b.requiresGrad ? reduceTo(mul(dy, a), b.shape) : null,
  ]);
}

/** a / b */
export function div(a: Tensor, b: Tensor): Tensor {
  const out = binary('div', a, b);
  return out.graph!.record('div', [a, b], out, (dy) => [
    a.requiresGrad ? reduceTo(div(dy, b), a.shape) : null,
    // d(a/b)/db = -a/b² = -out/b
    b.requiresGrad ? reduceTo(scale(div(mul(dy, out), b), -1), b.shape) : null,
  ]);
}

/** x * s for a number s. */
export function scale(x: Tensor, s: number): Tensor {
  const g = graphOf('scale', x);
  requireFloat('scale', x);
  x = contiguous(x);
  const y = g.node((ctx) => ggml().scale(ctx, x.ptr, s), x.shape, x.dtype, x.requiresGrad, 'scale');
  return g.record('scale', [x], y, (dy) => [scale(dy, s)]);
}

/** x * s + b for numbers s and b. */
export function affine(x: Tensor, s: number, b: number): Tensor {
  const g = graphOf('affine', x);
  requireFloat('affine', x);
  x = contiguous(x);
  const y = g.node((ctx) => ggml().scale_bias(ctx, x.ptr, s, b), x.shape, x.dtype, x.requiresGrad, 'affine');
  return g.record('affine', [x], y, (dy) => [scale(dy, s)]);
}

/** -x */
export function neg(x: Tensor): Tensor {
  return scale(x, -1);
}

/** x² */
export function sqr(x: Tensor): Tensor {
  const g = graphOf('sqr', x);
  requireFloat('sqr', x);
  x = contiguous(x);
  const y = g.node((ctx) => ggml().sqr(ctx, x.ptr), x.shape, x.dtype, x.requiresGrad, 'sqr');
  return g.record('sqr', [x], y, (dy) => [scale(mul(dy, x), 2)]);
}

/** √x */
export function sqrt(x: Tensor): Tensor {
  const g = graphOf('sqrt', x);
  requireFloat('sqrt', x);
  x = contiguous(x);
  const y = g.node((ctx) => ggml().sqrt(ctx, x.ptr), x.shape, x.dtype, x.requiresGrad, 'sqrt');
  return g.record('sqrt', [x], y, (dy) => [scale(div(dy, y), 0.5)]);
}

/** eˣ */
export function exp(x: Tensor): Tensor {
  const g = graphOf('exp', x);
  requireFloat('exp', x);
  x = contiguous(x);
  const y = g.node((ctx) => ggml().exp(ctx, x.ptr), x.shape, x.dtype, x.requiresGrad, 'exp');
  return g.record('exp', [x], y, (dy) => [mul(dy, y)]);
}

/** ln x */
export function log(x: Tensor): Tensor {
  const g = graphOf('log', x);
  requireFloat('log', x);
  x = contiguous(x);
  const y = g.node((ctx) => ggml().log(ctx, x.ptr), x.shape, x.dtype, x.requiresGrad, 'log');
  return g.record('log', [x], y, (dy) => [div(dy, x)]);
}

/**
 * sign(x): −1, 0 or 1 (ggml_sgn; CPU and Vulkan both run it). Piecewise constant, so no gradient
 * flows through it; it is meant for optimizer updates (Lion).
 *
 * @example
 * const s = sign(g.input([4])); // [-2, 0, 1e-30, 3] → [-1, 0, 1, 1]
 */
export function sign(x: Tensor): Tensor {
  const g = graphOf('sign', x);
  requireFloat('sign', x);
  x = contiguous(x);
  return g.node((ctx) => ggml().sgn(ctx, x.ptr), x.shape, x.dtype, false, 'sign');
}
