/**
 * A float64 reference implementation of every op, written plainly from the math (PyTorch semantics,
 * row-major, outermost dimension first). Gradient checks differentiate these with central finite
 * differences; forward checks compare qtune's outputs with them. Nothing here calls qtune's
 * computations (only its seeded random generator is shared).
 */

export interface Arr {
  shape: number[];
  data: Float64Array;
}

export function arr(shape: number[], data?: ArrayLike<number>): Arr {
  const n = shape.reduce((a, b) => a * b, 1);
  const d = new Float64Array(n);
  if (data !== undefined) {
    if (data.length !== n) throw new Error(`ref: ${data.length} values for shape [${shape.join(', ')}]`);
    for (let i = 0; i < n; i++) d[i] = data[i]!;
  }
  return { shape: [...shape], data: d };
}

export function strides(shape: number[]): number[] {
  const s = new Array<number>(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1]! * shape[i + 1]!;
  return s;
}

/** Multi-index of flat position i. */
function unravel(i: number, shape: number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let k = shape.length - 1; k >= 0; k--) {
    idx[k] = i % shape[k]!;
    i = Math.floor(i / shape[k]!);
  }
  return idx;
}

function broadcastShape(a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error('ref: shapes do not broadcast');
    out.push(Math.max(x, y));
  }
  return out;
}

/** Value of `a` at a multi-index of a broadcast result. */
function at(a: Arr, idx: number[]): number {
  const st = strides(a.shape);
  const off = idx.length - a.shape.length;
  let p = 0;
  for (let k = 0; k < a.shape.length; k++) p += (a.shape[k] === 1 ? 0 : idx[k + off]!) * st[k]!;
  return a.data[p]!;
}

export function binary(a: Arr, b: Arr, f: (x: number, y: number) => number): Arr {
  const shape = broadcastShape(a.shape, b.shape);
  const out = arr(shape);
  for (let i = 0; i < out.data.length; i++) {
    const idx = unravel(i, shape);
    out.data[i] = f(at(a, idx), at(b, idx));
  }
  return out;
}

export function map(a: Arr, f: (x: number) => number): Arr {
  return { shape: [...a.shape], data: a.data.map(f) };
}

export const add = (a: Arr, b: Arr) => binary(a, b, (x, y) => x + y);
export const sub = (a: Arr, b: Arr) => binary(a, b, (x, y) => x - y);
export const mul = (a: Arr, b: Arr) => binary(a, b, (x, y) => x * y);
export const div = (a: Arr, b: Arr) => binary(a, b, (x, y) => x / y);
export const expand = (a: Arr, shape: number[]) => binary(a, arr(shape), (x) => x);

export function sum(a: Arr, axis?: number, keepDim = false): Arr {
  if (axis === undefined) return arr([], [a.data.reduce((s, x) => s + x, 0)]);
  const ax = axis < 0 ? axis + a.shape.length : axis;
  const kept = a.shape.map((d, i) => (i === ax ? 1 : d));
  const out = arr(kept);
  const st = strides(kept);
  for (let i = 0; i < a.data.length; i++) {
    const idx = unravel(i, a.shape);
    idx[ax] = 0;
    out.data[idx.reduce((p, v, k) => p + v * st[k]!, 0)]! += a.data[i]!;
  }
  return keepDim ? out : { shape: a.shape.filter((_, i) => i !== ax), data: out.data };
}

export function reshape(a: Arr, shape: number[]): Arr {
  return { shape: [...shape], data: a.data.slice() };
}

export function permute(a: Arr, dims: number[]): Arr {
  const shape = dims.map((d) => a.shape[d]!);
  const out = arr(shape);
  const st = strides(a.shape);
  for (let i = 0; i < out.data.length; i++) {
    const idx = unravel(i, shape);
    let p = 0;
    dims.forEach((d, k) => (p += idx[k]! * st[d]!));
    out.data[i] = a.data[p]!;
  }
  return out;
}

export function transpose(a: Arr, d0 = -2, d1 = -1): Arr {
  const r = a.shape.length;
  const x = (d0 + r) % r;
  const y = (d1 + r) % r;
  const dims = [...Array(r).keys()];
  dims[x] = y;
  dims[y] = x;
  return permute(a, dims);
}

