/**
 * Quantization configuration: method names and their ggml types, validation that names every bad
 * field at once, glob overrides and skips, the memory-based recommendation, drop-in quantized linear
 * layers, and the compatibility matrix (`qtune quant matrix`).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { nativeMemory } from '../../src/engine/memory.js';
import { loadModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { BackendManager, probeCapabilities } from '../../src/backends/manager.js';
import { cpuBackend } from '../../src/engine/device.js';
import { QtuneError } from '../../src/errors.js';
import { recommendQuantization } from '../../src/quant/methods.js';
import { createQuantizer } from '../../src/train/quantize.js';
import { modulePlan, validateQuantizationConfig, type QuantizationConfig } from '../../src/quant/config.js';
import { compatibilityMatrix } from '../../src/quant/matrix.js';
import { METHODS, QUANT_METHODS, methodDType } from '../../src/quant/methods.js';
import { Graph, TensorStore, linear } from '../../src/tensor/index.js';
import { qtune } from '../helpers/cli.js';
import { normals, relErr, rng } from '../helpers/ref.js';

describe('quantization config', () => {
  it('maps the methods users know to ggml types', () => {
    assert.equal(methodDType('int8'), 'q8_0');
    assert.equal(methodDType('int4'), 'q4_0');
    assert.equal(methodDType('int4_affine'), 'q4_1');
    assert.equal(methodDType('nf4'), 'iq4_nl');
    assert.deepEqual(
      ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k'].map((m) => methodDType(m as 'q2_k')),
      ['q2_K', 'q3_K', 'q4_K', 'q5_K', 'q6_K'],
    );
    assert.equal(methodDType('hqq'), 'q4_1');
    assert.equal(methodDType('hqq', 5), 'q5_1');
    assert.equal(methodDType('hqq', 8), undefined);
  });

  it('validation returns every problem with its field', () => {
    const problems = validateQuantizationConfig({
      method: 'nf5',
      groupSize: 64,
      computeDtype: 'f64',
      overrides: [{ pattern: '', method: 'hqq', bits: 8 }],
      colour: 'red',
    } as unknown as QuantizationConfig);
    const fields = problems.map((p) => p.field).sort();
    assert.deepEqual(fields, [
      'colour',
      'computeDtype',
      'method',
      'overrides[0].bits',
      'overrides[0].pattern',
    ]);
    assert.deepEqual(
      validateQuantizationConfig({ method: 'q4_k', groupSize: 128 }).map((p) => p.field),
      ['groupSize'],
    );
    assert.match(validateQuantizationConfig({ method: 'q4_k', groupSize: 128 })[0]!.message, /groups of 256/);
    assert.deepEqual(
      validateQuantizationConfig({ method: 'int8', bits: 4 }).map((p) => p.field),
      ['bits'],
    );
    assert.deepEqual(validateQuantizationConfig({ method: 'hqq', bits: 5, groupSize: 32 }), []);
    assert.throws(
      () => createQuantizer(cpuBackend(), { method: 'int8', bits: 3 }),
      (e: unknown) => e instanceof QtuneError && e.message.includes('bits'),
    );
  });

  it('skips the embeddings and lm_head by default; overrides by glob, last match wins', () => {
    const c: QuantizationConfig = {
      method: 'nf4',
      overrides: [
        { pattern: '*.mlp.*', method: 'int8' },
        { pattern: 'model.layers.0.mlp.down_proj', method: 'none' },
      ],
    };
    assert.equal(modulePlan(c, 'model.embed_tokens'), null);
    assert.equal(modulePlan(c, 'lm_head'), null);
    assert.equal(modulePlan(c, 'model.layers.3.self_attn.q_proj')?.dtype, 'iq4_nl');
    assert.equal(modulePlan(c, 'model.layers.3.mlp.up_proj')?.dtype, 'q8_0');
    assert.equal(modulePlan(c, 'model.layers.0.mlp.down_proj'), null);
    assert.equal(modulePlan({ method: 'int4', skipModules: [] }, 'lm_head')?.dtype, 'q4_0');
  });

  it('recommends as the seed system did: quantize below 1.2 × f16, 4-bit below 1.5 × int8', () => {
    const f16 = 14e9;
    const int8 = (f16 * 34) / 64;
    assert.equal(recommendQuantization(f16, 1.2 * f16).method, 'none');
    assert.equal(recommendQuantization(f16, 1.2 * f16 - 1).method, 'int8');
    assert.equal(recommendQuantization(f16, 1.5 * int8).method, 'int8');
    assert.equal(recommendQuantization(f16, 1.5 * int8 - 1).method, 'nf4');
    assert.equal(recommendQuantization(f16, 1e9, ['q4_0']).method, 'int4');
    assert.match(recommendQuantization(f16, 1e9).reason, /1\.5 × the int8 model/);
  });

  it('a quantized linear layer is a drop-in for linear() over the dequantized weight', () => {
    const backend = cpuBackend();
    const rand = rng(4);
    const w = Float32Array.from(normals(24 * 64, rand, 0.1));
    const bias = Float32Array.from(normals(24, rand));
    const layer = createQuantizer(backend, { method: 'hqq' }).createQuantizedLinear(w, [24, 64], {
      bias,
    });
    const plain = TensorStore.create(backend, [
      { name: 'w', shape: [24, 64], dtype: 'f32' },
      { name: 'x', shape: [5, 64], dtype: 'f32' },
    ]);
    plain.write(plain.get('w'), layer.weight.read());
    plain.write(plain.get('x'), Float32Array.from(normals(5 * 64, rand)));
    const g = new Graph(backend);
    try {
      assert.equal(layer.weight.dtype, 'q4_1');
      const a = g.output(g.build(() => layer.forward(plain.get('x'))));
      const b = g.output(g.build(() => linear(plain.get('x'), plain.get('w'))));
      g.compile();
      g.run();
      const withBias = g.read(b).map((v, i) => v + bias[i % 24]!);
      assert.ok(relErr(g.read(a), withBias) < 2e-2);
      assert.ok(relErr(layer.weight.read(), w) < 0.1);
    } finally {
      g.dispose();
      plain.dispose();
      layer.dispose();
    }
  });

  it('quantizeModel works one block at a time: the f32 and quantized models never coexist whole', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qtune-qm-'));
    try {
      createTinyModel(dir, { layers: 4, tieWordEmbeddings: true });
      const loaded = await loadModel(dir, { backend: cpuBackend(), dtype: 'f32' });
      const model = loaded.model;
      try {
        const start = nativeMemory().total;
        const blockF32 = model.group('layer.0').bytes;
        let peak = start;
        const report = createQuantizer(cpuBackend(), {
          method: 'int8',
          skipModules: ['lm_head', 'model.embed_tokens', '*.down_proj'],
        }).quantizeModel(model, {
          onGroup: () => (peak = Math.max(peak, nativeMemory().total)),
        });
        assert.equal(report.quantized.length, 4 * 6);
        assert.ok(report.bytesAfter < report.bytesBefore);
        // never more than the f32 model plus one quantized block
        assert.ok(peak <= start + blockF32, `peak ${peak} > ${start} + one block (${blockF32})`);
      } finally {
        loaded.dispose();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('qtune quantize writes a GGUF that generate runs', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qtune-qc-'));
    try {
      createTinyModel(path.join(dir, 'm'), {
        hiddenSize: 64,
        intermediateSize: 128,
        layers: 1,
        heads: 4,
        kvHeads: 2,
      });
      const q = qtune([
        'quantize',
        '--model',
        path.join(dir, 'm'),
        '--method',
        'int8',
        '--out',
        path.join(dir, 'q.gguf'),
      ]);
      assert.equal(q.code, 0, q.stderr);
      assert.match(q.stdout, /quantized 7 weights with int8/);
      const gen = qtune([
        'generate',
        '--model',
        path.join(dir, 'q.gguf'),
        '--prompt',
        'Call me',
        '--max-new-tokens',
        '3',
        '--backend',
        'cpu',
      ]);
      assert.equal(gen.code, 0, gen.stderr);
      // rows of 64 cannot hold k-quant blocks of 256: kept, and said so
      const k = qtune([
        'quantize',
        '--model',
        path.join(dir, 'm'),
        '--method',
        'q4_k',
        '--out',
        path.join(dir, 'k.gguf'),
      ]);
      assert.equal(k.code, 0, k.stderr);
      assert.match(
        k.stdout,
        /kept model\.layers\.0\.self_attn\.q_proj\.weight: rows of 64 are not whole q4_K blocks of 256/,
      );
      const bad = qtune([
        'quantize',
        '--model',
        path.join(dir, 'm'),
        '--method',
        'int3',
        '--out',
        path.join(dir, 'x.gguf'),
      ]);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--method=int3/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the compatibility matrix lists every method on every device, as the device probe says', () => {
    const manager = new BackendManager();
    const rows = compatibilityMatrix(manager);
    for (const d of manager.devices()) {
      const caps = probeCapabilities(d);
      for (const method of QUANT_METHODS) {
        for (const [bits, dtype] of Object.entries(METHODS[method].dtypes)) {
          const r = rows.find((x) => x.device === d.name && x.method === method && x.bits === Number(bits));
          assert.ok(r, `${d.name} lacks ${method}:${bits}`);
          assert.equal(r.forward, [...caps.dtypes, ...caps.quant_types].includes(dtype as 'f32'));
          assert.equal(r.train, [...caps.train_dtypes, ...caps.train_quant_types].includes(dtype as 'f32'));
        }
      }
    }
    const cpu = rows.filter((r) => r.device === 'CPU');
    assert.ok(
      cpu.every((r) => r.forward && r.train),
      'the CPU runs every method forward and backward',
    );
    const json = JSON.parse(qtune(['quant', 'matrix', '--json']).stdout) as {
      device: string;
      method: string;
      forward: boolean;
      train: boolean;
    }[];
    assert.deepEqual(
      json.map((r) => `${r.device}/${r.method}/${r.forward}/${r.train}`),
      rows.map((r) => `${r.device}/${r.method}/${r.forward}/${r.train}`),
    );
    assert.match(qtune(['quant', 'matrix']).stdout, /^nf4\s+iq4_nl\s+train/m);
  });
});
