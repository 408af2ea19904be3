/**
 * Every op with a gradient, checked on every available device:
 * - forward against the float64 reference in tests/helpers/ref.ts;
 * - gradients against central finite differences of that reference, computed in float64
 *   (ε = 1e-5), for the loss Σ op(x)·R with a fixed random R;
 * - forward on each non-CPU device against the CPU.
 * Inputs are random, of odd sizes, seeded per case.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Backend } from '../../src/engine/device.js';
import { Graph } from '../../src/tensor/graph.js';
import {
  add,
  affine,
  cast,
  concat,
  contiguous,
  crossEntropy,
  div,
  dropout,
  dropoutMask,
  embedding,
  exp,
  expand,
  gelu,
  linear,
  linearCrossEntropy,
  llama3FreqFactors,
  log,
  matmul,
  mean,
  mul,
  permute,
  reshape,
  rmsNorm,
  rope,
  scale,
  silu,
  slice,
  softmax,
  sqr,
  sqrt,
  sub,
  sum,
  swiglu,
  transpose,
  view,
} from '../../src/tensor/index.js';
import { TensorStore } from '../../src/tensor/store.js';
import { attachTransposed } from '../../src/tensor/transposed.js';
import { repackedCopy } from '../../src/train/frozen.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import { testDevices } from '../helpers/devices.js';
import * as R from '../helpers/ref.js';

interface Ctx {
  g: Graph;
  backend: Backend;
  /** Stored tensors the case creates besides its trainable inputs (freed after the case). */
  store(t: Tensor): Tensor;
}

interface Case {
  name: string;
  /** Shapes of the f32 inputs, trainable unless listed in `frozen`. */
  inputs: number[][];
  frozen?: number[];
  /** Inputs drawn from [0.5, 2) instead of N(0, 1) (sqrt, log, divisors). */
  positive?: number[];
  build(x: Tensor[], c: Ctx): { out: Tensor; feed?: (g: Graph) => void; ref?: (x: R.Arr[]) => R.Arr };
  ref?: (x: R.Arr[]) => R.Arr;
  /** Tolerances on max|error| / max|reference|; defaults 1e-4 forward, 1e-3 gradient. */
  fwdTol?: number;
  gradTol?: number;
}

const mask4x6 = R.arr(
  [4, 6],
  [0, 0, -Infinity, 0, 0, 0, 0, 0, 0, -Infinity, 0, 0, -Infinity, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -Infinity],
);
const ids = [4, 0, 3, 3, 1, 6, 2];
const positions = [0, 3, 1, 7, 2];
const labels = [2, -100, 0, 6, 4, -100, 1];
const ff = Array.from(
  llama3FreqFactors({
    dims: 8,
    base: 500000,
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 16,
  }),
);