export function slice(a: Arr, axis: number, start: number, end: number): Arr {
  const ax = (axis + a.shape.length) % a.shape.length;
  const shape = a.shape.map((d, i) => (i === ax ? end - start : d));
  const out = arr(shape);
  const st = strides(a.shape);
  for (let i = 0; i < out.data.length; i++) {
    const idx = unravel(i, shape);
    idx[ax]! += start;
    out.data[i] = a.data[idx.reduce((p, v, k) => p + v * st[k]!, 0)]!;
  }
  return out;
}

export function concat(a: Arr, b: Arr, axis: number): Arr {
  const ax = (axis + a.shape.length) % a.shape.length;
  const shape = a.shape.map((d, i) => (i === ax ? d + b.shape[i]! : d));
  const out = arr(shape);
  const sa = strides(a.shape);
  const sb = strides(b.shape);
  for (let i = 0; i < out.data.length; i++) {
    const idx = unravel(i, shape);
    if (idx[ax]! < a.shape[ax]!) out.data[i] = a.data[idx.reduce((p, v, k) => p + v * sa[k]!, 0)]!;
    else {
      idx[ax]! -= a.shape[ax]!;
      out.data[i] = b.data[idx.reduce((p, v, k) => p + v * sb[k]!, 0)]!;
    }
  }
  return out;
}

/** Batched a @ b with PyTorch broadcasting over batch dimensions. */
export function matmul(a: Arr, b: Arr): Arr {
  const M = a.shape[a.shape.length - 2]!;
  const K = a.shape[a.shape.length - 1]!;
  const N = b.shape[b.shape.length - 1]!;
  const batch = broadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  const out = arr([...batch, M, N]);
  const nb = batch.reduce((x, y) => x * y, 1);
  for (let bi = 0; bi < nb; bi++) {
    const bidx = unravel(bi, batch);
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += at(a, [...bidx, m, k]) * at(b, [...bidx, k, n]);
        out.data[(bi * M + m) * N + n] = s;
      }
    }
  }
  return out;
}

/**
 * x @ wᵀ where w's batch dimensions divide x's and consecutive groups of x's matrices share one of
 * w's (ggml's grouped broadcasting; HF's repeat_interleave for grouped-query attention).
 */
export function linear(x: Arr, w: Arr): Arr {
  if (w.shape.length === 2) {
    const K = w.shape[1]!;
    const N = w.shape[0]!;
    const rows = x.data.length / K;
    const out = arr([...x.shape.slice(0, -1), N]);
    for (let r = 0; r < rows; r++)
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) s += x.data[r * K + k]! * w.data[n * K + k]!;
        out.data[r * N + n] = s;
      }
    return out;
  }
  // repeat_interleave w along each batch dimension to x's batch shape, then matmul
  const rank = x.shape.length;
  let wx = w;
  for (let d = 0; d < rank - 2; d++) {
    const rep = x.shape[d]! / wx.shape[d]!;
    if (rep === 1) continue;
    const shape = wx.shape.map((s, i) => (i === d ? s * rep : s));
    const out = arr(shape);
    for (let i = 0; i < out.data.length; i++) {
      const idx = unravel(i, shape);
      idx[d] = Math.floor(idx[d]! / rep);
      out.data[i] = wx.data[idx.reduce((p, v, k) => p + v * strides(wx.shape)[k]!, 0)]!;
    }
    wx = out;
  }
  return matmul(x, transpose(wx));
}

export function embedding(table: Arr, ids: number[], idsShape: number[]): Arr {
  const C = table.shape[1]!;
  const out = arr([...idsShape, C]);
  ids.forEach((id, i) => {
    for (let c = 0; c < C; c++) out.data[i * C + c] = table.data[id * C + c]!;
  });
  return out;
}

export function rmsNorm(x: Arr, eps: number): Arr {
  const C = x.shape[x.shape.length - 1]!;
  const out = arr(x.shape);
  for (let r = 0; r < x.data.length / C; r++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x.data[r * C + c]! ** 2;
    const inv = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) out.data[r * C + c] = x.data[r * C + c]! * inv;
  }
  return out;
}

