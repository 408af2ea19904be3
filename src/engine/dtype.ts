/**
 * Element types: the names qtune uses and the ids of ggml's `enum ggml_type` (ggml.h of the pinned
 * release). Block and byte sizes are read from the loaded library, never copied here.
 */
export const GGML_TYPE_IDS = {
  f32: 0,
  f16: 1,
  q4_0: 2,
  q4_1: 3,
  q5_0: 6,
  q5_1: 7,
  q8_0: 8,
  q2_K: 10,
  q3_K: 11,
  q4_K: 12,
  q5_K: 13,
  q6_K: 14,
  iq2_xxs: 16,
  iq2_xs: 17,
  iq3_xxs: 18,
  iq1_s: 19,
  iq4_nl: 20,
  iq3_s: 21,
  iq2_s: 22,
  iq4_xs: 23,
  i8: 24,
  i16: 25,
  i32: 26,
  i64: 27,
  f64: 28,
  iq1_m: 29,
  bf16: 30,
  tq1_0: 34,
  tq2_0: 35,
  mxfp4: 39,
  nvfp4: 40,
} as const;

export type DType = keyof typeof GGML_TYPE_IDS;

/** Floating-point types a tensor can hold and compute in. */
export const FLOAT_DTYPES = ['f32', 'f16', 'bf16'] as const;
export type FloatDType = (typeof FLOAT_DTYPES)[number];

/** Block-quantized storage types (frozen weights: matmul, get_rows, dequantize). */
export const QUANT_DTYPES = [
  'q4_0',
  'q4_1',
  'q5_0',
  'q5_1',
  'q8_0',
  'q2_K',
  'q3_K',
  'q4_K',
  'q5_K',
  'q6_K',
  'iq2_xxs',
  'iq2_xs',
  'iq2_s',
  'iq3_xxs',
  'iq3_s',
  'iq1_s',
  'iq1_m',
  'iq4_nl',
  'iq4_xs',
  'tq1_0',
  'tq2_0',
  'mxfp4',
  'nvfp4',
] as const;
export type QuantDType = (typeof QUANT_DTYPES)[number];

const BY_ID = new Map<number, DType>(Object.entries(GGML_TYPE_IDS).map(([k, v]) => [v, k as DType]));

export function dtypeFromId(id: number): DType {
  const t = BY_ID.get(id);
  if (t === undefined) throw new RangeError(`unknown ggml type id ${id}`);
  return t;
}

export function isDType(s: string): s is DType {
  return Object.hasOwn(GGML_TYPE_IDS, s);
}

export function isFloatDType(t: DType): t is FloatDType {
  return (FLOAT_DTYPES as readonly string[]).includes(t);
}

export function isQuantDType(t: DType): t is QuantDType {
  return (QUANT_DTYPES as readonly string[]).includes(t);
}
