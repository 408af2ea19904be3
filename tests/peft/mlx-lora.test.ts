/**
 * mlx-lm adapters, read back by mlx-lm's own rules (mlx-lm 0.32.0, commit d78bf58e), written out here
 * in TypeScript rather than through qtune's writer:
 *
 * - tuner/utils.py `load_adapters`: adapter_config.json gives `fine_tune_type` (default lora),
 *   `num_layers` and `lora_parameters`; `linear_to_lora_layers` wraps, in the last `num_layers`
 *   blocks (`model.layers[-max(num_layers, 0):]`), every module whose path inside the block is in
 *   `keys`, and any top-level module named in `keys`; each tensor of adapters.safetensors must be
 *   a `lora_a`/`lora_b`/`m` parameter of a wrapped module, with its shape.
 * - tuner/lora.py `LoRALinear`: `lora_a` (in, r), `lora_b` (r, out), `y = x·Wᵀ + scale·(x·lora_a)·lora_b`.
 * - tuner/dora.py `DoRALinear`: `y = (m / ‖W + scale·lora_bᵀ·lora_aᵀ‖_rows) ⊙ (x·Wᵀ + scale·(x·lora_a)·lora_b)`.
 *
 * That product must equal qtune's PEFT one (`x · fuseLora(W)ᵀ`, PEFT's `W + (alpha/r)·B·A` and DoRA's
 * rescaling) for every module, within f32 rounding. The random adapter has a smaller rank on down_proj
 * and a larger alpha on v_proj, so rank padding and scale folding are both exercised.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { LlamaConfig } from '../../src/models/config.js';
import { readConfig } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { fuseLora } from '../../src/peft/lora-linear.js';
import { loraScale, type LoraAdapterData } from '../../src/peft/lora-weights.js';
import { saveMlxAdapter } from '../../src/peft/mlx-lora.js';
import { loadPeftAdapter, savePeftAdapter } from '../../src/peft/peft.js';
import { seededUniform } from '../../src/util/random.js';
import { qtune, tinyTrainArgs } from '../helpers/cli.js';
import { relErr } from '../helpers/ref.js';
import { GQA_FIXTURE, randomAdapter, type Variant } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-mlx-lora-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface MlxModule {
  scale: number;
  rank: number;
  loraA: Float32Array; // (in, r)
  loraB: Float32Array; // (r, out)
  m?: Float32Array; // (out)
}

/** The base weights (out, in) of every linear layer of a model folder. */
function baseWeights(dir: string): Map<string, { w: Float32Array; out: number; in: number }> {
  const f = SafetensorsFile.open(path.join(dir, 'model.safetensors'));
  try {
    const out = new Map<string, { w: Float32Array; out: number; in: number }>();
    for (const name of f.names()) {
      const e = f.entry(name);
      if (!name.endsWith('.weight') || e.shape.length !== 2 || name.includes('embed_tokens')) continue;
      out.set(name.slice(0, -'.weight'.length), { w: f.readF32(name), out: e.shape[0]!, in: e.shape[1]! });
    }
    return out;
  } finally {
    f.close();
  }
}

