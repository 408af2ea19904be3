/**
 * Merging: on the parity fixture's Llama (grouped-query attention), a random adapter on q, k, v, o,
 * gate, up and down gives the same logits applied through the forward's linear hook (computed in the
 * graph) as merged into the weights (computed on the host): LoRA, rsLoRA and DoRA. The merged model
 * saved as f32 safetensors and loaded again gives the same logits; f16 and bf16 saves stay within
 * their rounding. DoRA is also checked against its definition: every merged row has the norm m.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { createAdapterHook } from '../../src/peft/apply.js';
import { mergeAdapter } from '../../src/peft/merge.js';
import { saveModel } from '../../src/models/save.js';
import { cpuBackend } from '../../src/engine/device.js';
import { QtuneError } from '../../src/errors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import type { LinearHook, LlamaModel } from '../../src/models/llama.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import { tinyTokenizerFiles } from '../../src/models/tiny.js';
import { createQuantizer } from '../../src/train/quantize.js';
import { Graph } from '../../src/tensor/index.js';
import { relErr, rng } from '../helpers/ref.js';
import { GQA_FIXTURE, randomAdapter, type Variant } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-merge-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const backend = cpuBackend();
const config = readConfig(GQA_FIXTURE);
const rand = rng(11);
const BATCH = 2;
const SEQ = 12;
const IDS = Int32Array.from({ length: BATCH * SEQ }, () => Math.floor(rand() * config.vocab_size));
const files = tinyTokenizerFiles('llama2');
const tokenizer = new Tokenizer(
  JSON.parse(files.tokenizerJson) as Record<string, unknown>,
  JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>,
);

function logits(model: LlamaModel, hook?: LinearHook): Float32Array {
  const g = new Graph(model.backend);
  try {
    const ids = g.input([BATCH, SEQ], 'i32', 'ids');
    const out = g.output(model.forward(g, ids, hook === undefined ? {} : { linear: hook }));
    g.compile();
    g.set(ids, IDS);
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
  }
}

const TOL = 1e-5;

describe('merging an adapter into the weights', () => {
  for (const variant of ['lora', 'rslora', 'dora'] as Variant[]) {
    it(`${variant}: hook logits = merged logits (within ${TOL}); merged → f32 safetensors → reloaded is identical`, () => {
      const { model } = loadWeights(GQA_FIXTURE, config, backend);
      try {
        const base = logits(model);
        const data = randomAdapter(config, variant, 21, model);
        const adapter = createAdapterHook(model, data);
        let hooked: Float32Array;
        try {
          hooked = logits(model, adapter.hook);
        } finally {
          adapter.dispose();
        }
        // the adapter must matter, or equality below would prove nothing
        const effect = relErr(hooked, base);
        assert.ok(effect > 0.05, `the adapter changes the logits by only ${effect.toExponential(2)}`);

        const report = mergeAdapter(model, data);
        assert.equal(report.merged.length, 7 * config.num_hidden_layers);
        const merged = logits(model);
        const err = relErr(merged, hooked);
        if (process.env['QTUNE_PRINT_ERRORS'])
          console.log(
            `${variant}: adapter effect ${effect.toExponential(2)}, merged vs hook ${err.toExponential(2)}`,
          );
        assert.ok(err <= TOL, `merged logits differ from the hook's by ${err.toExponential(2)}`);

        if (variant === 'dora') {
          // W' = m ⊙ V/‖V‖ row by row: each merged row's norm is its magnitude
          for (const [name, m] of data.modules) {
            const w = model.weight(`${name}.weight`).read();
            for (let o = 0; o < m.outFeatures; o++) {
              let ss = 0;
              for (let i = 0; i < m.inFeatures; i++) ss += w[o * m.inFeatures + i]! ** 2;
              const rel = Math.abs(Math.sqrt(ss) - m.magnitude![o]!) / m.magnitude![o]!;
              assert.ok(
                rel <= 1e-5,
                `${name} row ${o}: norm ${Math.sqrt(ss)} vs magnitude ${m.magnitude![o]}`,
              );
            }
          }
        }

        const out = path.join(tmp, `${variant}-f32`);
        saveModel(model, out, tokenizer, { dtype: 'f32' });
        assert.deepEqual(readdirSync(out).sort(), [
          'config.json',
          'generation_config.json',
          'model.safetensors',
          'tokenizer.json',
          'tokenizer_config.json',
        ]);
        const saved = readConfig(out);
        assert.equal(saved.torch_dtype, 'float32');
        assert.equal(saved.num_key_value_heads, config.num_key_value_heads);
        const { model: reloaded } = loadWeights(out, saved, backend);
        try {
          assert.deepEqual(logits(reloaded), merged);
        } finally {
          reloaded.dispose();
        }
      } finally {
        model.dispose();
      }
    });
  }

  // measured on the CPU: f16 1.2e-3, bf16 1.8e-2 (QTUNE_PRINT_ERRORS=1 prints them)
  const halfTol = { f16: 4e-3, bf16: 5e-2 } as const;
  for (const dtype of ['f16', 'bf16'] as const) {
    it(`saves the merged model as ${dtype} (logits within ${halfTol[dtype]} of f32)`, () => {
      const { model } = loadWeights(GQA_FIXTURE, config, backend);
      try {
        mergeAdapter(model, randomAdapter(config, 'lora', 31));
        const merged = logits(model);
        const out = path.join(tmp, `lora-${dtype}`);
        saveModel(model, out, tokenizer, { dtype });
        const saved = readConfig(out);
        assert.equal(saved.torch_dtype, dtype === 'f16' ? 'float16' : 'bfloat16');
        const header = readFileSync(path.join(out, 'model.safetensors'));
        assert.ok(header.includes(dtype === 'f16' ? '"F16"' : '"BF16"'));
        const { model: reloaded } = loadWeights(out, saved, backend, { dtype: 'f32' });
        try {
          const err = relErr(logits(reloaded), merged);
          if (process.env['QTUNE_PRINT_ERRORS']) console.log(`${dtype} save: ${err.toExponential(2)}`);
          assert.ok(err <= halfTol[dtype], `${dtype} logits differ by ${err.toExponential(2)}`);
          assert.ok(err > 0, `${dtype} rounding left the logits bit-identical: was it saved as ${dtype}?`);
        } finally {
          reloaded.dispose();
        }
      } finally {
        model.dispose();
      }
    });
  }

  it('refuses a quantized base weight and a mismatched adapter, leaving the model untouched', () => {
    const { model } = loadWeights(GQA_FIXTURE, config, backend);
    try {
      const before = logits(model);
      const wrong = randomAdapter(config, 'lora', 41);
      const q = wrong.modules.get('model.layers.1.self_attn.q_proj')!;
      wrong.modules.set('model.layers.1.self_attn.q_proj', {
        ...q,
        inFeatures: 32,
        A: q.A.subarray(0, q.rank * 32),
      });
      assert.throws(
        () => mergeAdapter(model, wrong),
        /model\.layers\.1\.self_attn\.q_proj.*another base model/,
      );
      const other = randomAdapter(config, 'lora', 42);
      other.modules.set('model.layers.7.self_attn.q_proj', q);
      assert.throws(
        () => mergeAdapter(model, other),
        /model\.layers\.7\.self_attn\.q_proj is not a linear layer/,
      );
      assert.deepEqual(logits(model), before);

      createQuantizer(backend, { method: 'int8' }).quantizeModel(model);
      assert.throws(
        () => mergeAdapter(model, randomAdapter(config, 'lora', 43)),
        (e: unknown) =>
          e instanceof QtuneError &&
          e.code === 'DTYPE' &&
          /quantized \(q8_0\)/.test(e.message) &&
          /f32/.test(e.message),
      );
    } finally {
      model.dispose();
    }
  });

  it('refuses to overwrite an existing output', () => {
    const { model } = loadWeights(GQA_FIXTURE, config, backend);
    try {
      const out = path.join(tmp, 'lora-f32-again');
      saveModel(model, out, tokenizer);
      assert.throws(() => saveModel(model, out, tokenizer), /already exists/);
      assert.ok(existsSync(path.join(out, 'model.safetensors')));
      assert.ok(!readdirSync(tmp).some((f) => f.includes('.tmp-')), 'a temporary folder was left behind');
    } finally {
      model.dispose();
    }
  });
});