const CASES: Case[] = [
  {
    name: 'add (same shape)',
    inputs: [
      [3, 5],
      [3, 5],
    ],
    build: ([a, b]) => ({ out: add(a!, b!) }),
    ref: ([a, b]) => R.add(a!, b!),
  },
  {
    name: 'add (broadcast row)',
    inputs: [[3, 5], [5]],
    build: ([a, b]) => ({ out: add(a!, b!) }),
    ref: ([a, b]) => R.add(a!, b!),
  },
  {
    name: 'add (broadcast both)',
    inputs: [
      [3, 1],
      [1, 5],
    ],
    build: ([a, b]) => ({ out: add(a!, b!) }),
    ref: ([a, b]) => R.add(a!, b!),
  },
  {
    name: 'sub (broadcast first)',
    inputs: [[5], [2, 3, 5]],
    build: ([a, b]) => ({ out: sub(a!, b!) }),
    ref: ([a, b]) => R.sub(a!, b!),
  },
  {
    name: 'mul (broadcast)',
    inputs: [
      [2, 3, 5],
      [3, 1],
    ],
    build: ([a, b]) => ({ out: mul(a!, b!) }),
    ref: ([a, b]) => R.mul(a!, b!),
  },
  {
    name: 'div (broadcast)',
    inputs: [[3, 5], [5]],
    positive: [1],
    build: ([a, b]) => ({ out: div(a!, b!) }),
    ref: ([a, b]) => R.div(a!, b!),
  },
  {
    name: 'scale',
    inputs: [[3, 7]],
    build: ([a]) => ({ out: scale(a!, -1.7) }),
    ref: ([a]) => R.map(a!, (v) => -1.7 * v),
  },
  {
    name: 'affine',
    inputs: [[3, 7]],
    build: ([a]) => ({ out: affine(a!, 0.3, 2) }),
    ref: ([a]) => R.map(a!, (v) => 0.3 * v + 2),
  },
  {
    name: 'sqr',
    inputs: [[3, 7]],
    build: ([a]) => ({ out: sqr(a!) }),
    ref: ([a]) => R.map(a!, (v) => v * v),
  },
  {
    name: 'sqrt',
    inputs: [[3, 7]],
    positive: [0],
    build: ([a]) => ({ out: sqrt(a!) }),
    ref: ([a]) => R.map(a!, Math.sqrt),
  },
  { name: 'exp', inputs: [[3, 7]], build: ([a]) => ({ out: exp(a!) }), ref: ([a]) => R.map(a!, Math.exp) },
  {
    name: 'log',
    inputs: [[3, 7]],
    positive: [0],
    build: ([a]) => ({ out: log(a!) }),
    ref: ([a]) => R.map(a!, Math.log),
  },
  {
    name: 'expand',
    inputs: [[3, 1]],
    build: ([a]) => ({ out: expand(a!, [2, 3, 5]) }),
    ref: ([a]) => R.expand(a!, [2, 3, 5]),
  },
  { name: 'sum (all)', inputs: [[3, 5, 7]], build: ([a]) => ({ out: sum(a!) }), ref: ([a]) => R.sum(a!) },
  {
    name: 'sum (last axis)',
    inputs: [[3, 5, 7]],
    build: ([a]) => ({ out: sum(a!, -1) }),
    ref: ([a]) => R.sum(a!, -1),
  },
  {
    name: 'sum (middle axis, keepDim)',
    inputs: [[3, 5, 7]],
    build: ([a]) => ({ out: sum(a!, 1, true) }),
    ref: ([a]) => R.sum(a!, 1, true),
  },
  {
    name: 'sum (first axis)',
    inputs: [[3, 5, 7]],
    build: ([a]) => ({ out: sum(a!, 0) }),
    ref: ([a]) => R.sum(a!, 0),
  },
  {
    name: 'mean (axis 1)',
    inputs: [[3, 5, 7]],
    build: ([a]) => ({ out: mean(a!, 1) }),
    ref: ([a]) => R.map(R.sum(a!, 1), (v) => v / 5),
  },
  {
    name: 'reshape',
    inputs: [[3, 10]],
    build: ([a]) => ({ out: mul(reshape(a!, [5, 2, 3]), reshape(a!, [5, 2, 3])) }),
    ref: ([a]) => R.reshape(R.mul(a!, a!), [5, 2, 3]),
  },
  {
    name: 'view',
    inputs: [[4, 6]],
    build: ([a]) => ({ out: mul(view(a!, [2, 12]), view(a!, [2, 12])) }),
    ref: ([a]) => R.reshape(R.mul(a!, a!), [2, 12]),
  },
  {
    name: 'permute',
    inputs: [[2, 3, 5, 7]],
    build: ([a]) => ({ out: contiguous(permute(a!, [2, 0, 3, 1])) }),
    ref: ([a]) => R.permute(a!, [2, 0, 3, 1]),
  },
  {
    name: 'transpose',
    inputs: [[3, 5, 7]],
    build: ([a]) => ({ out: contiguous(transpose(a!, 0, 2)) }),
    ref: ([a]) => R.transpose(a!, 0, 2),
  },
  {
    name: 'contiguous',
    inputs: [[5, 7]],
    build: ([a]) => ({ out: contiguous(transpose(a!)) }),
    ref: ([a]) => R.transpose(a!),
  },
  {
    name: 'concat (axis 1)',
    inputs: [
      [3, 2, 5],
      [3, 4, 5],
    ],
    build: ([a, b]) => ({ out: concat(a!, b!, 1) }),
    ref: ([a, b]) => R.concat(a!, b!, 1),
  },
  {
    name: 'concat (last axis)',
    inputs: [
      [3, 5],
      [3, 2],
    ],
    build: ([a, b]) => ({ out: concat(a!, b!, -1) }),
    ref: ([a, b]) => R.concat(a!, b!, -1),
  },
  {
    name: 'slice (axis 0)',
    inputs: [[7, 5]],
    build: ([a]) => ({ out: contiguous(slice(a!, 0, 2, 5)) }),
    ref: ([a]) => R.slice(a!, 0, 2, 5),
  },
  {
    name: 'slice (last axis)',
    inputs: [[3, 9]],
    build: ([a]) => ({ out: contiguous(slice(a!, -1, 1, 8)) }),
    ref: ([a]) => R.slice(a!, -1, 1, 8),
  },
  {
    name: 'cast f32 → f16 → f32',
    inputs: [[3, 7]],
    build: ([a]) => ({ out: cast(cast(a!, 'f16'), 'f32') }),
    ref: ([a]) => a!,
    fwdTol: 2e-3,
    gradTol: 2e-3,
  },
  {
    name: 'cast f32 → bf16 → f32',
    inputs: [[3, 7]],
    build: ([a]) => ({ out: cast(cast(a!, 'bf16'), 'f32') }),
    ref: ([a]) => a!,
    fwdTol: 1e-2,
    gradTol: 1e-2,
  },
  {
    name: 'linear',
    inputs: [
      [3, 7],
      [5, 7],
    ],
    build: ([x, w]) => ({ out: linear(x!, w!) }),
    ref: ([x, w]) => R.linear(x!, w!),
  },
  {
    name: 'linear (3-D input)',
    inputs: [
      [2, 3, 7],
      [5, 7],
    ],
    build: ([x, w]) => ({ out: linear(x!, w!) }),
    ref: ([x, w]) => R.linear(x!, w!),
  },
  {
    // q, k and v read one normed input: its transposed copy for the weight gradients is made once
    name: 'linear: one input into three weights, one of them twice (a shared transposed input)',
    inputs: [
      [2, 3, 7],
      [5, 7],
      [5, 7],
      [5, 7],
    ],
    build: ([x, a, b, c]) => ({
      out: add(add(linear(x!, a!), linear(x!, b!)), mul(linear(x!, c!), linear(x!, a!))),
    }),
    ref: ([x, a, b, c]) =>
      R.add(R.add(R.linear(x!, a!), R.linear(x!, b!)), R.mul(R.linear(x!, c!), R.linear(x!, a!))),
  },
  {
    name: 'linear (batched, grouped weight)',
    inputs: [
      [2, 6, 3, 5],
      [2, 2, 4, 5],
    ],
    build: ([x, w]) => ({ out: linear(x!, w!) }),
    ref: ([x, w]) => R.linear(x!, w!),
  },
  {
    name: 'matmul',
    inputs: [
      [3, 5],
      [5, 4],
    ],
    build: ([a, b]) => ({ out: matmul(a!, b!) }),
    ref: ([a, b]) => R.matmul(a!, b!),
  },
  {
    name: 'matmul (batched, broadcast)',
    inputs: [
      [2, 3, 5],
      [5, 4],
    ],
    build: ([a, b]) => ({ out: matmul(a!, b!) }),
    ref: ([a, b]) => R.matmul(a!, b!),
  },
  {
    name: 'matmul (broadcast first operand)',
    inputs: [
      [3, 5],
      [2, 5, 4],
    ],
    build: ([a, b]) => ({ out: matmul(a!, b!) }),
    ref: ([a, b]) => R.matmul(a!, b!),
  },
  ...(['q4_0', 'q8_0', 'q4_K', 'f16', 'bf16'] as const).map((dtype): Case => ({
    name: `linear with frozen ${dtype} weight`,
    inputs: [[3, 256]],
    build: ([x], c) => {
      const rand = R.rng(7);
      const w = c.store(
        TensorStore.from(c.backend, Float32Array.from(R.normals(5 * 256, rand, 0.1)), [5, 256], { dtype }),
      );
      const wq = R.arr([5, 256], w.read()); // the weight as stored (after rounding)
      return { out: linear(x!, w), ref: ([xr]) => R.linear(xr!, wq) };
    },
    // the CPU rounds x to the weight's dot-product type (q8 blocks, f16, bf16) in the forward
    fwdTol: dtype === 'bf16' ? 1e-2 : dtype === 'f16' ? 2e-3 : 2e-2,
    gradTol: dtype === 'bf16' ? 1e-2 : 2e-3,
  })),
  // the input gradient in a compute type (Tensor.gradType, QLoRA's bnb_4bit_compute_dtype): Wᵀ made
  // in bf16 inside the graph, dY rounded to bf16 by the kernel, f32 sums
  ...(['f32', 'iq4_nl', 'q4_0'] as const).map((dtype): Case => ({
    name: `linear with frozen ${dtype} weight, input gradient in bf16`,
    inputs: [[3, 64]],
    build: ([x], c) => {
      const rand = R.rng(9);
      const w = c.store(
        TensorStore.from(c.backend, Float32Array.from(R.normals(32 * 64, rand, 0.1)), [32, 64], { dtype }),
      );
      w.gradType = 'bf16';
      const wq = R.arr([32, 64], w.read());
      return { out: linear(x!, w), ref: ([xr]) => R.linear(xr!, wq) };
    },
    fwdTol: dtype === 'f32' ? 1e-4 : 2e-2,
    // two bf16 roundings (W and dY, 2⁻⁹ each) in every product of the sum
    gradTol: 1e-2,
  })),
  // the forward through the CPU's repacked layout, the input gradient through the plain weight
  // (on a device without a repack buffer the weight itself: the same reference)
  ...(['iq4_nl', 'q4_0'] as const).map((dtype): Case => ({
    name: `linear with frozen ${dtype} weight, repacked for the forward where the device repacks`,
    inputs: [[8, 64]],
    build: ([x], c) => {
      const rand = R.rng(10);
      const w = c.store(
        TensorStore.from(c.backend, Float32Array.from(R.normals(32 * 64, rand, 0.1)), [32, 64], { dtype }),
      );
      const wq = R.arr([32, 64], w.read());
      const r = repackedCopy(w);
      const fwd = r === null ? w : c.store(r.weight);
      return { out: linear(x!, fwd), ref: ([xr]) => R.linear(xr!, wq) };
    },
    fwdTol: 2e-2,
  })),
  ...(['f32', 'same'] as const).map((mode): Case => ({
    name: `linear with frozen q8_0 weight and a persistent transposed copy (${mode})`,
    inputs: [[3, 64]],
    build: ([x], c) => {
      const rand = R.rng(8);
      const w = c.store(
        TensorStore.from(c.backend, Float32Array.from(R.normals(32 * 64, rand, 0.1)), [32, 64], {
          dtype: 'q8_0',
        }),
      );
      c.store(attachTransposed(w, mode).tensors[0]!);
      const wq = R.arr([32, 64], w.read());
      return { out: linear(x!, w), ref: ([xr]) => R.linear(xr!, wq) };
    },
    fwdTol: 2e-2,
    // 'same' re-quantizes Wᵀ to q8_0: a second rounding (DESIGN.md §2)
    gradTol: mode === 'f32' ? 1e-3 : 2e-2,
  })),
  // Forward only, at sizes where GPU backends switch to their tiled matmul shaders (lavapipe with
  // LP_NATIVE_VECTOR_WIDTH=128 got the 96 → 10 one wrong while every small case above passed).
  {
    name: 'linear forward at 48×96 → 10 with a f32 weight',
    inputs: [
      [48, 96],
      [10, 96],
    ],
    frozen: [0, 1],
    build: ([x, w]) => ({ out: linear(x!, w!) }),
    ref: ([x, w]) => R.linear(x!, w!),
  },
  ...(['f32', 'f16', 'q8_0', 'q4_0', 'q4_K'] as const).map((dtype): Case => ({
    name: `linear forward at 48×256 → 96 with a ${dtype} weight`,
    inputs: [[48, 256]],
    frozen: [0],
    build: ([x], c) => {
      const rand = R.rng(12);
      const w = c.store(
        TensorStore.from(c.backend, Float32Array.from(R.normals(96 * 256, rand, 0.1)), [96, 256], { dtype }),
      );
      const wq = R.arr([96, 256], w.read());
      return { out: linear(x!, w), ref: ([xr]) => R.linear(xr!, wq) };
    },
    fwdTol: dtype === 'f32' ? 1e-4 : 2e-2,
  })),
  {
    name: 'embedding',
    inputs: [[7, 5]],
    build: ([t], c) => {
      const idT = c.g.constant(Int32Array.from(ids), [ids.length], 'ids');
      return { out: embedding(t!, idT) };
    },
    ref: ([t]) => R.embedding(t!, ids, [ids.length]),
  },
  {
    name: 'rmsNorm',
    inputs: [[3, 2, 9]],
    build: ([x]) => ({ out: rmsNorm(x!, 1e-5) }),
    ref: ([x]) => R.rmsNorm(x!, 1e-5),
  },
  ...(['normal', 'neox'] as const).map((mode): Case => ({
    name: `rope (${mode})`,
    inputs: [[2, 5, 3, 8]],
    build: ([x], c) => ({
      out: rope(x!, c.g.constant(Int32Array.from(positions), [5], 'pos'), { mode, base: 10000 }),
    }),
    ref: ([x]) => R.rope(x!, positions, { mode, base: 10000 }),
  })),
  {
    name: 'rope (neox, llama3 frequency factors)',
    inputs: [[5, 3, 8]],
    build: ([x], c) => ({
      out: rope(x!, c.g.constant(Int32Array.from(positions), [5], 'pos'), {
        mode: 'neox',
        base: 500000,
        freqFactors: c.g.constant(Float32Array.from(ff), [4], 'ff'),
      }),
    }),
    ref: ([x]) => R.rope(x!, positions, { mode: 'neox', base: 500000, factors: ff }),
  },
  {
    name: 'softmax (scaled)',
    inputs: [[3, 7]],
    build: ([x]) => ({ out: softmax(x!, { scale: 0.7 }) }),
    ref: ([x]) => R.softmax(x!, { scale: 0.7 }),
  },
  {
    name: 'softmax (causal)',
    inputs: [[2, 5, 5]],
    build: ([x]) => ({ out: softmax(x!, { scale: 0.5, causal: true }) }),
    ref: ([x]) => R.softmax(x!, { scale: 0.5, causal: true }),
  },
  {
    name: 'softmax (mask)',
    inputs: [[2, 4, 6]],
    build: ([x], c) => ({
      out: softmax(x!, { scale: 0.5, mask: c.g.constant(Float32Array.from(mask4x6.data), [4, 6], 'mask') }),
    }),
    ref: ([x]) => R.softmax(x!, { scale: 0.5, mask: mask4x6 }),
  },
  { name: 'silu', inputs: [[3, 7]], build: ([x]) => ({ out: silu(x!) }), ref: ([x]) => R.silu(x!) },
  {
    name: 'swiglu',
    inputs: [
      [3, 7],
      [3, 7],
    ],
    build: ([a, b]) => ({ out: swiglu(a!, b!) }),
    ref: ([a, b]) => R.swiglu(a!, b!),
  },
  // ggml's CPU GELU reads a float16 table: forward to ~1e-3; the gradient rule is exact
  {
    name: 'gelu (tanh)',
    inputs: [[3, 7]],
    build: ([x]) => ({ out: gelu(x!) }),
    ref: ([x]) => R.gelu(x!),
    fwdTol: 3e-3,
  },
  {
    name: 'dropout (p=0.3, seeded)',
    inputs: [[4, 9]],
    build: ([x]) => {
      const mask = R.arr([4, 9], dropoutMask(1234, 0, 0, 36, 0.3));
      return { out: dropout(x!, 0.3, 1234), ref: ([xr]) => R.mul(xr!, mask) };
    },
  },
  {
    name: 'crossEntropy (ignore -100)',
    inputs: [[7, 9]],
    build: ([x], c) => {
      const lab = c.g.input([7], 'i32', 'labels');
      return { out: crossEntropy(x!, lab), feed: (g) => g.set(lab, Int32Array.from(labels)) };
    },
    ref: ([x]) => R.crossEntropy(x!, labels),
  },
  {
    name: 'crossEntropy (3-D logits)',
    inputs: [[1, 7, 9]],
    build: ([x], c) => {
      const lab = c.g.input([1, 7], 'i32', 'labels');
      return { out: crossEntropy(x!, lab), feed: (g) => g.set(lab, Int32Array.from(labels)) };
    },
    ref: ([x]) => R.crossEntropy(R.reshape(x!, [7, 9]), labels),
  },
  ...[1, 3, 7].map((chunkTokens): Case => ({
    name: `linearCrossEntropy (chunks of ${chunkTokens}, ignore -100)`,
    inputs: [
      [1, 7, 5],
      [9, 5],
    ],
    build: ([x, w], c) => {
      const lab = c.g.input([1, 7], 'i32', 'labels');
      return {
        out: linearCrossEntropy(x!, w!, lab, { chunkTokens }),
        feed: (g) => g.set(lab, Int32Array.from(labels)),
      };
    },
    ref: ([x, w]) => R.crossEntropy(R.reshape(R.linear(x!, w!), [7, 9]), labels),
  })),
];

