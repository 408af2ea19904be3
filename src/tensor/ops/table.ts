/**
 * The op table: every differentiable op the tensor layer exports, with its forward function, its
 * gradient rule in one line (the rule itself is the closure under the forward, in elementwise.ts,
 * layout.ts, matmul.ts, nn.ts, loss.ts and ../checkpoint.ts) and the cases its gradient is checked on.
 *
 * tests/tensor/gradcheck.test.ts runs every case on every device: the forward against a float64
 * reference of the op (tests/helpers/ref.ts, through {@link Reference}), and the gradient of
 * Σ op(x)·R for a fixed random R against central finite differences of that reference. It also
 * fails when an exported op of src/tensor/ops/ records a gradient rule but has no entry here.
 *
 * @example
 * for (const op of OPS) console.log(op.name, '—', op.gradient, `(${op.checks.length} cases)`);
 */
import { checkpoint } from '../checkpoint.js';
import { simple, type OpEntry } from './check.js';
import { add, affine, div, exp, expand, log, mul, neg, scale, sqr, sqrt, sub } from './elementwise.js';
import { cast, concat, contiguous, mean, permute, reshape, slice, sum, transpose, view } from './layout.js';
import { linear } from './matmul.js';
import { rmsNorm, silu, swiglu } from './nn.js';
import { MATMUL_OPS } from './table-matmul.js';
import { NN_OPS } from './table-nn.js';

export type { CheckContext, GradCheck, OpEntry, RefArr, Reference, RefFn } from './check.js';

/**
 * Every differentiable op, in the order of the files that define it: elementwise.ts and layout.ts
 * here, then matmul.ts (table-matmul.ts), nn.ts and loss.ts (table-nn.ts), and last ../checkpoint.ts
 * (gradient checkpointing: a segment whose gradient rule recomputes it).
 */
