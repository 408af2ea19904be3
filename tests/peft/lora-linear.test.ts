/**
 * LoraLinear, the one LoRA product: apply() in a graph and fuse() on the host against a float64
 * closed form computed here, for LoRA, DoRA with a trainable magnitude (the row norm in the graph),
 * DoRA with a fixed row scale (inference), and with a dropout mask (LoRA on the dropped-out input;
 * DoRA in PEFT's dropout form, y = W·x + (r − 1)·W·x̃ + r·s·B·A·x̃ with x̃ = x ⊙ mask, r = m/‖V‖).
 * Also: LoRA targets are the model's own linear layers (LlamaModel.linearModules).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import { LoraLayers } from '../../src/peft/lora.js';
import { LoraLinear, doraRowScale, loraWeight, rowNorms } from '../../src/peft/lora-linear.js';
import { loraScale } from '../../src/peft/lora-weights.js';
import { Graph } from '../../src/tensor/index.js';
import { StoreGroup } from '../../src/tensor/store-group.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import { ROOT } from '../helpers/cli.js';
import { normals, relErr, rng } from '../helpers/ref.js';

const backend = cpuBackend();
const N = 5; // rows of x
const IN = 16;
const OUT = 12;
const RANK = 4;
const ALPHA = 6;
const TOL = 1e-5;

type Variant = 'lora' | 'dora' | 'dora-fixed';

/** Random W, A, B (B far from zero), m, x and a dropout mask, in f32. */
function problem(seed: number) {
  const rand = rng(seed);
  const f32 = (n: number, scale: number) => Float32Array.from(normals(n, rand, scale));
  const W = f32(OUT * IN, 0.3); // (out, in)
  const A = f32(RANK * IN, 1 / Math.sqrt(IN)); // (r, in)
  const B = f32(OUT * RANK, 0.2); // (out, r)
  const x = f32(N * IN, 1); // (N, in)
  const mask = Float32Array.from({ length: N * IN }, () => (rand() < 0.25 ? 0 : 1 / 0.75));
  const wNorms = rowNorms(W, IN);
  const magnitude = Float32Array.from({ length: OUT }, (_, o) => wNorms[o]! * (0.7 + 0.6 * rand()));
  return { W, A, B, x, mask, magnitude };
}

/** The closed form in float64: (y = x·W'ᵀ for the fused weight W', and W' itself), optional mask. */
function reference(p: ReturnType<typeof problem>, s: number, dora: boolean, withMask: boolean) {
  const V = new Float64Array(OUT * IN); // W + s·B·A
  for (let o = 0; o < OUT; o++)
    for (let i = 0; i < IN; i++) {
      let ba = 0;
      for (let k = 0; k < RANK; k++) ba += p.B[o * RANK + k]! * p.A[k * IN + i]!;
      V[o * IN + i] = p.W[o * IN + i]! + s * ba;
    }
  const ratio = new Float64Array(OUT).fill(1);
  if (dora)
    for (let o = 0; o < OUT; o++) {
      let ss = 0;
      for (let i = 0; i < IN; i++) ss += V[o * IN + i]! ** 2;
      ratio[o] = p.magnitude[o]! / Math.sqrt(ss);
    }
  const fused = Float64Array.from(V, (v, j) => v * ratio[Math.floor(j / IN)]!);
  const y = new Float64Array(N * OUT);
  for (let n = 0; n < N; n++)
    for (let o = 0; o < OUT; o++) {
      let wx = 0; // W·x
      let wxd = 0; // W·x̃
      let dxd = 0; // s·B·A·x̃
      for (let i = 0; i < IN; i++) {
        const xi = p.x[n * IN + i]!;
        const xd = withMask ? xi * p.mask[n * IN + i]! : xi;
        wx += p.W[o * IN + i]! * xi;
        wxd += p.W[o * IN + i]! * xd;
        dxd += (V[o * IN + i]! - p.W[o * IN + i]!) * xd;
      }
      const r = ratio[o]!;
      y[n * OUT + o] = wx + (r - 1) * wxd + r * dxd; // without a mask: r·(W·x + s·B·A·x)
    }
  return { y, fused };
}

