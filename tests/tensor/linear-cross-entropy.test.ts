/**
 * linearCrossEntropy: the output layer fused with the cross-entropy, in chunks of token rows.
 * - loss, dh and dW against a closed-form float64 reference computed here (logits = h·Wᵀ, softmax
 *   cross-entropy with ignored labels, dlogits = (softmax − onehot)·w, dh = dlogits·W,
 *   dW = dlogitsᵀ·h), for chunk sizes that divide the token count and that do not;
 * - against the unfused crossEntropy(linear(h, W)) for quantized and bf16 weights (the same kernels);
 * - the graph order that makes the chunks cheap: each chunk's logits are computed after the previous
 *   chunk's gradient, and the compute buffer shrinks with the chunk;
 * - the typed errors.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { QtuneError, ShapeError } from '../../src/errors.js';
import { Graph } from '../../src/tensor/graph.js';
import {
  cast,
  crossEntropy,
  linear,
  linearCrossEntropy,
  mul,
  type LinearCrossEntropyOptions,
} from '../../src/tensor/index.js';
import { labelInputs } from '../../src/tensor/ops/loss.js';
import { TensorStore } from '../../src/tensor/store.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import type { DType } from '../../src/engine/dtype.js';
import { normals, relErr, rng } from '../helpers/ref.js';

const backend = cpuBackend();
backend.setThreads(1);

interface Ref {
  loss: number;
  dh: Float64Array;
  dw: Float64Array;
}

/** The closed form in float64: h [N, C], w [V, C], labels [N]. */
function reference(
  h: ArrayLike<number>,
  w: ArrayLike<number>,
  labels: readonly number[],
  C: number,
  V: number,
  o: { ignore?: number; mean?: boolean; dy?: number } = {},
): Ref {
  const N = labels.length;
  const ignore = o.ignore ?? -100;
  const dy = o.dy ?? 1;
  const count = labels.filter((l) => l !== ignore).length;
  const wi = o.mean === false ? 1 : count === 0 ? 0 : 1 / count;
  const dh = new Float64Array(N * C);
  const dw = new Float64Array(V * C);
  let loss = 0;
  for (let i = 0; i < N; i++) {
    const l = labels[i]!;
    if (l === ignore) continue;
    const z = new Float64Array(V);
    for (let v = 0; v < V; v++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += h[i * C + c]! * w[v * C + c]!;
      z[v] = s;
    }
    const m = Math.max(...z);
    let se = 0;
    for (let v = 0; v < V; v++) se += Math.exp(z[v]! - m);
    const lse = m + Math.log(se);
    loss += wi * (lse - z[l]!);
    for (let v = 0; v < V; v++) {
      const d = dy * wi * (Math.exp(z[v]! - lse) - (v === l ? 1 : 0));
      for (let c = 0; c < C; c++) {
        dh[i * C + c] = dh[i * C + c]! + d * w[v * C + c]!;
        dw[v * C + c] = dw[v * C + c]! + d * h[i * C + c]!;
      }
    }
  }
  return { loss: dy * loss, dh, dw };
}

const stores: TensorStore[] = [];
after(() => {
  for (const s of stores) s.dispose();
});

function stored(name: string, shape: number[], dtype: DType, data: Float32Array, grad: boolean): Tensor {
  const st = TensorStore.create(backend, [{ name, shape, dtype, requiresGrad: grad }]);
  stores.push(st);
  const t = st.get(name);
  st.write(t, data);
  return t;
}

interface Run {
  loss: number;
  dh: Float32Array | null;
  dw: Float32Array | null;
  nodes: ReturnType<Graph['nodes']>;
  computeBytes: number;
}

/**
 * One graph: the loss (times dy) of `make(h, w, labels)`, its gradients for h and w where they train.
 * `gradsFirst` marks the gradients as outputs before the loss (ggml's walk then starts from them).
 */