export const OPS: readonly OpEntry[] = [
  {
    name: 'add',
    forward: add,
    gradient: 'dA = dY, dB = dY, each summed back over the dimensions it was broadcast along',
    checks: [
      simple(
        'add (same shape)',
        1000,
        [
          [3, 5],
          [3, 5],
        ],
        ([a, b]) => add(a!, b!),
        (R, [a, b]) => R.add(a!, b!),
      ),
      simple(
        'add (broadcast row)',
        1001,
        [[3, 5], [5]],
        ([a, b]) => add(a!, b!),
        (R, [a, b]) => R.add(a!, b!),
      ),
      simple(
        'add (broadcast both)',
        1002,
        [
          [3, 1],
          [1, 5],
        ],
        ([a, b]) => add(a!, b!),
        (R, [a, b]) => R.add(a!, b!),
      ),
    ],
  },
  {
    name: 'sub',
    forward: sub,
    gradient: 'dA = dY, dB = −dY (summed back over broadcast dimensions)',
    checks: [
      simple(
        'sub (broadcast first)',
        1003,
        [[5], [2, 3, 5]],
        ([a, b]) => sub(a!, b!),
        (R, [a, b]) => R.sub(a!, b!),
      ),
    ],
  },
  {
    name: 'mul',
    forward: mul,
    gradient: 'dA = dY·B, dB = dY·A (summed back over broadcast dimensions)',
    checks: [
      simple(
        'mul (broadcast)',
        1004,
        [
          [2, 3, 5],
          [3, 1],
        ],
        ([a, b]) => mul(a!, b!),
        (R, [a, b]) => R.mul(a!, b!),
      ),
    ],
  },
  {
    name: 'div',
    forward: div,
    gradient: 'dA = dY/B, dB = −dY·Y/B (summed back over broadcast dimensions)',
    checks: [
      {
        ...simple(
          'div (broadcast)',
          1005,
          [[3, 5], [5]],
          ([a, b]) => div(a!, b!),
          (R, [a, b]) => R.div(a!, b!),
        ),
        positive: [1],
      },
    ],
  },
  {
    name: 'scale',
    forward: scale,
    gradient: 'dX = s·dY',
    checks: [
      simple(
        'scale',
        1006,
        [[3, 7]],
        ([a]) => scale(a!, -1.7),
        (R, [a]) => R.map(a!, (v) => -1.7 * v),
      ),
    ],
  },
  {
    name: 'affine',
    forward: affine,
    gradient: 'dX = s·dY',
    checks: [
      simple(
        'affine',
        1007,
        [[3, 7]],
        ([a]) => affine(a!, 0.3, 2),
        (R, [a]) => R.map(a!, (v) => 0.3 * v + 2),
      ),
    ],
  },
  {
    name: 'neg',
    forward: neg,
    gradient: 'dX = −dY (scale by −1)',
    checks: [
      simple(
        'neg',
        1071,
        [[3, 7]],
        ([a]) => neg(a!),
        (R, [a]) => R.map(a!, (v) => -v),
      ),
    ],
  },
  {
    name: 'sqr',
    forward: sqr,
    gradient: 'dX = 2·X·dY',
    checks: [
      simple(
        'sqr',
        1008,
        [[3, 7]],
        ([a]) => sqr(a!),
        (R, [a]) => R.map(a!, (v) => v * v),
      ),
    ],
  },
  {
    name: 'sqrt',
    forward: sqrt,
    gradient: 'dX = dY / (2·Y)',
    checks: [
      {
        ...simple(
          'sqrt',
          1009,
          [[3, 7]],
          ([a]) => sqrt(a!),
          (R, [a]) => R.map(a!, Math.sqrt),
        ),
        positive: [0],
      },
    ],
  },
  {
    name: 'exp',
    forward: exp,
    gradient: 'dX = dY·Y',
    checks: [
      simple(
        'exp',
        1010,
        [[3, 7]],
        ([a]) => exp(a!),
        (R, [a]) => R.map(a!, Math.exp),
      ),
    ],
  },
  {
    name: 'log',
    forward: log,
    gradient: 'dX = dY / X',
    checks: [
      {
        ...simple(
          'log',
          1011,
          [[3, 7]],
          ([a]) => log(a!),
          (R, [a]) => R.map(a!, Math.log),
        ),
        positive: [0],
      },
    ],
  },
  {
    name: 'expand',
    forward: expand,
    gradient: 'dX = dY summed back over the expanded dimensions (repeat_back)',
    checks: [
      simple(
        'expand',
        1012,
        [[3, 1]],
        ([a]) => expand(a!, [2, 3, 5]),
        (R, [a]) => R.expand(a!, [2, 3, 5]),
      ),
    ],
  },
  {
    name: 'sum',
    forward: sum,
    gradient: 'dX = dY repeated over the summed elements',
    checks: [
      simple(
        'sum (all)',
        1013,
        [[3, 5, 7]],
        ([a]) => sum(a!),
        (R, [a]) => R.sum(a!),
      ),
      simple(
        'sum (last axis)',
        1014,
        [[3, 5, 7]],
        ([a]) => sum(a!, -1),
        (R, [a]) => R.sum(a!, -1),
      ),
      simple(
        'sum (middle axis, keepDim)',
        1015,
        [[3, 5, 7]],
        ([a]) => sum(a!, 1, true),
        (R, [a]) => R.sum(a!, 1, true),
      ),
      simple(
        'sum (first axis)',
        1016,
        [[3, 5, 7]],
        ([a]) => sum(a!, 0),
        (R, [a]) => R.sum(a!, 0),
      ),
    ],
  },
  {
    name: 'mean',
    forward: mean,
    gradient: 'dX = dY/n repeated over the n averaged elements (sum, then scale)',
    checks: [
      simple(
        'mean (axis 1)',
        1017,
        [[3, 5, 7]],
        ([a]) => mean(a!, 1),
        (R, [a]) => R.map(R.sum(a!, 1), (v) => v / 5),
      ),
    ],
  },
  {
    name: 'reshape',
    forward: reshape,
    gradient: 'dX = dY reshaped back to X',
    checks: [
      simple(
        'reshape',
        1018,
        [[3, 10]],
        ([a]) => mul(reshape(a!, [5, 2, 3]), reshape(a!, [5, 2, 3])),
        (R, [a]) => R.reshape(R.mul(a!, a!), [5, 2, 3]),
      ),
    ],
  },
  {
    name: 'view',
    forward: view,
    gradient: 'as reshape (a view never copies)',
    checks: [
      simple(
        'view',
        1019,
        [[4, 6]],
        ([a]) => mul(view(a!, [2, 12]), view(a!, [2, 12])),
        (R, [a]) => R.reshape(R.mul(a!, a!), [2, 12]),
      ),
    ],
  },
  {
    name: 'permute',
    forward: permute,
    gradient: 'dX = dY permuted by the inverse permutation',
    checks: [
      simple(
        'permute',
        1020,
        [[2, 3, 5, 7]],
        ([a]) => contiguous(permute(a!, [2, 0, 3, 1])),
        (R, [a]) => R.permute(a!, [2, 0, 3, 1]),
      ),
    ],
  },
  {
    name: 'transpose',
    forward: transpose,
    gradient: 'dX = dY with the same two dimensions swapped back (a permute)',
    checks: [
      simple(
        'transpose',
        1021,
        [[3, 5, 7]],
        ([a]) => contiguous(transpose(a!, 0, 2)),
        (R, [a]) => R.transpose(a!, 0, 2),
      ),
    ],
  },
  {
    name: 'contiguous',
    forward: contiguous,
    gradient: 'dX = dY',
    checks: [
      simple(
        'contiguous',
        1022,
        [[5, 7]],
        ([a]) => contiguous(transpose(a!)),
        (R, [a]) => R.transpose(a!),
      ),
    ],
  },
  {
    name: 'concat',
    forward: concat,
    gradient: 'dA, dB = the two slices of dY along the axis',
    checks: [
      simple(
        'concat (axis 1)',
        1023,
        [
          [3, 2, 5],
          [3, 4, 5],
        ],
        ([a, b]) => concat(a!, b!, 1),
        (R, [a, b]) => R.concat(a!, b!, 1),
      ),
      simple(
        'concat (last axis)',
        1024,
        [
          [3, 5],
          [3, 2],
        ],
        ([a, b]) => concat(a!, b!, -1),
        (R, [a, b]) => R.concat(a!, b!, -1),
      ),
    ],
  },
  {
    name: 'slice',
    forward: slice,
    gradient: 'dX = dY padded with zeros outside the slice',
    checks: [
      simple(
        'slice (axis 0)',
        1025,
        [[7, 5]],
        ([a]) => contiguous(slice(a!, 0, 2, 5)),
        (R, [a]) => R.slice(a!, 0, 2, 5),
      ),
      simple(
        'slice (last axis)',
        1026,
        [[3, 9]],
        ([a]) => contiguous(slice(a!, -1, 1, 8)),
        (R, [a]) => R.slice(a!, -1, 1, 8),
      ),
    ],
  },
  {
    name: 'cast',
    forward: cast,
    gradient: "dX = dY cast back to X's type",
    checks: [
      {
        ...simple(
          'cast f32 → f16 → f32',
          1027,
          [[3, 7]],
          ([a]) => cast(cast(a!, 'f16'), 'f32'),
          (_, [a]) => a!,
        ),
        fwdTol: 2e-3,
        gradTol: 2e-3,
      },
      {
        ...simple(
          'cast f32 → bf16 → f32',
          1028,
          [[3, 7]],
          ([a]) => cast(cast(a!, 'bf16'), 'f32'),
          (_, [a]) => a!,
        ),
        fwdTol: 1e-2,
        gradTol: 1e-2,
      },
    ],
  },
  ...MATMUL_OPS,
  ...NN_OPS,
  {
    name: 'checkpoint',
    forward: checkpoint,
    gradient:
      'the segment is built again from its inputs once dY exists, and dY runs back through that copy: dX and the gradients of the trainable stored tensors it reads',
    checks: [
      simple(
        'checkpoint (a segment of its input)',
        1068,
        [[3, 7]],
        ([a]) => checkpoint([a!], (h) => mul(silu(h), h)),
        (R, [a]) => R.mul(R.silu(a!), a!),
      ),
      simple(
        'checkpoint (a segment of a computed input, as a decoder block)',
        1071,
        [[3, 7]],
        ([a]) => checkpoint([sqr(a!)], (h) => silu(h)),
        (R, [a]) => R.silu(R.mul(a!, a!)),
      ),
      simple(
        'checkpoint (a segment reading a trainable weight)',
        1069,
        [
          [3, 8],
          [5, 8],
        ],
        // w is not an input of the segment: its gradient comes from the recomputation's tape
        ([x, w]) => checkpoint([x!], (h) => linear(rmsNorm(h, 1e-5), w!)),
        (R, [x, w]) => R.linear(R.rmsNorm(x!, 1e-5), w!),
      ),
      {
        ...simple(
          'checkpoint (two inputs, one frozen)',
          1070,
          [
            [4, 6],
            [4, 6],
          ],
          ([a, b]) => checkpoint([a!, b!], (p, q) => swiglu(p, q)),
          (R, [a, b]) => R.swiglu(a!, b!),
        ),
        frozen: [1],
      },
    ],
  },
];