interface Result {
  out: Float32Array;
  grads: Float32Array[];
  inputs: R.Arr[];
  /** The op's float64 forward. */
  opRef: (x: R.Arr[]) => R.Arr;
  /** The projected forward Σ op(x)·R whose gradient is checked. */
  lossRef: (x: R.Arr[]) => R.Arr;
}

function runCase(c: Case, backend: Backend, seed: number): Result {
  const rand = R.rng(seed);
  const inputs = c.inputs.map((shape, i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = c.positive?.includes(i)
      ? Float64Array.from({ length: n }, () => 0.5 + 1.5 * rand())
      : R.normals(n, rand);
    return R.arr(shape, data);
  });
  const store = TensorStore.create(
    backend,
    c.inputs.map((shape, i) => ({
      name: `x${i}`,
      shape,
      dtype: 'f32' as const,
      requiresGrad: !c.frozen?.includes(i),
    })),
  );
  const extra: TensorStore[] = [];
  const g = new Graph(backend);
  try {
    const xs = store.tensors;
    xs.forEach((t, i) => store.write(t, Float32Array.from(inputs[i]!.data)));
    const built = g.build(() => c.build(xs, { g, backend, store: (t) => (extra.push(t.store!), t) }));
    const opRef = built.ref ?? c.ref!;
    const proj = R.arr([...built.out.shape], R.normals(built.out.numel, rand));
    const loss = sum(mul(built.out, g.constant(Float32Array.from(proj.data), built.out.shape, 'projection')));
    const trainable = xs.filter((t) => t.requiresGrad);
    const grads = trainable.length > 0 ? g.backward(loss, trainable) : new Map<Tensor, Tensor>();
    const outT = g.output(built.out);
    const gradT = trainable.map((t) => g.output(grads.get(t)!));
    g.compile();
    built.feed?.(g);
    g.run();
    return {
      out: g.read(outT),
      grads: gradT.map((t) => g.read(t)),
      inputs,
      opRef,
      lossRef: (x) => R.mul(opRef(x), proj),
    };
  } finally {
    g.dispose();
    store.dispose();
    for (const s of extra) s.dispose();
  }
}

