/**
 * Quantized linear layers: the quantized bytes of a weight by a method, and a drop-in linear layer
 * over them. Quantizing a whole model is src/train/quantize.ts (it works on a LlamaModel).
 */
import type { DType } from '../engine/dtype.js';
import { encode } from '../tensor/host.js';
import { add } from '../tensor/ops/elementwise.js';
import { linear } from '../tensor/ops/matmul.js';
import type { TensorStore } from '../tensor/store.js';
import type { Tensor } from '../tensor/tensor.js';
import { hqqQuantize } from './hqq.js';
import type { QuantMethod } from './methods.js';

/** Quantized bytes of a `[rows, cols]` weight by a method (HQQ through its solver, the rest through ggml). */
export function quantizeValues(
  values: Float32Array,
  shape: readonly [number, number],
  method: QuantMethod,
  dtype: DType,
): Uint8Array {
  if (method === 'hqq') return hqqQuantize(values, shape[1], { bits: dtype === 'q5_1' ? 5 : 4 });
  return encode(dtype, values, shape);
}

/** A drop-in linear layer over a quantized weight: `forward(x)` is `x @ Wᵀ (+ b)`. */
export class QuantizedLinear {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  private readonly store: TensorStore;

  constructor(store: TensorStore) {
    this.store = store;
    this.weight = store.get('weight');
    this.bias = store.has('bias') ? store.get('bias') : null;
  }

  forward(x: Tensor): Tensor {
    const y = linear(x, this.weight);
    return this.bias === null ? y : add(y, this.bias);
  }

  dispose(): void {
    this.store.dispose();
  }
}