function run(
  h: Tensor,
  w: Tensor,
  labelShape: number[],
  labels: readonly number[],
  make: (h: Tensor, w: Tensor, labels: Tensor, dy: Tensor | null) => Tensor,
  o: { dy?: number; gradsFirst?: boolean; planOnly?: boolean } = {},
): Run {
  const g = new Graph(backend);
  try {
    const lab = g.input(labelShape, 'i32', 'labels');
    const dyT = o.dy === undefined ? null : g.constant(Float32Array.of(o.dy), [1], 'dy');
    const loss = g.build(() => make(h, w, lab, dyT));
    let dh: Tensor | null = null;
    let dw: Tensor | null = null;
    const out = (): Tensor => g.output(loss);
    let lossOut: Tensor | null = o.gradsFirst === true ? null : out();
    if (loss.requiresGrad) {
      const scaled = dyT === null ? loss : mul(loss, dyT);
      const grads = g.backward(scaled);
      const gh = grads.get(h);
      const gw = grads.get(w);
      if (gh !== undefined) dh = g.output(gh);
      if (gw !== undefined) dw = g.output(gw);
    }
    lossOut ??= out();
    const computeBytes = g.plan();
    const nodes = g.nodes();
    if (o.planOnly === true) return { loss: NaN, dh: null, dw: null, nodes, computeBytes };
    g.compile();
    g.set(lab, Int32Array.from(labels));
    g.run();
    return {
      loss: g.read(lossOut)[0]! * (o.dy ?? 1),
      dh: dh === null ? null : g.read(dh),
      dw: dw === null ? null : g.read(dw),
      nodes,
      computeBytes,
    };
  } finally {
    g.dispose();
  }
}

function data(seed: number, N: number, C: number, V: number) {
  const rand = rng(seed);
  const h = Float32Array.from(normals(N * C, rand));
  const w = Float32Array.from(normals(V * C, rand, 0.4));
  // every 4th label ignored; the others spread over the vocabulary
  const labels = Array.from({ length: N }, (_, i) => (i % 4 === 1 ? -100 : Math.floor(rand() * V)));
  return { h, w, labels };
}

const TOL = 1e-4;

describe('linearCrossEntropy against the float64 closed form', () => {
  const [B, T, C, V] = [2, 7, 12, 19]; // 14 token rows
  const d = data(1, B * T, C, V);
  const h = stored('h', [B, T, C], 'f32', d.h, true);
  const w = stored('w', [V, C], 'f32', d.w, true);

  for (const chunkTokens of [1, 4, 5, 7, 14, 64]) {
    it(`loss, dh and dW with chunks of ${chunkTokens} token rows (mean, ignore -100)`, () => {
      const r = run(h, w, [B, T], d.labels, (x, y, l) => linearCrossEntropy(x, y, l, { chunkTokens }));
      const ref = reference(d.h, d.w, d.labels, C, V);
      assert.ok(relErr([r.loss], [ref.loss]) < TOL, `loss ${r.loss} vs ${ref.loss}`);
      assert.ok(relErr(r.dh!, ref.dh) < TOL, `dh: ${relErr(r.dh!, ref.dh)}`);
      assert.ok(relErr(r.dw!, ref.dw) < TOL, `dW: ${relErr(r.dw!, ref.dw)}`);
    });
  }

  it('sum reduction, another ignore index, and an upstream gradient (the loss scale) of 3.5', () => {
    const labels = d.labels.map((l) => (l === -100 ? 3 : l === 3 ? 4 : l));
    const o: LinearCrossEntropyOptions = { chunkTokens: 5, reduction: 'sum', ignoreIndex: 3 };
    const r = run(h, w, [B, T], labels, (x, y, l) => linearCrossEntropy(x, y, l, o), { dy: 3.5 });
    const ref = reference(d.h, d.w, labels, C, V, { ignore: 3, mean: false, dy: 3.5 });
    assert.ok(relErr([r.loss], [ref.loss]) < TOL, `loss ${r.loss} vs ${ref.loss}`);
    assert.ok(relErr(r.dh!, ref.dh) < TOL, `dh: ${relErr(r.dh!, ref.dh)}`);
    assert.ok(relErr(r.dw!, ref.dw) < TOL, `dW: ${relErr(r.dw!, ref.dw)}`);
  });

  it('a loss scale the chunks know (gradScale 1024) gives the same loss and gradients', () => {
    const r = run(
      h,
      w,
      [B, T],
      d.labels,
      (x, y, l, s) => linearCrossEntropy(x, y, l, { chunkTokens: 4, gradScale: s! }),
      { dy: 1024 },
    );
    const ref = reference(d.h, d.w, d.labels, C, V, { dy: 1024 });
    assert.ok(relErr([r.loss], [ref.loss]) < TOL, `loss ${r.loss} vs ${ref.loss}`);
    assert.ok(relErr(r.dh!, ref.dh) < TOL, `dh: ${relErr(r.dh!, ref.dh)}`);
    assert.ok(relErr(r.dw!, ref.dw) < TOL, `dW: ${relErr(r.dw!, ref.dw)}`);
  });

  it('every label ignored: loss and gradients 0', () => {
    const none = d.labels.map(() => -100);
    const r = run(h, w, [B, T], none, (x, y, l) => linearCrossEntropy(x, y, l, { chunkTokens: 4 }));
    assert.equal(r.loss, 0);
    assert.ok(r.dh!.every((v) => v === 0) && r.dw!.every((v) => v === 0));
  });

  it('a frozen weight: only dh, and the same loss without any gradient (no recording)', () => {
    const frozen = stored('w_frozen', [V, C], 'f32', d.w, false);
    const r = run(h, frozen, [B, T], d.labels, (x, y, l) => linearCrossEntropy(x, y, l, { chunkTokens: 5 }));
    const ref = reference(d.h, d.w, d.labels, C, V);
    assert.equal(r.dw, null);
    assert.ok(relErr(r.dh!, ref.dh) < TOL);
    const e = run(h, frozen, [B, T], d.labels, (x, y, l) =>
      l.graph!.noGrad(() => linearCrossEntropy(x, y, l, { chunkTokens: 5 })),
    );
    assert.ok(relErr([e.loss], [ref.loss]) < TOL, `eval loss ${e.loss} vs ${ref.loss}`);
    assert.ok(!e.nodes.some((n) => n.name === 'linear_dx'), 'no gradient is computed without recording');
  });
});

