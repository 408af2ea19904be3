/**
 * Shapes are written outermost first, as in PyTorch: a batch of token embeddings is `[B, T, C]`.
 * ggml stores the innermost dimension first (`ne[0]` = C), so `ne` is the shape reversed and padded
 * to four dimensions with 1.
 */
import { ShapeError, fmtShape } from '../errors.js';

export type Shape = readonly number[];

export const MAX_DIMS = 4;

export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** ggml's `ne` for a shape: reversed, padded with 1 to four entries. */
export function toNe(shape: Shape): [number, number, number, number] {
  const ne: [number, number, number, number] = [1, 1, 1, 1];
  for (let i = 0; i < shape.length; i++) ne[i] = shape[shape.length - 1 - i]!;
  return ne;
}

export function checkShape(shape: Shape, what: string): void {
  if (shape.length > MAX_DIMS) {
    throw new ShapeError(
      `${what}: shape ${fmtShape(shape)} has ${shape.length} dimensions; at most ${MAX_DIMS} are supported`,
      {
        hint: 'merge leading dimensions with reshape',
      },
    );
  }
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 1) {
      throw new ShapeError(
        `${what}: shape ${fmtShape(shape)} has a dimension that is not a positive integer`,
        {
          hint: 'every dimension must be an integer >= 1',
        },
      );
    }
  }
}

export function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Normalises a possibly negative axis against a rank. */
export function normAxis(axis: number, rank: number, what: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) {
    throw new ShapeError(`${what}: axis ${axis} is out of range for a tensor of rank ${rank}`, {
      hint: `use an axis in [${-rank}, ${rank - 1}]`,
    });
  }
  return a;
}

/** The ggml dimension index of a shape axis. */
export function ggmlAxis(axis: number, rank: number): number {
  return rank - 1 - axis;
}

/** PyTorch broadcasting: align on the right, dimensions must be equal or 1. */
export function broadcastShapes(a: Shape, b: Shape, what: string): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new ShapeError(
        `${what}: shapes ${fmtShape(a)} and ${fmtShape(b)} do not broadcast (dimension ${i}: ${da} vs ${db})`,
        {
          hint: 'dimensions must be equal or 1, aligned from the right',
        },
      );
    }
    out.push(Math.max(da, db));
  }
  return out;
}

/** Row-major strides in elements for a shape (outermost first). */
export function stridesOf(shape: Shape): number[] {
  const s = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1]! * shape[i + 1]!;
  return s;
}
