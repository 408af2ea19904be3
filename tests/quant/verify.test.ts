/**
 * Verification of every quantization method:
 * - relative reconstruction error ‖W − Ŵ‖/‖W‖ of random Gaussian weights and of the linear weights of
 *   a tiny model qtune pretrained on Moby Dick, under the bounds documented in docs/quantization.md;
 * - the quantized model's next-token distribution against the f32 model's: mean KL(p_f32 ‖ p_q) over
 *   Moby Dick validation text, under a bound;
 * - model memory measured from the engine's buffers against the f16 model: at least 45% less for 8-bit
 *   and 70% less for the symmetric 4-bit formats (the affine 4-bit formats store a minimum beside the
 *   scale: 5 bits a weight, 68.75% less by construction);
 * - each quantized model saves to GGUF and reloads with the same logits;
 * - HQQ's solver lowers the error of plain affine rounding.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import type { LlamaModel } from '../../src/models/llama.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { createQuantizer } from '../../src/train/quantize.js';
import { METHODS, type QuantMethod } from '../../src/quant/methods.js';
import { decode, encode } from '../../src/tensor/host.js';
import { Graph } from '../../src/tensor/index.js';
import { hqqQuantize } from '../../src/quant/hqq.js';
import { batchAt, mobyDickTokens, pretrainedTinyModel, SEQ } from '../helpers/pretrained.js';
import { normals, rng } from '../helpers/ref.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-quant-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Documented bounds: relative L2 reconstruction error on Gaussian and trained weights, and mean KL. */
export const BOUNDS: Record<
  Exclude<QuantMethod, 'none'>,
  { gaussian: number; trained: number; kl: number }
> = {
  int8: { gaussian: 0.008, trained: 0.008, kl: 1e-4 },
  int4: { gaussian: 0.11, trained: 0.11, kl: 5e-3 },
  int4_affine: { gaussian: 0.1, trained: 0.1, kl: 3e-3 },
  nf4: { gaussian: 0.1, trained: 0.1, kl: 4e-3 },
  q2_k: { gaussian: 0.36, trained: 0.36, kl: 0.05 },
  q3_k: { gaussian: 0.19, trained: 0.19, kl: 0.012 },
  q4_k: { gaussian: 0.09, trained: 0.09, kl: 3e-3 },
  q5_k: { gaussian: 0.046, trained: 0.046, kl: 1.5e-3 },
  q6_k: { gaussian: 0.023, trained: 0.023, kl: 4e-4 },
  hqq: { gaussian: 0.09, trained: 0.09, kl: 3e-3 },
};
const METHOD_LIST = Object.keys(BOUNDS) as (keyof typeof BOUNDS)[];

function relL2(a: Float32Array, b: Float32Array): number {
  let e = 0;
  let d = 0;
  for (let i = 0; i < a.length; i++) {
    e += (a[i]! - b[i]!) ** 2;
    d += b[i]! ** 2;
  }
  return Math.sqrt(e / d);
}

/** Next-token probabilities of the model on a few validation windows. */
function probabilities(model: LlamaModel, ids: Int32Array): Float32Array {
  const g = new Graph(model.backend);
  try {
    const input = g.input([ids.length / SEQ, SEQ], 'i32');
    const logits = g.output(model.forward(g, input));
    g.compile();
    g.set(input, ids);
    g.run();
    const l = g.read(logits);
    const V = model.config.vocab_size;
    for (let r = 0; r < l.length / V; r++) {
      const row = l.subarray(r * V, (r + 1) * V);
      let m = -Infinity;
      for (const v of row) m = Math.max(m, v);
      let s = 0;
      for (let i = 0; i < V; i++) s += row[i] = Math.exp(row[i]! - m);
      for (let i = 0; i < V; i++) row[i]! /= s;
    }
    return l;
  } finally {
    g.dispose();
  }
}

function meanKl(p: Float32Array, q: Float32Array, V: number): number {
  let kl = 0;
  const rows = p.length / V;
  for (let i = 0; i < p.length; i++) if (p[i]! > 0) kl += p[i]! * Math.log(p[i]! / Math.max(q[i]!, 1e-30));
  return kl / rows;
}

