/**
 * HQQ (Half-Quadratic Quantization, Badri & Shaji 2023), done for real and stored in ggml's affine
 * types: each group of 32 weights is W ≈ s·(q − z) with q in [0, 2ᵇ−1].
 *
 * 1. Start from min/max: s = (max − min)/(2ᵇ−1), z = −min/s.
 * 2. Half-quadratic splitting on the ℓp error (p < 1, robust to outliers), as in the paper: alternate
 *      q  = clamp(round(W/s + z)),
 *      Wₑ = shrinkₚ(W − s(q − z), β)     (generalised soft threshold: sign(x)·max(|x| − |x|^(p−1)/β, 0))
 *      z  = mean(q − (W − Wₑ)/s),        β ← κβ,
 *    keeping the best zero point seen.
 * 3. With q fixed, the scale and offset that minimise the squared error are a least-squares line
 *    fit; it is applied, rounded to f16 as the block stores them, and q is re-rounded against them.
 *
 * Blocks are written in ggml's q4_1 (d, m, 16 nibbles) or q5_1 (d, m, 32 high bits, 16 nibbles)
 * layout, where a value is d·q + m (m = −s·z), so ggml's own kernels compute with them.
 */
import { f16ToF32, f32ToF16 } from '../io/half.js';
import { QtuneError } from '../errors.js';

export interface HqqOptions {
  bits?: 4 | 5;
  iterations?: number;
  /** ℓp norm of the error the solver minimises. */
  p?: number;
  beta?: number;
  kappa?: number;
}

const GROUP = 32;
/** Least-squares refits of scale and offset; the error stops falling after about five. */
const LS_ROUNDS = 5;

function shrink(x: number, beta: number, p: number): number {
  const a = Math.abs(x);
  if (a === 0) return 0;
  return Math.sign(x) * Math.max(a - Math.pow(a, p - 1) / beta, 0);
}

/** Fits one group: returns the f16-rounded scale d, offset m and the levels q (value = d·q + m). */
function fitGroup(
  w: Float32Array,
  levels: number,
  o: Required<Omit<HqqOptions, 'bits'>>,
  q: Uint8Array,
): { d: number; m: number } {
  let min = Infinity;
  let max = -Infinity;
  for (const v of w) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const s = max > min ? (max - min) / levels : 1;
  let z = -min / s;
  const quantize = (zz: number) => {
    for (let j = 0; j < GROUP; j++) q[j] = Math.min(levels, Math.max(0, Math.round(w[j]! / s + zz)));
  };
  const lpError = () => {
    let e = 0;
    for (let j = 0; j < GROUP; j++) e += Math.pow(Math.abs(w[j]! - s * (q[j]! - z)), o.p);
    return e;
  };
  quantize(z);
  let bestZ = z;
  let bestErr = lpError();
  let beta = o.beta;
  for (let it = 0; it < o.iterations && max > min; it++) {
    let acc = 0;
    for (let j = 0; j < GROUP; j++) {
      const we = shrink(w[j]! - s * (q[j]! - z), beta, o.p);
      acc += q[j]! - (w[j]! - we) / s;
    }
    z = acc / GROUP;
    beta *= o.kappa;
    quantize(z);
    const err = lpError();
    if (err < bestErr) {
      bestErr = err;
      bestZ = z;
    } else if (err > bestErr * 1.0001) {
      break; // the paper stops once the error grows
    }
  }
  z = bestZ;
  quantize(z);
  // least-squares scale and offset for these levels: value = d·q + m
  let d = s;
  let m = -s * z;
  for (let round = 0; round < LS_ROUNDS; round++) {
    let sq = 0;
    let sw = 0;
    let sqq = 0;
    let sqw = 0;
    for (let j = 0; j < GROUP; j++) {
      sq += q[j]!;
      sw += w[j]!;
      sqq += q[j]! * q[j]!;
      sqw += q[j]! * w[j]!;
    }
    const den = GROUP * sqq - sq * sq;
    if (den > 0) {
      d = (GROUP * sqw - sq * sw) / den;
      m = (sw - d * sq) / GROUP;
    }
    d = f16ToF32(f32ToF16(d));
    m = f16ToF32(f32ToF16(m));
    if (d === 0) break;
    for (let j = 0; j < GROUP; j++) q[j] = Math.min(levels, Math.max(0, Math.round((w[j]! - m) / d)));
  }
  return { d, m };
}

/** Bytes of one block. */
export function hqqBlockBytes(bits: 4 | 5): number {
  return bits === 4 ? 20 : 24;
}

/**
 * Quantizes rows of `cols` values (a multiple of 32) with HQQ into q4_1 (bits 4) or q5_1 (bits 5)
 * blocks, in ggml's byte layout.
 */
export function hqqQuantize(values: Float32Array, cols: number, options: HqqOptions = {}): Uint8Array {
  const bits = options.bits ?? 4;
  if (bits !== 4 && bits !== 5)
    throw new QtuneError('INVALID_ARGUMENT', `hqq: bits = ${String(bits)} is not supported`, {
      hint: 'use 4 (q4_1) or 5 (q5_1)',
    });
  if (cols % GROUP !== 0)
    throw new QtuneError('INVALID_ARGUMENT', `hqq: rows of ${cols} values are not whole groups of ${GROUP}`);
  const o = {
    iterations: options.iterations ?? 20,
    p: options.p ?? 0.7,
    beta: options.beta ?? 10,
    kappa: options.kappa ?? 1.01,
  };
  const levels = (1 << bits) - 1;
  const blocks = values.length / GROUP;
  const blockBytes = hqqBlockBytes(bits);
  const out = new Uint8Array(blocks * blockBytes);
  const view = new DataView(out.buffer);
  const q = new Uint8Array(GROUP);
  for (let b = 0; b < blocks; b++) {
    const w = values.subarray(b * GROUP, (b + 1) * GROUP);
    const { d, m } = fitGroup(w, levels, o, q);
    const at = b * blockBytes;
    view.setUint16(at, f32ToF16(d), true);
    view.setUint16(at + 2, f32ToF16(m), true);
    if (bits === 4) {
      for (let j = 0; j < 16; j++) out[at + 4 + j] = (q[j]! & 0xf) | ((q[j + 16]! & 0xf) << 4);
    } else {
      let qh = 0;
      for (let j = 0; j < GROUP; j++) if ((q[j]! & 0x10) !== 0) qh |= 1 << j;
      view.setUint32(at + 4, qh >>> 0, true);
      for (let j = 0; j < 16; j++) out[at + 8 + j] = (q[j]! & 0xf) | ((q[j + 16]! & 0xf) << 4);
    }
  }
  return out;
}
