/**
 * Converting host arrays to and from ggml's storage formats, with ggml's own row functions: f16 and
 * bf16 conversions, quantization (`ggml_quantize_chunk`) and dequantization (`to_float` of the type
 * traits). Quantized rows must be a whole number of blocks.
 */
import { DTypeError, ShapeError, fmtShape } from '../errors.js';
import { GGML_TYPE_IDS, isQuantDType, type DType } from '../engine/dtype.js';
import { ToFloatProto, callProc, typeToFloat, type FnPtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { numel, type Shape } from './shape.js';

/** Elements per block (1 for plain types, 32 or 256 for quantized ones). */
export function blockSize(dtype: DType): number {
  return getEngine().api.blck_size(GGML_TYPE_IDS[dtype]);
}

/** Bytes of one row of `n` elements. */
export function rowBytes(dtype: DType, n: number): number {
  return getEngine().api.row_size(GGML_TYPE_IDS[dtype], n);
}

/** Bytes of a whole tensor of this shape. */
export function tensorBytes(dtype: DType, shape: Shape): number {
  const inner = shape[shape.length - 1] ?? 1;
  return rowBytes(dtype, inner) * (numel(shape) / inner);
}

/** Checks that a quantized type can store rows of this length. */
export function checkRowLength(dtype: DType, shape: Shape, what: string): void {
  const inner = shape[shape.length - 1] ?? 1;
  const blk = blockSize(dtype);
  if (inner % blk !== 0) {
    throw new ShapeError(
      `${what}: ${dtype} stores rows in blocks of ${blk}, but the last dimension of ${fmtShape(shape)} is ${inner}`,
      {
        hint: `use a type whose block divides ${inner} (q8_0/q4_0/iq4_nl: 32, k-quants: 256), or keep this tensor in f16/f32`,
      },
    );
  }
}

/** Encodes f32 values into the bytes of `dtype`. */
export function encode(dtype: DType, values: Float32Array, shape: Shape): Uint8Array {
  const { api } = getEngine();
  const n = numel(shape);
  if (values.length !== n) {
    throw new ShapeError(`data has ${values.length} values but shape ${fmtShape(shape)} holds ${n}`);
  }
  switch (dtype) {
    case 'f32':
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    case 'f16': {
      const out = new Uint8Array(n * 2);
      api.fp32_to_fp16_row(values, out, n);
      return out;
    }
    case 'bf16': {
      const out = new Uint8Array(n * 2);
      api.fp32_to_bf16_row(values, out, n);
      return out;
    }
    default: {
      if (!isQuantDType(dtype)) {
        throw new DTypeError(`cannot encode float values as ${dtype}`, {
          hint: 'write integer tensors with an Int32Array',
        });
      }
      checkRowLength(dtype, shape, 'quantize');
      const type = GGML_TYPE_IDS[dtype];
      if (api.quantize_requires_imatrix(type)) {
        throw new DTypeError(`${dtype} needs an importance matrix to quantize`, {
          hint: 'choose q2_K..q6_K, q4_0, q8_0 or iq4_nl, which quantize without one',
        });
      }
      const inner = shape[shape.length - 1] ?? 1;
      const rows = n / inner;
      const out = new Uint8Array(tensorBytes(dtype, shape));
      api.quantize_chunk(type, values, out, 0, rows, inner, null);
      return out;
    }
  }
}

const toFloatFns = new Map<DType, FnPtr>();

/** Decodes bytes of `dtype` into f32 values, in a new array or at the start of `into`. */
export function decode(dtype: DType, bytes: Uint8Array, count: number, into?: Float32Array): Float32Array {
  const { api } = getEngine();
  const out = into === undefined ? new Float32Array(count) : into.subarray(0, count);
  switch (dtype) {
    case 'f32':
      out.set(
        bytes.byteOffset % 4 === 0
          ? new Float32Array(bytes.buffer, bytes.byteOffset, count)
          : new Float32Array(bytes.slice().buffer, 0, count),
      );
      return out;
    case 'f16':
      api.fp16_to_fp32_row(bytes, out, count);
      return out;
    case 'bf16':
      api.bf16_to_fp32_row(bytes, out, count);
      return out;
    case 'i32': {
      const ints = new Int32Array(bytes.buffer, bytes.byteOffset, count);
      for (let i = 0; i < count; i++) out[i] = ints[i]!;
      return out;
    }
    default: {
      if (!isQuantDType(dtype)) throw new DTypeError(`cannot decode ${dtype} into floats`);
      let fn = toFloatFns.get(dtype);
      if (fn === undefined) {
        const toFloat = typeToFloat(api, GGML_TYPE_IDS[dtype]);
        if (toFloat === null) throw new DTypeError(`ggml has no dequantization for ${dtype}`);
        fn = toFloat;
        toFloatFns.set(dtype, fn);
      }
      callProc(fn, ToFloatProto, bytes, out, count);
      return out;
    }
  }
}

/** Element size in bytes for plain types (quantized types have none). */
export function elementBytes(dtype: DType): number {
  switch (dtype) {
    case 'f32':
    case 'i32':
      return 4;
    case 'f16':
    case 'bf16':
    case 'i16':
      return 2;
    case 'i8':
      return 1;
    case 'f64':
    case 'i64':
      return 8;
    default:
      throw new DTypeError(`${dtype} is block-quantized and has no element size`);
  }
}
