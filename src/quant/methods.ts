/**
 * Quantization methods under the names users know, and the ggml storage type each one uses. The
 * block (group) size is the format's: 32 for q4_0/q4_1/q5_1/q8_0/iq4_nl, 256 for the k-quants.
 */
import type { DType } from '../engine/dtype.js';

export type QuantMethod =
  'none' | 'int8' | 'int4' | 'int4_affine' | 'nf4' | 'q2_k' | 'q3_k' | 'q4_k' | 'q5_k' | 'q6_k' | 'hqq';

export interface MethodInfo {
  method: QuantMethod;
  /** ggml storage type for each supported bit width. */
  dtypes: Partial<Record<number, DType>>;
  defaultBits: number;
  /** Elements per group/block, fixed by the format. */
  blockSize: number;
  description: string;
}

export const METHODS: Record<QuantMethod, MethodInfo> = {
  none: {
    method: 'none',
    dtypes: { 16: 'f16', 32: 'f32' },
    defaultBits: 16,
    blockSize: 1,
    description: 'no quantization (f16 or f32)',
  },
  int8: {
    method: 'int8',
    dtypes: { 8: 'q8_0' },
    defaultBits: 8,
    blockSize: 32,
    description: 'symmetric 8-bit, one scale per 32 (q8_0)',
  },
  int4: {
    method: 'int4',
    dtypes: { 4: 'q4_0' },
    defaultBits: 4,
    blockSize: 32,
    description: 'symmetric 4-bit, one scale per 32 (q4_0)',
  },
  int4_affine: {
    method: 'int4_affine',
    dtypes: { 4: 'q4_1' },
    defaultBits: 4,
    blockSize: 32,
    description: 'affine 4-bit: a scale and a minimum per 32, as MLX and HQQ store them (q4_1)',
  },
  nf4: {
    method: 'nf4',
    dtypes: { 4: 'iq4_nl' },
    defaultBits: 4,
    blockSize: 32,
    description:
      "NF4's idea — a fixed non-linear 16-level codebook fitted to normally distributed weights, one scale per block — as ggml's iq4_nl; not bitsandbytes' bit layout",
  },
  q2_k: {
    method: 'q2_k',
    dtypes: { 2: 'q2_K' },
    defaultBits: 2,
    blockSize: 256,
    description: 'k-quant, ~2.6 bits/weight (q2_K)',
  },
  q3_k: {
    method: 'q3_k',
    dtypes: { 3: 'q3_K' },
    defaultBits: 3,
    blockSize: 256,
    description: 'k-quant, ~3.4 bits/weight (q3_K)',
  },
  q4_k: {
    method: 'q4_k',
    dtypes: { 4: 'q4_K' },
    defaultBits: 4,
    blockSize: 256,
    description: 'k-quant, 4.5 bits/weight (q4_K)',
  },
  q5_k: {
    method: 'q5_k',
    dtypes: { 5: 'q5_K' },
    defaultBits: 5,
    blockSize: 256,
    description: 'k-quant, 5.5 bits/weight (q5_K)',
  },
  q6_k: {
    method: 'q6_k',
    dtypes: { 6: 'q6_K' },
    defaultBits: 6,
    blockSize: 256,
    description: 'k-quant, 6.6 bits/weight (q6_K)',
  },
  hqq: {
    method: 'hqq',
    dtypes: { 4: 'q4_1', 5: 'q5_1' },
    defaultBits: 4,
    blockSize: 32,
    description:
      "HQQ: each group's zero point (and scale) fitted by a half-quadratic solver to minimise the reconstruction error, stored affine (q4_1 / q5_1)",
  },
};

export const QUANT_METHODS = Object.keys(METHODS) as QuantMethod[];

export function isQuantMethod(s: string): s is QuantMethod {
  return Object.hasOwn(METHODS, s);
}

/** The ggml type of a method at a bit width (undefined when the method has no such width). */
export function methodDType(method: QuantMethod, bits?: number): DType | undefined {
  const m = METHODS[method];
  return m.dtypes[bits ?? m.defaultBits];
}

const F16_TO_INT8 = 34 / 64; // q8_0: 34 bytes per 32 weights, f16: 64

/**
 * The seed system's rule: quantize when the memory is below 1.2 × the model's f16 size, to 4 bits when
 * it is also below 1.5 × the int8 size. `nf4` when the backend trains through iq4_nl, else `int4`.
 */
export function recommendQuantization(
  f16Bytes: number,
  memoryBytes: number,
  trainQuantTypes: readonly DType[] = ['iq4_nl'],
): { method: QuantMethod; bits: number; reason: string } {
  const gb = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (memoryBytes >= 1.2 * f16Bytes) {
    return { method: 'none', bits: 16, reason: `${gb(memoryBytes)} ≥ 1.2 × the f16 model (${gb(f16Bytes)})` };
  }
  const int8 = f16Bytes * F16_TO_INT8;
  if (memoryBytes >= 1.5 * int8) {
    return {
      method: 'int8',
      bits: 8,
      reason: `${gb(memoryBytes)} < 1.2 × f16 (${gb(f16Bytes)}) but ≥ 1.5 × int8 (${gb(int8)})`,
    };
  }
  const method: QuantMethod = trainQuantTypes.includes('iq4_nl') ? 'nf4' : 'int4';
  return {
    method,
    bits: METHODS[method].defaultBits,
    reason: `${gb(memoryBytes)} < 1.5 × the int8 model (${gb(int8)})`,
  };
}