describe('linearCrossEntropy against the unfused crossEntropy(linear(h, W))', () => {
  // q8_0 rows are blocks of 32 values
  const [N, C, V] = [22, 64, 40];
  const d = data(2, N, C, V);
  const h = stored('h2', [N, C], 'f32', d.h, true);
  const cases: { name: string; weight: () => Tensor; trains: boolean }[] = [
    { name: 'a frozen q8_0 weight', weight: () => stored('wq', [V, C], 'q8_0', d.w, false), trains: false },
    {
      name: 'a bf16 cast of a trainable weight',
      weight: () => cast(stored('wb', [V, C], 'f32', d.w, true), 'bf16'),
      trains: true,
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const fused = runWithWeight(h, c.weight, d.labels, (x, y, l) =>
        linearCrossEntropy(x, y, l, { chunkTokens: 8 }),
      );
      const plain = runWithWeight(h, c.weight, d.labels, (x, y, l) => crossEntropy(linear(x, y), l));
      assert.ok(relErr([fused.loss], [plain.loss]) < TOL, `loss ${fused.loss} vs ${plain.loss}`);
      assert.ok(relErr(fused.dh!, plain.dh!) < TOL, `dh: ${relErr(fused.dh!, plain.dh!)}`);
      if (plain.dw !== null)
        assert.ok(relErr(fused.dw!, plain.dw) < TOL, `dW: ${relErr(fused.dw!, plain.dw)}`);
    });
  }
});

/**
 * Like {@link run}, with the weight made inside the graph (a cast is a node of it); dW is the
 * gradient of the trainable stored tensor other than h, if any.
 */
function runWithWeight(
  h: Tensor,
  weight: () => Tensor,
  labels: readonly number[],
  make: (h: Tensor, w: Tensor, labels: Tensor) => Tensor,
): Run {
  const g = new Graph(backend);
  try {
    const lab = g.input([labels.length], 'i32', 'labels');
    const loss = g.build(() => make(h, weight(), lab));
    const lossOut = g.output(loss);
    const grads = g.backward(loss);
    const dh = g.output(grads.get(h)!);
    const stored = [...grads.keys()].find((t) => t !== h && t.kind === 'stored');
    const dw = stored === undefined ? null : g.output(grads.get(stored)!);
    g.compile();
    g.set(lab, Int32Array.from(labels));
    g.run();
    return {
      loss: g.read(lossOut)[0]!,
      dh: g.read(dh),
      dw: dw === null ? null : g.read(dw),
      nodes: [],
      computeBytes: 0,
    };
  } finally {
    g.dispose();
  }
}