/** Central differences of Σ ref(x) in float64. */
function finiteDifferences(ref: (x: R.Arr[]) => R.Arr, inputs: R.Arr[], which: number): Float64Array {
  const eps = 1e-5;
  const x = inputs[which]!;
  const out = new Float64Array(x.data.length);
  const total = () => ref(inputs).data.reduce((s, v) => s + v, 0);
  for (let i = 0; i < x.data.length; i++) {
    const v = x.data[i]!;
    x.data[i] = v + eps;
    const up = total();
    x.data[i] = v - eps;
    const down = total();
    x.data[i] = v;
    out[i] = (up - down) / (2 * eps);
  }
  return out;
}

const { devices, skipped } = testDevices();
const cpuOutputs = new Map<string, Float32Array>();
/** Tolerance of a non-CPU device's forward against the CPU's, and against the reference. */
const DEVICE_TOL = 2e-2;
const GPU_FWD_TOL = 2e-3;

for (const device of devices) {
  describe(`gradient checks on ${device.name}`, () => {
    CASES.forEach((c, k) => {
      it(c.name, () => {
        const r = runCase(c, device.backend, 1000 + k);
        const fwdErr = R.relErr(r.out, r.opRef(r.inputs).data);
        // GPU backends may round matmul inputs to f16 (ggml-vulkan does): 2e-3 there
        const fwdTol = Math.max(c.fwdTol ?? 1e-4, device.backend.isCpu ? 0 : GPU_FWD_TOL);
        assert.ok(
          fwdErr <= fwdTol,
          `${c.name} forward: relative error ${fwdErr.toExponential(2)} on ${device.name}`,
        );
        let gi = 0;
        r.inputs.forEach((_, i) => {
          if (c.frozen?.includes(i)) return;
          const err = R.relErr(r.grads[gi++]!, finiteDifferences(r.lossRef, r.inputs, i));
          assert.ok(
            err <= (c.gradTol ?? 1e-3),
            `${c.name} gradient of input ${i}: relative error ${err.toExponential(2)} on ${device.name}`,
          );
        });
        if (device.backend.isCpu) cpuOutputs.set(c.name, r.out);
        const cpu = cpuOutputs.get(c.name);
        if (!device.backend.isCpu && cpu !== undefined) {
          const err = R.relErr(r.out, cpu);
          assert.ok(
            err <= DEVICE_TOL,
            `${c.name}: ${device.name} forward differs from CPU by ${err.toExponential(2)}`,
          );
        }
      });
    });
  });
}
for (const reason of skipped)
  describe(`gradient checks: ${reason.split(':')[0]!}`, { skip: reason }, () => undefined);
