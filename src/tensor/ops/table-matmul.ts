/**
 * The op table's entries for the matrix products (src/tensor/ops/matmul.ts): `linear`, checked with
 * trainable weights and with frozen weights of every storage kind it reads (quantized, f16/bf16, a
 * bf16 input gradient, the CPU's repacked layout, a persistent transposed copy), and `matmul`.
 */
import type { DType } from '../../engine/dtype.js';
import { TensorStore } from '../store.js';
import type { Tensor } from '../tensor.js';
import { attachTransposed } from '../transposed.js';
import { simple, type CheckContext, type GradCheck, type OpEntry } from './check.js';
import { add, mul } from './elementwise.js';
import { linear, matmul } from './matmul.js';

/** A frozen `[rows, cols]` weight of `dtype` with N(0, 0.01) values, and its values as stored (after rounding). */
function frozenWeight(
  c: CheckContext,
  [rows, cols]: [number, number],
  dtype: DType,
  seed: number,
): { w: Tensor; stored: Float32Array } {
  const w = c.store(TensorStore.from(c.backend, c.normals(rows * cols, seed, 0.1), [rows, cols], { dtype }));
  return { w, stored: w.read() };
}

export const MATMUL_OPS: readonly OpEntry[] = [
  {
    name: 'linear',
    forward: linear,
    gradient:
      'dX = dY·W as mul_mat(Wᵀ, dY), Wᵀ dequantized and transposed in the graph or a persistent copy; dW = dYᵀ·X, summed over groups that share W',
    checks: [
      simple(
        'linear',
        1029,
        [
          [3, 7],
          [5, 7],
        ],
        ([x, w]) => linear(x!, w!),
        (R, [x, w]) => R.linear(x!, w!),
      ),
      simple(
        'linear (3-D input)',
        1030,
        [
          [2, 3, 7],
          [5, 7],
        ],
        ([x, w]) => linear(x!, w!),
        (R, [x, w]) => R.linear(x!, w!),
      ),
      // q, k and v read one normed input: its transposed copy for the weight gradients is made once
      simple(
        'linear: one input into three weights, one of them twice (a shared transposed input)',
        1031,
        [
          [2, 3, 7],
          [5, 7],
          [5, 7],
          [5, 7],
        ],
        ([x, a, b, c]) => add(add(linear(x!, a!), linear(x!, b!)), mul(linear(x!, c!), linear(x!, a!))),
        (R, [x, a, b, c]) =>
          R.add(R.add(R.linear(x!, a!), R.linear(x!, b!)), R.mul(R.linear(x!, c!), R.linear(x!, a!))),
      ),
      simple(
        'linear (batched, grouped weight)',
        1032,
        [
          [2, 6, 3, 5],
          [2, 2, 4, 5],
        ],
        ([x, w]) => linear(x!, w!),
        (R, [x, w]) => R.linear(x!, w!),
      ),
      ...(['q4_0', 'q8_0', 'q4_K', 'f16', 'bf16'] as const).map((dtype, i): GradCheck => ({
        name: `linear with frozen ${dtype} weight`,
        seed: 1036 + i,
        inputs: [[3, 256]],
        build: ([x], c) => {
          const { w, stored } = frozenWeight(c, [5, 256], dtype, 7);
          return { out: linear(x!, w), ref: (R, [xr]) => R.linear(xr!, R.arr([5, 256], stored)) };
        },
        // the CPU rounds x to the weight's dot-product type (q8 blocks, f16, bf16) in the forward
        fwdTol: dtype === 'bf16' ? 1e-2 : dtype === 'f16' ? 2e-3 : 2e-2,
        gradTol: dtype === 'bf16' ? 1e-2 : 2e-3,
      })),
      // the input gradient in a compute type (Tensor.gradType, QLoRA's bnb_4bit_compute_dtype): Wᵀ made
      // in bf16 inside the graph, dY rounded to bf16 by the kernel, f32 sums
      ...(['f32', 'iq4_nl', 'q4_0'] as const).map((dtype, i): GradCheck => ({
        name: `linear with frozen ${dtype} weight, input gradient in bf16`,
        seed: 1041 + i,
        inputs: [[3, 64]],
        build: ([x], c) => {
          const { w, stored } = frozenWeight(c, [32, 64], dtype, 9);
          w.gradType = 'bf16';
          return { out: linear(x!, w), ref: (R, [xr]) => R.linear(xr!, R.arr([32, 64], stored)) };
        },
        fwdTol: dtype === 'f32' ? 1e-4 : 2e-2,
        // two bf16 roundings (W and dY, 2⁻⁹ each) in every product of the sum
        gradTol: 1e-2,
      })),
      // the forward through the CPU's repacked layout, the input gradient through the plain weight
      // (on a device without a repack buffer the weight itself: the same reference)
      ...(['iq4_nl', 'q4_0'] as const).map((dtype, i): GradCheck => ({
        name: `linear with frozen ${dtype} weight, repacked for the forward where the device repacks`,
        seed: 1044 + i,
        inputs: [[8, 64]],
        build: ([x], c) => {
          const { w, stored } = frozenWeight(c, [32, 64], dtype, 10);
          const fwd = c.repacked(w) ?? w;
          return { out: linear(x!, fwd), ref: (R, [xr]) => R.linear(xr!, R.arr([32, 64], stored)) };
        },
        fwdTol: 2e-2,
      })),
      ...(['f32', 'same'] as const).map((mode, i): GradCheck => ({
        name: `linear with frozen q8_0 weight and a persistent transposed copy (${mode})`,
        seed: 1046 + i,
        inputs: [[3, 64]],
        build: ([x], c) => {
          const { w, stored } = frozenWeight(c, [32, 64], 'q8_0', 8);
          c.store(attachTransposed(w, mode).tensors[0]!);
          return { out: linear(x!, w), ref: (R, [xr]) => R.linear(xr!, R.arr([32, 64], stored)) };
        },
        fwdTol: 2e-2,
        // 'same' re-quantizes Wᵀ to q8_0: a second rounding (DESIGN.md §2)
        gradTol: mode === 'f32' ? 1e-3 : 2e-2,
      })),
      // Forward only, at sizes where GPU backends switch to their tiled matmul shaders (lavapipe with
      // LP_NATIVE_VECTOR_WIDTH=128 got the 96 → 10 one wrong while every small case above passed).
      {
        ...simple(
          'linear forward at 48×96 → 10 with a f32 weight',
          1048,
          [
            [48, 96],
            [10, 96],
          ],
          ([x, w]) => linear(x!, w!),
          (R, [x, w]) => R.linear(x!, w!),
        ),
        frozen: [0, 1],
      },
      ...(['f32', 'f16', 'q8_0', 'q4_0', 'q4_K'] as const).map((dtype, i): GradCheck => ({
        name: `linear forward at 48×256 → 96 with a ${dtype} weight`,
        seed: 1049 + i,
        inputs: [[48, 256]],
        frozen: [0],
        build: ([x], c) => {
          const { w, stored } = frozenWeight(c, [96, 256], dtype, 12);
          return { out: linear(x!, w), ref: (R, [xr]) => R.linear(xr!, R.arr([96, 256], stored)) };
        },
        fwdTol: dtype === 'f32' ? 1e-4 : 2e-2,
      })),
    ],
  },
  {
    name: 'matmul',
    forward: matmul,
    gradient: 'as linear on Bᵀ (a @ b = linear(a, bᵀ)), the broadcast batch dimensions summed back',
    checks: [
      simple(
        'matmul',
        1033,
        [
          [3, 5],
          [5, 4],
        ],
        ([a, b]) => matmul(a!, b!),
        (R, [a, b]) => R.matmul(a!, b!),
      ),
      simple(
        'matmul (batched, broadcast)',
        1034,
        [
          [2, 3, 5],
          [5, 4],
        ],
        ([a, b]) => matmul(a!, b!),
        (R, [a, b]) => R.matmul(a!, b!),
      ),
      simple(
        'matmul (broadcast first operand)',
        1035,
        [
          [3, 5],
          [2, 5, 4],
        ],
        ([a, b]) => matmul(a!, b!),
        (R, [a, b]) => R.matmul(a!, b!),
      ),
    ],
  },
];