/** mlx-lm's load_adapters, in TypeScript: the modules it would wrap and the tensors it would load. */
function loadByMlxRules(
  dir: string,
  config: LlamaConfig,
  weights: ReturnType<typeof baseWeights>,
): { fineTuneType: string; modules: Map<string, MlxModule> } {
  const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  const fineTuneType = (cfg['fine_tune_type'] as string | undefined) ?? 'lora';
  assert.ok(['lora', 'dora'].includes(fineTuneType), `fine_tune_type ${fineTuneType}`);
  const numLayers = cfg['num_layers'];
  assert.ok(Number.isInteger(numLayers), 'num_layers is an integer');
  const lp = cfg['lora_parameters'] as Record<string, unknown>;
  for (const k of ['rank', 'scale', 'dropout']) assert.equal(typeof lp[k], 'number', `lora_parameters.${k}`);
  const rank = lp['rank'] as number;
  const scale = lp['scale'] as number;
  const keys = lp['keys'] as string[];
  assert.ok(Array.isArray(keys) && keys.length > 0, 'lora_parameters.keys');
  // linear_to_lora_layers: model.layers[-max(num_layers, 0):], then top-level modules by name
  const n = config.num_hidden_layers;
  const from = Math.max(numLayers as number, 0) === 0 ? 0 : Math.max(n - (numLayers as number), 0);
  const wrapped = new Set<string>();
  for (let l = from; l < n; l++)
    for (const k of keys) if (weights.has(`model.layers.${l}.${k}`)) wrapped.add(`model.layers.${l}.${k}`);
  for (const k of keys) if (weights.has(k)) wrapped.add(k);
  const allowed = new Map<string, number[]>();
  for (const name of wrapped) {
    const w = weights.get(name)!;
    allowed.set(`${name}.lora_a`, [w.in, rank]);
    allowed.set(`${name}.lora_b`, [rank, w.out]);
    if (fineTuneType === 'dora') allowed.set(`${name}.m`, [w.out]);
  }
  const f = SafetensorsFile.open(path.join(dir, 'adapters.safetensors'));
  try {
    const modules = new Map<string, MlxModule>();
    for (const key of f.names()) {
      assert.ok(allowed.has(key), `${key}: not an adapter parameter in the model`);
      assert.deepEqual([...f.entry(key).shape], allowed.get(key), `${key}: shape`);
      const [, module, leaf] = /^(.+)\.(lora_a|lora_b|m)$/.exec(key)!;
      const mod = modules.get(module!) ?? {
        scale,
        rank,
        loraA: new Float32Array(),
        loraB: new Float32Array(),
      };
      if (leaf === 'lora_a') mod.loraA = f.readF32(key);
      else if (leaf === 'lora_b') mod.loraB = f.readF32(key);
      else mod.m = f.readF32(key);
      modules.set(module!, mod);
    }
    return { fineTuneType, modules };
  } finally {
    f.close();
  }
}

/** mlx-lm's LoRALinear/DoRALinear forward for rows `x` (T, in), in f64. */
function mlxForward(x: Float32Array, w: Float32Array, nOut: number, nIn: number, m: MlxModule): Float64Array {
  const T = x.length / nIn;
  const y = new Float64Array(T * nOut);
  for (let t = 0; t < T; t++) {
    const xa = new Float64Array(m.rank); // x · lora_a
    for (let k = 0; k < m.rank; k++)
      for (let i = 0; i < nIn; i++) xa[k]! += x[t * nIn + i]! * m.loraA[i * m.rank + k]!;
    for (let o = 0; o < nOut; o++) {
      let base = 0;
      for (let i = 0; i < nIn; i++) base += x[t * nIn + i]! * w[o * nIn + i]!;
      let z = 0;
      for (let k = 0; k < m.rank; k++) z += xa[k]! * m.loraB[k * nOut + o]!;
      y[t * nOut + o] = base + m.scale * z;
    }
  }
  if (m.m !== undefined) {
    for (let o = 0; o < nOut; o++) {
      let ss = 0; // ‖W + scale·lora_bᵀ·lora_aᵀ‖ of row o
      for (let i = 0; i < nIn; i++) {
        let d = 0;
        for (let k = 0; k < m.rank; k++) d += m.loraB[k * nOut + o]! * m.loraA[i * m.rank + k]!;
        ss += (w[o * nIn + i]! + m.scale * d) ** 2;
      }
      for (let t = 0; t < T; t++) y[t * nOut + o]! *= m.m[o]! / Math.sqrt(ss);
    }
  }
  return y;
}

