/**
 * Gemma 2 beyond the parity fixture and the family test: its config.json read as HF reads it (the
 * defaults of transformers' Gemma2Config where keys are absent), the soft-caps in the cached
 * generation path, and the GGUF files llama.cpp's `gemma2` could not run refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { parseLlamaConfig } from '../../src/models/config.js';
import { writeLlamaGguf } from '../../src/models/llama-gguf.js';
import { KVCache, LlamaModel } from '../../src/models/llama.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import { tinyTokenizerFiles } from '../../src/models/tiny.js';
import { Graph } from '../../src/tensor/index.js';
import { ROOT } from '../helpers/cli.js';
import { relErr } from '../helpers/ref.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'gemma2_softcap');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-gemma2-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** google/gemma-2-2b's config.json, as published (the keys qtune reads and a few it ignores). */
const GEMMA2_2B = {
  architectures: ['Gemma2ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  attn_logit_softcapping: 50.0,
  bos_token_id: 2,
  cache_implementation: 'hybrid',
  eos_token_id: [1, 107],
  final_logit_softcapping: 30.0,
  head_dim: 256,
  hidden_act: 'gelu_pytorch_tanh',
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 2304,
  intermediate_size: 9216,
  max_position_embeddings: 8192,
  model_type: 'gemma2',
  num_attention_heads: 8,
  num_hidden_layers: 26,
  num_key_value_heads: 4,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_theta: 10000.0,
  sliding_window: 4096,
  torch_dtype: 'float32',
  vocab_size: 256000,
};

/** Last-position logits of `ids` through the whole sequence, or fed one token at a time into a cache. */
function lastLogits(model: LlamaModel, ids: number[], cached: boolean): Float32Array {
  const run = (tokens: number[], cache?: KVCache): Float32Array => {
    const g = new Graph(model.backend);
    try {
      const input = g.input([1, tokens.length], 'i32', 'ids');
      const out = g.output(model.forward(g, input, { lastOnly: true, ...(cache ? { cache } : {}) }));
      g.compile();
      g.set(input, Int32Array.from(tokens));
      g.run();
      if (cache) cache.length += tokens.length;
      return g.read(out);
    } finally {
      g.dispose();
    }
  };
  if (!cached) return run(ids);
  const cache = new KVCache(model.backend, model.config, ids.length);
  try {
    let out = run(ids.slice(0, 3), cache);
    for (const id of ids.slice(3)) out = run([id], cache);
    return out;
  } finally {
    cache.dispose();
  }
}

describe('Gemma 2', () => {
  it("reads google/gemma-2-2b's config.json, with Gemma2Config's defaults for absent keys", () => {
    const c = parseLlamaConfig(GEMMA2_2B);
    assert.equal(c.attn_logit_softcapping, 50);
    assert.equal(c.final_logit_softcapping, 30);
    assert.equal(c.query_pre_attn_scalar, 256);
    assert.equal(c.sliding_window, 4096);
    assert.equal(c.qk_norm, false);
    assert.equal(c.rope_local_base_freq, null);
    assert.equal(c.tie_word_embeddings, true);
    assert.equal(c.embedding_scale, Math.sqrt(2304));
    assert.ok(c.norm_plus_one && c.sandwich_norms && c.hidden_act === 'gelu_pytorch_tanh');
    // Gemma2Config: layer i slides when (i + 1) % 2 != 0 — layer 0 local, layer 1 global, ...
    assert.deepEqual(
      c.layer_types,
      Array.from({ length: 26 }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    );
    // absent: Gemma2Config's 50, 30 and 4096; null: no cap
    const absent = new Set(['attn_logit_softcapping', 'final_logit_softcapping', 'sliding_window']);
    const bare = Object.fromEntries(Object.entries(GEMMA2_2B).filter(([k]) => !absent.has(k)));
    const d = parseLlamaConfig(bare);
    assert.deepEqual([d.attn_logit_softcapping, d.final_logit_softcapping, d.sliding_window], [50, 30, 4096]);
    const off = parseLlamaConfig({
      ...GEMMA2_2B,
      attn_logit_softcapping: null,
      final_logit_softcapping: null,
    });
    assert.deepEqual([off.attn_logit_softcapping, off.final_logit_softcapping], [null, null]);
  });

  it('a cap that is not a positive number, or a cap on another family, is refused by name', () => {
    assert.throws(
      () => parseLlamaConfig({ ...GEMMA2_2B, final_logit_softcapping: 0 }),
      (e: unknown) =>
        e instanceof ConfigError && /final_logit_softcapping = 0 is not a positive number/.test(e.message),
    );
    const llama = { ...GEMMA2_2B, model_type: 'llama', hidden_act: 'silu', hidden_activation: 'silu' };
    assert.throws(
      () => parseLlamaConfig(llama),
      (e: unknown) =>
        e instanceof ConfigError &&
        /attn_logit_softcapping = 50 is not supported/.test(e.message) &&
        /Gemma 2/.test(e.hint ?? ''),
    );
  });

  it('the soft-capped logits of cached generation equal those of the whole sequence', () => {
    const { model } = loadWeights(FIXTURE, readConfig(FIXTURE), cpuBackend());
    try {
      // 9 tokens through the fixture's window of 5 and its caps of 0.5 and 0.8
      const ids = [31, 57, 115, 15, 4, 187, 4, 22, 130];
      const whole = lastLogits(model, ids, false);
      const err = relErr(lastLogits(model, ids, true), whole);
      assert.ok(err <= 1e-5, `cached logits differ by ${err.toExponential(2)}`);
      // the logits are capped at 0.8
      assert.ok(Math.max(...whole.map(Math.abs)) < 0.8);
    } finally {
      model.dispose();
    }
  });

  it("a GGUF llama.cpp's gemma2 would run differently is refused, naming the value", () => {
    const files = tinyTokenizerFiles('gemma3');
    const tokenizer = new Tokenizer(
      JSON.parse(files.tokenizerJson) as Record<string, unknown>,
      JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>,
    );
    const base = readConfig(FIXTURE);
    const file = path.join(tmp, 'refused.gguf');
    const cases: [Partial<typeof base>, RegExp][] = [
      // the fixture's own scalar, 24, is not head_dim 32, which llama.cpp uses
      [{}, /query_pre_attn_scalar = 24 differs from 32/],
      [{ query_pre_attn_scalar: 32, final_logit_softcapping: null }, /a soft-cap is off/],
      [
        { query_pre_attn_scalar: 32, layer_types: ['full_attention', 'sliding_attention'] },
        /do not alternate from a sliding layer 0/,
      ],
    ];
    for (const [patch, message] of cases) {
      const model = LlamaModel.allocate(cpuBackend(), { ...base, ...patch });
      try {
        assert.throws(
          () => writeLlamaGguf(file, model, tokenizer),
          (e: unknown) => e instanceof ConfigError && message.test(e.message) && /llama\.cpp/.test(e.message),
        );
        assert.throws(() => readFileSync(file), /ENOENT/, 'nothing is written');
      } finally {
        model.dispose();
      }
    }
  });
});
