/**
 * The quantization compatibility matrix against what really runs (issue 7, item 2). `qtune quant
 * matrix --json` says, per device and method, whether a frozen weight of the method's type runs
 * forward and whether the gradient to the input flows through it (QLoRA). Here each entry is tried on
 * its device: a [64, 256] weight quantized by the method, y = x·Ŵᵀ and ∂Σ(c⊙y)/∂x = c·Ŵ computed
 * by qtune's graph and compared with float64 products of the stored (dequantized) weight Ŵ. An entry
 * that says "forward only" or "-" must be refused by `compile()` with an UnsupportedOpError, never
 * an abort. (tests/quant/config.test.ts checks that the matrix is the device probe.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Backend } from '../../src/engine/device.js';
import { isFloatDType } from '../../src/engine/dtype.js';
import { UnsupportedOpError } from '../../src/errors.js';
import { quantizeValues } from '../../src/quant/linear.js';
import type { MatrixEntry } from '../../src/quant/matrix.js';
import { METHODS, QUANT_METHODS } from '../../src/quant/methods.js';
import { Graph, TensorStore, linear, mul, sum, type Tensor } from '../../src/tensor/index.js';
import { qtune } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { normals, relErr, rng } from '../helpers/ref.js';

const N = 64; // output rows
const K = 256; // one k-quant block per row
// tokens: more than 8, so ggml-vulkan runs its matrix-matrix kernels; its matrix-vector kernels for
// 2–8 columns take minutes to compile on lavapipe (q8_0: 12 s for 1 column, over 60 s for 7)
const M = 16;

/**
 * Bounds (max error / max reference), as in tests/tensor/gradcheck.test.ts: the forward rounds x to
 * the weight's dot-product type (q8 blocks on the CPU, f16 on Vulkan); the input gradient runs on Ŵ
 * dequantized to f32 (exact on the CPU, f16-rounded inputs on Vulkan; f16 weights round dy to f16).
 */
function bounds(backend: Backend, dtype: string): { forward: number; gradient: number } {
  const exact = backend.isCpu && dtype !== 'f16' && dtype !== 'bf16';
  return { forward: dtype === 'f32' && backend.isCpu ? 1e-5 : 2e-2, gradient: exact ? 1e-5 : 1e-2 };
}

interface Run {
  y: Float32Array;
  dx: Float32Array | null;
  w: Float32Array;
}

/** Builds y = x·Wᵀ (and, with `backward`, ∂Σ(c⊙y)/∂x) on the device; compile() may refuse it. */
function run(entry: MatrixEntry, backend: Backend, backward: boolean, x: Float64Array, c: Float64Array): Run {
  const values = Float32Array.from(normals(N * K, rng(7), 0.1));
  const store = TensorStore.create(backend, [
    { name: 'w', shape: [N, K], dtype: entry.dtype },
    { name: 'x', shape: [M, K], dtype: 'f32', requiresGrad: true },
  ]);
  const g = new Graph(backend);
  try {
    const w = store.get('w');
    store.write(
      w,
      isFloatDType(entry.dtype) ? values : quantizeValues(values, [N, K], entry.method, entry.dtype),
    );
    store.write(store.get('x'), Float32Array.from(x));
    const y = g.build(() => linear(store.get('x'), w));
    const yOut = g.output(y);
    let dxOut: Tensor | null = null;
    if (backward) {
      const loss = g.build(() => sum(mul(y, g.constant(Float32Array.from(c), [M, N]))));
      dxOut = g.output(g.backward(loss, [store.get('x')]).get(store.get('x'))!);
    }
    g.compile();
    g.run();
    return { y: g.read(yOut), dx: dxOut === null ? null : g.read(dxOut), w: store.read(w) };
  } finally {
    g.dispose();
    store.dispose();
  }
}

const rows = JSON.parse(qtune(['quant', 'matrix', '--json']).stdout) as MatrixEntry[];
const { devices, skipped } = testDevices();

describe('the quantization matrix against what runs', () => {
  it('lists every method at every bit width for every device', () => {
    for (const device of devices) {
      const listed = rows.filter((r) => r.device === device.name).map((r) => `${r.method}:${r.bits}`);
      const expected = QUANT_METHODS.flatMap((m) => Object.keys(METHODS[m].dtypes).map((b) => `${m}:${b}`));
      assert.deepEqual(listed.sort(), expected.sort(), device.name);
    }
  });

  for (const device of devices) {
    for (const entry of rows.filter((r) => r.device === device.name)) {
      const label =
        Object.keys(METHODS[entry.method].dtypes).length > 1 ? `${entry.method}:${entry.bits}` : entry.method;
      const says = entry.train ? 'train' : entry.forward ? 'forward only' : 'not supported';
      it(`${label} (${entry.dtype}) on ${device.name}: ${says}, as the matrix says`, () => {
        const rand = rng(3);
        const x = normals(M * K, rand);
        const c = normals(M * N, rand);
        if (!entry.forward) {
          assert.throws(() => run(entry, device.backend, false, x, c), UnsupportedOpError);
          return;
        }
        const r = run(entry, device.backend, entry.train, x, c);
        // float64 references from the stored weight Ŵ
        const y = new Float64Array(M * N);
        const dx = new Float64Array(M * K);
        for (let m = 0; m < M; m++)
          for (let n = 0; n < N; n++)
            for (let k = 0; k < K; k++) {
              y[m * N + n]! += x[m * K + k]! * r.w[n * K + k]!;
              dx[m * K + k]! += c[m * N + n]! * r.w[n * K + k]!;
            }
        const tol = bounds(device.backend, entry.dtype);
        const fwd = relErr(r.y, y);
        const grad = r.dx === null ? null : relErr(r.dx, dx);
        console.log(
          `${label} on ${device.name}: forward error ${fwd.toExponential(1)}${grad === null ? '' : `, input gradient error ${grad.toExponential(1)}`}`,
        );
        assert.ok(fwd <= tol.forward, `forward error ${fwd.toExponential(2)} > ${tol.forward}`);
        if (grad !== null) {
          assert.ok(grad <= tol.gradient, `input gradient error ${grad.toExponential(2)} > ${tol.gradient}`);
        } else {
          assert.throws(() => run(entry, device.backend, true, x, c), UnsupportedOpError);
        }
      });
    }
  }
  for (const reason of skipped) it(`on ${reason.split(':')[0]!}`, { skip: reason }, () => undefined);
});