/** `x · Wᵀ` for rows `x` (T, in) and `w` (out, in). */
function matmulT(x: Float32Array, w: Float32Array, nOut: number, nIn: number): Float64Array {
  const T = x.length / nIn;
  const y = new Float64Array(T * nOut);
  for (let t = 0; t < T; t++)
    for (let o = 0; o < nOut; o++) {
      let s = 0;
      for (let i = 0; i < nIn; i++) s += x[t * nIn + i]! * w[o * nIn + i]!;
      y[t * nOut + o] = s;
    }
  return y;
}

/** Checks that mlx-lm's reading of `dir` gives qtune's product for every module of `data`. */
function checkSameProducts(dir: string, data: LoraAdapterData, modelDir: string, mustMove = true): void {
  const config = readConfig(modelDir);
  const weights = baseWeights(modelDir);
  const back = loadByMlxRules(dir, config, weights);
  assert.equal(back.fineTuneType, data.dora ? 'dora' : 'lora');
  assert.deepEqual([...back.modules.keys()].sort(), [...data.modules.keys()].sort());
  const uniform = seededUniform(7);
  for (const [name, m] of data.modules) {
    const { w, out, in: nIn } = weights.get(name)!;
    const x = Float32Array.from({ length: 3 * nIn }, () => uniform() * 2 - 1); // (3, in)
    const peft = matmulT(x, fuseLora(w, m, loraScale(m, data.rsLora), data.dora), out, nIn);
    const mlx = mlxForward(x, w, out, nIn, back.modules.get(name)!);
    const err = relErr(mlx, peft);
    assert.ok(err < 1e-5, `${name}: mlx-lm product differs from qtune's by ${err.toExponential(2)}`);
    // the adapter moves the product far beyond that bound, so a wrong layout cannot pass
    if (mustMove)
      assert.ok(relErr(matmulT(x, w, out, nIn), peft) > 1e-3, `${name}: the adapter changes the output`);
  }
}

describe('mlx-lm adapters', () => {
  const config = readConfig(GQA_FIXTURE);

  for (const variant of ['lora', 'rslora', 'dora'] as Variant[])
    it(`${variant}: mlx-lm's formula gives qtune's PEFT product for every module`, () => {
      const data = randomAdapter(config, variant, 11);
      const dir = path.join(tmp, `mlx-${variant}`);
      saveMlxAdapter(dir, data, config);
      checkSameProducts(dir, data, GQA_FIXTURE);
      const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as {
        num_layers: number;
        lora_parameters: { rank: number; scale: number; dropout: number; keys: string[] };
      };
      assert.equal(cfg.num_layers, 2);
      // most modules are rank 8 alpha 16: scale = alpha / r (rsLoRA: alpha / √r); down_proj (rank 4) is padded
      assert.deepEqual(cfg.lora_parameters, {
        rank: 8,
        scale: variant === 'rslora' ? 16 / Math.sqrt(8) : 2,
        dropout: 0.05,
        keys: [
          'mlp.down_proj',
          'mlp.gate_proj',
          'mlp.up_proj',
          'self_attn.k_proj',
          'self_attn.o_proj',
          'self_attn.q_proj',
          'self_attn.v_proj',
        ],
      });
      // lora_a is Aᵀ: (in, r), not PEFT's (r, in)
      const f = SafetensorsFile.open(path.join(dir, 'adapters.safetensors'));
      const q = data.modules.get('model.layers.1.self_attn.q_proj')!;
      const a = f.readF32('model.layers.1.self_attn.q_proj.lora_a');
      f.close();
      assert.equal(a[3 * 8 + 2], q.A[2 * q.inFeatures + 3]);
    });

  it('an adapter on the last block only gets num_layers 1', () => {
    const data = randomAdapter(config, 'lora', 12);
    for (const name of [...data.modules.keys()])
      if (name.startsWith('model.layers.0.')) data.modules.delete(name);
    const dir = path.join(tmp, 'mlx-last');
    saveMlxAdapter(dir, data, config);
    const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as {
      num_layers: number;
    };
    assert.equal(cfg.num_layers, 1);
    checkSameProducts(dir, data, GQA_FIXTURE);
  });

  it('refuses a folder that holds a PEFT adapter (both write adapter_config.json)', () => {
    const dir = path.join(tmp, 'peft-here');
    const data = randomAdapter(config, 'lora', 13);
    savePeftAdapter(dir, data);
    assert.throws(
      () => saveMlxAdapter(dir, data, config),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.match(e.message, /holds a PEFT adapter/);
        return true;
      },
    );
    const kept = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as {
      peft_type: string;
    };
    assert.equal(kept.peft_type, 'LORA');
  });
});