describe('linearCrossEntropy frees each chunk before the next', () => {
  const [N, C, V] = [256, 32, 2048];
  const d = data(3, N, C, V);
  const h = stored('h3', [N, C], 'f32', d.h, true);
  const w = stored('w3', [V, C], 'f32', d.w, false);

  for (const gradsFirst of [false, true]) {
    it(`computes chunk k+1's logits after chunk k's dh (${gradsFirst ? 'gradients' : 'loss'} marked first)`, () => {
      const r = run(h, w, [N], d.labels, (x, y, l) => linearCrossEntropy(x, y, l, { chunkTokens: 32 }), {
        gradsFirst,
        planOnly: true,
      });
      const order = r.nodes.flatMap((n, i) =>
        n.op === 'MUL_MAT' && (n.name === 'linear' || n.name === 'linear_dx') ? [`${n.name}@${i}`] : [],
      );
      const names = order.map((s) => s.split('@')[0]);
      assert.deepEqual(
        names,
        Array.from({ length: 8 }, () => ['linear', 'linear_dx']).flat(),
        `MUL_MAT order: ${order.join(' ')}`,
      );
    });
  }

  it('needs a fraction of the unfused compute buffer (the logits are 2 MiB whole)', () => {
    const whole = run(h, w, [N], d.labels, (x, y, l) => crossEntropy(linear(x, y), l), { planOnly: true });
    const chunked = run(h, w, [N], d.labels, (x, y, l) => linearCrossEntropy(x, y, l, { chunkTokens: 32 }), {
      planOnly: true,
    });
    console.log(
      `compute buffer: ${whole.computeBytes} bytes unfused, ${chunked.computeBytes} in chunks of 32`,
    );
    // unfused: ~4 tensors of N·V floats; chunked: Wᵀ (V·C) and a few of 32·V
    assert.ok(chunked.computeBytes < 0.3 * whole.computeBytes);
  });
});

describe('the label index of each chunk starts at a 256-byte offset', () => {
  // node-llama-cpp 3.21.1's Vulkan backend aborts on a get_rows whose index view is misaligned
  // (a chunk of 1 or 3 rows did it on lavapipe); the CI step on 3.21.1 runs these chunks there
  for (const [N, rows, stride] of [
    [14, 1, 64],
    [14, 5, 64],
    [300, 100, 128],
    [512, 64, 64],
    [600, 256, 256],
    [14, 14, 14],
  ] as const) {
    it(`${N} tokens in chunks of ${rows}: ${stride} index rows per chunk`, () => {
      const g = new Graph(backend);
      try {
        const lab = g.input([N], 'i32', 'labels');
        const r = labelInputs(g, 'test', lab, N, 9, {}, rows);
        const chunks = Math.ceil(N / rows);
        assert.equal(r.targetStride, stride);
        assert.deepEqual(r.target.shape, [chunks === 1 ? N : chunks * stride, 1]);
        if (chunks > 1) assert.equal((stride * 4) % 256, 0);
      } finally {
        g.dispose();
      }
    });
  }
});

describe('linearCrossEntropy refuses bad input', () => {
  const h = stored('h4', [3, 8], 'f32', new Float32Array(24), true);
  const w = stored('w4', [5, 8], 'f32', new Float32Array(40), true);
  const build = (f: (g: Graph, lab: Tensor) => unknown, labelShape = [3]) => {
    const g = new Graph(backend);
    try {
      const lab = g.input(labelShape, 'i32', 'labels');
      return g.build(() => f(g, lab));
    } finally {
      g.dispose();
    }
  };

  it('a chunk size that is not a positive integer', () => {
    for (const chunkTokens of [0, -2, 1.5]) {
      assert.throws(
        () => build((_, lab) => linearCrossEntropy(h, w, lab, { chunkTokens })),
        (e: unknown) =>
          e instanceof QtuneError && /chunkTokens/.test(e.message) && e.message.includes(String(chunkTokens)),
      );
    }
  });

  it('labels or a weight of the wrong shape', () => {
    assert.throws(() => build((_, lab) => linearCrossEntropy(h, w, lab), [4]), ShapeError);
    const w2 = stored('w5', [5, 7], 'f32', new Float32Array(35), false);
    assert.throws(() => build((_, lab) => linearCrossEntropy(h, w2, lab)), ShapeError);
  });

  it('a label outside the vocabulary, named with its position', () => {
    const g = new Graph(backend);
    try {
      const lab = g.input([3], 'i32', 'labels');
      g.output(g.build(() => linearCrossEntropy(h, w, lab, { chunkTokens: 2 })));
      g.compile();
      assert.throws(
        () => g.set(lab, Int32Array.from([1, 5, -100])),
        (e: unknown) =>
          e instanceof QtuneError && /label 5 at position 1 is outside \[0, 5\)/.test(e.message),
      );
    } finally {
      g.dispose();
    }
  });
});