/**
 * Rotary embedding of x [..., T, H, D] at positions [T]. `neox` rotates (x[i], x[i + d/2]);
 * `normal` rotates (x[2i], x[2i+1]). θᵢ = pos · base^(−2i/d) / factor[i].
 */
export function rope(
  x: Arr,
  positions: number[],
  o: { mode: 'normal' | 'neox'; base: number; dims?: number; factors?: number[] },
): Arr {
  const r = x.shape.length;
  const T = x.shape[r - 3]!;
  const H = x.shape[r - 2]!;
  const D = x.shape[r - 1]!;
  const dims = o.dims ?? D;
  const out = { shape: [...x.shape], data: x.data.slice() };
  const outer = x.data.length / (T * H * D);
  for (let b = 0; b < outer; b++)
    for (let t = 0; t < T; t++)
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let i = 0; i < dims / 2; i++) {
          const theta = (positions[t]! * Math.pow(o.base, (-2 * i) / dims)) / (o.factors?.[i] ?? 1);
          const [p, q] = o.mode === 'neox' ? [i, i + dims / 2] : [2 * i, 2 * i + 1];
          const x0 = x.data[base + p]!;
          const x1 = x.data[base + q]!;
          out.data[base + p] = x0 * Math.cos(theta) - x1 * Math.sin(theta);
          out.data[base + q] = x0 * Math.sin(theta) + x1 * Math.cos(theta);
        }
      }
  return out;
}

/** softmax(x·scale + mask) over the last axis; `causal` hides key j > i + (Tk − Tq) from query i. */
export function softmax(x: Arr, o: { scale?: number; causal?: boolean; mask?: Arr } = {}): Arr {
  const r = x.shape.length;
  const Tk = x.shape[r - 1]!;
  const Tq = x.shape[r - 2] ?? 1;
  const out = arr(x.shape);
  for (let row = 0; row < x.data.length / Tk; row++) {
    const qi = row % Tq;
    const vals: number[] = [];
    for (let j = 0; j < Tk; j++) {
      let v = x.data[row * Tk + j]! * (o.scale ?? 1);
      if (o.causal && j > qi + (Tk - Tq)) v = -Infinity;
      if (o.mask) v += o.mask.data[(qi % o.mask.shape[o.mask.shape.length - 2]!) * Tk + j]!;
      vals.push(v);
    }
    const m = Math.max(...vals);
    const e = vals.map((v) => Math.exp(v - m));
    const s = e.reduce((a, b) => a + b, 0);
    e.forEach((v, j) => (out.data[row * Tk + j] = v / s));
  }
  return out;
}

export const silu = (x: Arr) => map(x, (v) => v / (1 + Math.exp(-v)));
export const swiglu = (g: Arr, u: Arr) => mul(silu(g), u);
export const gelu = (x: Arr) =>
  map(x, (v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))));

/** Mean over counted tokens of −log softmax(logits)[label], skipping `ignore`. */
export function crossEntropy(logits: Arr, labels: number[], ignore = -100): Arr {
  const V = logits.shape[logits.shape.length - 1]!;
  let total = 0;
  let count = 0;
  labels.forEach((l, i) => {
    if (l === ignore) return;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits.data[i * V + v]!);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits.data[i * V + v]! - m);
    total += Math.log(s) + m - logits.data[i * V + l]!;
    count++;
  });
  return arr([], [count === 0 ? 0 : total / count]);
}

/** Seeded uniform [0, 1) generator (mulberry32): qtune's own, so tests and library draw the same streams. */
export { seededUniform as rng } from '../../src/util/random.js';

/** n standard normal values (Box–Muller) from a seeded generator. */
export function normals(n: number, rand: () => number, scale = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rand(), 1e-12);
    const v = rand();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v) * scale;
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v) * scale;
  }
  return out;
}

/** max|a − b| / max|b|: the error measure of every numeric comparison in the tests. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relErr: lengths ${a.length} and ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i]! - b[i]!));
    den = Math.max(den, Math.abs(b[i]!));
  }
  return num / Math.max(den, 1e-12);
}