describe('quantization methods, verified', () => {
  let dir = '';
  let f32: LoadedModel;
  let evalIds: Int32Array;
  let pF32: Float32Array;
  const measured: Record<string, Record<string, number>> = {};

  before(async () => {
    dir = (await pretrainedTinyModel()).dir;
    f32 = await loadModel(dir, { backend: cpuBackend(), dtype: 'f32' });
    evalIds = batchAt(mobyDickTokens(f32.tokenizer).val, 0, 2).ids;
    pF32 = probabilities(f32.model, evalIds);
  });
  after(() => {
    f32.dispose();
    if (process.env['QTUNE_PRINT_QUANT']) console.log(JSON.stringify(measured, null, 1));
  });

  for (const method of METHOD_LIST) {
    it(`${method}: reconstruction error, KL, memory, GGUF round trip`, async () => {
      const m = (measured[method] = {} as Record<string, number>);
      const dtype = METHODS[method].dtypes[METHODS[method].defaultBits]!;
      // Gaussian weights
      const rand = rng(21);
      const w = Float32Array.from(normals(64 * 512, rand, 0.02));
      const qw = method === 'hqq' ? hqqQuantize(w, 512) : encode(dtype, w, [64, 512]);
      m['gaussian'] = relL2(decode(dtype, qw, w.length), w);
      assert.ok(
        m['gaussian'] <= BOUNDS[method].gaussian,
        `${method} Gaussian error ${m['gaussian'].toFixed(4)} > ${BOUNDS[method].gaussian}`,
      );

      // the pretrained model, quantized in place one block at a time
      const q = await loadModel(dir, { backend: cpuBackend(), dtype: 'f32' });
      try {
        const f16Bytes = f32.model
          .tensors()
          .reduce((s, t) => s + (t.rank === 1 ? t.numel * 4 : t.numel * 2), 0);
        const report = createQuantizer(cpuBackend(), { method, skipModules: [] }).quantizeModel(q.model);
        assert.equal(report.kept.length, 0, JSON.stringify(report.kept));
        let worst = 0;
        for (const { name } of report.quantized)
          worst = Math.max(worst, relL2(q.model.weight(name).read(), f32.model.weight(name).read()));
        m['trained'] = worst;
        assert.ok(
          worst <= BOUNDS[method].trained,
          `${method} trained-weight error ${worst.toFixed(4)} > ${BOUNDS[method].trained}`,
        );

        m['kl'] = meanKl(pF32, probabilities(q.model, evalIds), f32.config.vocab_size);
        assert.ok(
          m['kl'] <= BOUNDS[method].kl,
          `${method} mean KL ${m['kl'].toExponential(2)} > ${BOUNDS[method].kl}`,
        );

        m['saving'] = 1 - q.model.bytes / f16Bytes;
        const bits = METHODS[method].defaultBits;
        const affine = method === 'int4_affine' || method === 'hqq';
        const need = bits === 8 ? 0.45 : bits === 4 && !affine ? 0.7 : bits === 4 ? 0.68 : 0;
        assert.ok(
          m['saving'] >= need,
          `${method} saves ${(100 * m['saving']).toFixed(1)}% against f16, needs ${100 * need}%`,
        );

        const file = path.join(tmp, `${method}.gguf`);
        createQuantizer(cpuBackend(), { method }).save(q.model, q.tokenizer, file);
        const back = await loadModel(file, { backend: cpuBackend() });
        try {
          assert.equal(back.model.weight('model.layers.0.mlp.up_proj.weight').dtype, dtype);
          assert.deepEqual(probabilities(back.model, evalIds), probabilities(q.model, evalIds));
        } finally {
          back.dispose();
        }
      } finally {
        q.dispose();
      }
    });
  }

  it('HQQ lowers the error of plain affine rounding (q4_1 and q5_1)', () => {
    const rand = rng(5);
    for (const [bits, dtype] of [
      [4, 'q4_1'],
      [5, 'q5_1'],
    ] as const) {
      for (const heavy of [false, true]) {
        const w = Float32Array.from(
          normals(64 * 256, rand, 0.02).map((v) => (heavy && rand() < 0.01 ? v * 8 : v)),
        );
        const plain = relL2(decode(dtype, encode(dtype, w, [64, 256]), w.length), w);
        const hqq = relL2(decode(dtype, hqqQuantize(w, 256, { bits }), w.length), w);
        const reduction = 1 - hqq / plain;
        measured[`hqq_${bits}bit_${heavy ? 'outliers' : 'gaussian'}`] = { plain, hqq, reduction };
        assert.ok(
          reduction >= 0.04,
          `HQQ ${bits}-bit reduces the error by only ${(100 * reduction).toFixed(1)}%`,
        );
      }
    }
  });
});