describe('qtune export --format mlx and train --mlx_adapter', () => {
  const tiny = path.join(tmp, 'tiny-model');
  before(() =>
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 }),
  );

  it('exports a PEFT adapter folder as an mlx-lm adapter', () => {
    const peft = path.join(tmp, 'export-peft');
    const data = randomAdapter(readConfig(GQA_FIXTURE), 'dora', 14);
    savePeftAdapter(peft, data);
    const out = path.join(tmp, 'export-mlx');
    const r = qtune(['export', '--from', peft, '--model', GQA_FIXTURE, '--format', 'mlx', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /as mlx/);
    checkSameProducts(out, loadPeftAdapter(peft), GQA_FIXTURE);
  });

  it('bad input is one line and exit code 2', () => {
    const peft = path.join(tmp, 'export-peft-2');
    savePeftAdapter(peft, randomAdapter(readConfig(GQA_FIXTURE), 'lora', 15));
    const cases: [string[], RegExp][] = [
      [['--format', 'mlx-lm', '--out', path.join(tmp, 'x')], /--format=mlx-lm is not gguf or peft or mlx/],
      [['--format', 'mlx', '--out', peft], /holds a PEFT adapter/],
    ];
    for (const [args, pattern] of cases) {
      const r = qtune(['export', '--from', peft, '--model', GQA_FIXTURE, ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, pattern);
    }
    const full = qtune([
      ...tinyTrainArgs(tiny, path.join(tmp, 'full')),
      '--train_type',
      'full',
      '--mlx_adapter',
    ]);
    assert.equal(full.code, 2, full.stderr);
    assert.equal(full.stderr.trim().split('\n').length, 1, full.stderr);
    assert.match(full.stderr, /mlx_adapter: train_type full trains no adapter/);
    assert.ok(!existsSync(path.join(tmp, 'full')));
  });

  it('train --mlx_adapter writes output_dir/mlx beside the PEFT adapter, with the same products', () => {
    const out = path.join(tmp, 'train-out');
    const quick = [
      '--max_steps',
      '1',
      '--eval_steps',
      '0',
      '--save_steps',
      '0',
      '--context_length',
      '64',
      '--warmup_ratio',
      '0',
      '--lr',
      '0.05',
    ];
    const r = qtune([...tinyTrainArgs(tiny, out), ...quick, '--max_samples', '16', '--mlx_adapter']);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(path.join(out, 'mlx', 'adapters.safetensors')));
    const peft = loadPeftAdapter(out);
    for (const [name, m] of peft.modules)
      assert.ok(
        m.B.some((v) => v !== 0),
        `${name}: B was trained`,
      );
    checkSameProducts(path.join(out, 'mlx'), peft, tiny);
    // overwrite_output_dir removes the earlier run's mlx folder: no stale adapter beside the new one
    const again = qtune([
      ...tinyTrainArgs(tiny, out),
      ...quick,
      '--max_samples',
      '16',
      '--overwrite_output_dir',
    ]);
    assert.equal(again.code, 0, again.stderr);
    assert.ok(existsSync(path.join(out, 'adapter_model.safetensors')));
    assert.ok(!existsSync(path.join(out, 'mlx')), 'the earlier mlx adapter is gone');
  });
});