/** A LoraLinear of `variant` over a stored W, its apply() output for x (and the mask) and its fuse(). */
function run(p: ReturnType<typeof problem>, variant: Variant, withMask: boolean) {
  const module = 'model.layers.0.self_attn.q_proj';
  const shape = { rank: RANK, alpha: ALPHA, inFeatures: IN, outFeatures: OUT };
  const s = loraScale(shape, false);
  const placement = { dora: variant !== 'lora', trainable: variant !== 'dora-fixed' };
  const store = StoreGroup.create([
    ...LoraLinear.specs(module, shape, backend, placement),
    { name: `${module}.weight`, shape: [OUT, IN], dtype: 'f32', backend },
  ]);
  const g = new Graph(backend);
  try {
    const write = (t: Tensor, v: Float32Array) => t.store!.write(t, v);
    const lin = LoraLinear.fromStore(store, module, shape, s, placement);
    const w = store.get(`${module}.weight`);
    write(w, p.W);
    write(lin.A, p.A);
    write(lin.B, p.B);
    if (lin.magnitude !== null) write(lin.magnitude, p.magnitude);
    if (lin.rowScale !== null)
      write(lin.rowScale, doraRowScale(loraWeight(p.W, { ...shape, A: p.A, B: p.B }, s), p.magnitude, IN));
    assert.equal(lin.magnitude !== null, variant === 'dora');
    assert.equal(lin.rowScale !== null, variant === 'dora-fixed');
    const x = g.input([N, IN], 'f32', 'x');
    const mask = withMask ? g.input([N, IN], 'f32', 'mask') : undefined;
    const y = g.output(lin.apply(x, w, mask === undefined ? {} : { dropoutMask: mask }));
    g.compile();
    g.set(x, p.x);
    if (mask !== undefined) g.set(mask, p.mask);
    g.run();
    return { s, y: g.read(y), fused: lin.fuse(p.W) };
  } finally {
    g.dispose();
    store.dispose();
  }
}

describe('LoraLinear: apply() in the graph and fuse() on the host against a float64 closed form', () => {
  for (const variant of ['lora', 'dora', 'dora-fixed'] as Variant[]) {
    it(`${variant}: apply(x) = x·fuse(W)ᵀ = the closed form (within ${TOL})`, () => {
      const p = problem(7);
      const got = run(p, variant, false);
      const ref = reference(p, got.s, variant !== 'lora', false);
      // the adapter must matter, or the equalities below would prove nothing
      const base = reference({ ...p, B: new Float32Array(OUT * RANK) }, got.s, false, false);
      assert.ok(relErr(ref.y, base.y) > 0.05, 'the adapter hardly changes y');
      assert.ok(relErr(got.y, ref.y) < TOL, `apply: ${relErr(got.y, ref.y)}`);
      assert.ok(relErr(got.fused, ref.fused) < TOL, `fuse: ${relErr(got.fused, ref.fused)}`);
      const viaFused = new Float64Array(N * OUT); // x·fuse(W)ᵀ
      for (let n = 0; n < N; n++)
        for (let o = 0; o < OUT; o++)
          for (let i = 0; i < IN; i++) viaFused[n * OUT + o]! += p.x[n * IN + i]! * got.fused[o * IN + i]!;
      assert.ok(relErr(got.y, viaFused) < TOL, `apply vs fuse: ${relErr(got.y, viaFused)}`);
    });
  }

  for (const variant of ['lora', 'dora'] as Variant[]) {
    it(`${variant} with a dropout mask: PEFT's dropout form (within ${TOL})`, () => {
      const p = problem(8);
      const got = run(p, variant, true);
      const ref = reference(p, got.s, variant === 'dora', true);
      const unmasked = reference(p, got.s, variant === 'dora', false);
      assert.ok(relErr(ref.y, unmasked.y) > 0.05, 'the mask hardly changes y');
      assert.ok(relErr(got.y, ref.y) < TOL, `apply: ${relErr(got.y, ref.y)}`);
    });
  }
});

describe('LoRA targets are the linear layers the model lists', () => {
  it('linearModules() names every linear weight of the blocks; LoraLayers adapts exactly those by default', () => {
    const dir = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
    const config = readConfig(dir);
    const { model } = loadWeights(dir, config, backend);
    try {
      const attention = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((n) => `self_attn.${n}`);
      const mlp = ['gate_proj', 'up_proj', 'down_proj'].map((n) => `mlp.${n}`);
      const expected = Array.from({ length: config.num_hidden_layers }, (_, l) =>
        [...attention, ...mlp].map((n) => `model.layers.${l}.${n}`),
      ).flat();
      assert.deepEqual(model.linearModules(), expected);
      for (const m of expected) assert.ok(model.has(`${m}.weight`), m);
      const lora = LoraLayers.create(model, { rank: 2, alpha: 4 });
      try {
        assert.deepEqual([...lora.modules.keys()], expected);
        const q = lora.modules.get(expected[0]!)!;
        assert.deepEqual(
          [q.inFeatures, q.outFeatures],
          [config.hidden_size, config.num_attention_heads * config.head_dim],
        );
      } finally {
        lora.dispose();
      }
    } finally {
      model.dispose();
    }
  });
});
