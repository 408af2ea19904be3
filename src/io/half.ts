/**
 * IEEE half (f16) and bfloat16 conversions in plain TypeScript, so the IO layer reads and writes
 * checkpoints without the engine. Rounding to f16/bf16 is round-to-nearest-even, as PyTorch does.
 */
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m === 0 ? s * Infinity : NaN;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

export function f32ToF16(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1) === 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half++; // may carry into the exponent: correct
  return sign | half;
}

export function bf16ToF32(b: number): number {
  u32[0] = b << 16;
  return f32[0]!;
}

export function f32ToBf16(v: number): number {
  f32[0] = v;
  const x = u32[0]!;
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return (x >>> 16) | 0x40; // quiet NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Decodes little-endian f16 or bf16 bytes into f32 values. */
export function halfBytesToF32(bytes: Uint8Array, kind: 'f16' | 'bf16'): Float32Array {
  const n = bytes.byteLength >>> 1;
  const aligned = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  const src = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
  const out = new Float32Array(n);
  if (kind === 'bf16') {
    const o32 = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) o32[i] = src[i]! << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16ToF32(src[i]!);
  }
  return out;
}

/** Encodes f32 values as little-endian f16 or bf16 bytes. */
export function f32ToHalfBytes(values: Float32Array, kind: 'f16' | 'bf16'): Uint8Array {
  const out = new Uint16Array(values.length);
  if (kind === 'bf16') for (let i = 0; i < values.length; i++) out[i] = f32ToBf16(values[i]!);
  else for (let i = 0; i < values.length; i++) out[i] = f32ToF16(values[i]!);
  return new Uint8Array(out.buffer);
}
