/**
 * LoRA adapters as GGUF, checked by llama.cpp itself: a tiny Llama (grouped-query attention, the
 * llama2 tokenizer) written as GGUF by writeLlamaGguf, a random adapter on q, k, v, o, gate, up and
 * down written by saveGgufLoraAdapter, both loaded by libllama (tests/helpers/llama-cpp.ts:
 * llama_model_load_from_file, llama_adapter_lora_init, llama_set_adapters_lora, llama_decode). Its
 * last-token logits must match qtune's with the adapter applied through the linear hook. The random
 * adapter has a lower rank on down_proj and a higher alpha on v_proj, so the file's single alpha
 * cannot express every scale and the writer must fold them into B; rsLoRA folds every module.
 *
 * llama.cpp keeps its KV cache in f16, so even without an adapter its logits differ from qtune's f32
 * ones (measured 1.1e-3); the bounds below leave room for that and no more. The adapter moves the
 * logits by far more than the bounds, so a missing q/k row reorder or a wrong scale fails.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createAdapterHook } from '../../src/peft/apply.js';
import { loadGgufLoraAdapter, saveGgufLoraAdapter } from '../../src/peft/gguf-lora.js';
import type { LoraAdapterData } from '../../src/peft/lora-weights.js';
import { ConfigError, FormatError } from '../../src/errors.js';
import { ggufGet, readGguf } from '../../src/io/gguf.js';
import { writeLlamaGguf } from '../../src/models/llama-gguf.js';
import type { LinearHook, LlamaModel } from '../../src/models/llama.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { Graph } from '../../src/tensor/index.js';
import { llamaCppLastLogits, llamaCppUnavailable } from '../helpers/llama-cpp.js';
import { relErr } from '../helpers/ref.js';
import { randomAdapter } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-gguf-lora-'));
const TOKENS = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203];
const BASE_TOL = 5e-3; // llama.cpp vs qtune without an adapter (f16 KV cache): measured 1.1e-3
const ADAPTED_TOL = 5e-3;
const skipLlamaCpp = llamaCppUnavailable() ?? false;

let loaded: LoadedModel;
let baseGguf: string;

function lastLogits(model: LlamaModel, hook?: LinearHook): Float32Array {
  const g = new Graph(model.backend);
  try {
    const ids = g.input([1, TOKENS.length], 'i32', 'ids');
    const out = g.output(
      model.forward(g, ids, { lastOnly: true, ...(hook === undefined ? {} : { linear: hook }) }),
    );
    g.compile();
    g.set(ids, Int32Array.from(TOKENS));
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
  }
}

function hooked(model: LlamaModel, data: LoraAdapterData): Float32Array {
  const a = createAdapterHook(model, data);
  try {
    return lastLogits(model, a.hook);
  } finally {
    a.dispose();
  }
}

const print = (s: string) => {
  if (process.env['QTUNE_PRINT_ERRORS']) console.log(s);
};

describe('LoRA adapters as GGUF', () => {
  before(async () => {
    const dir = path.join(tmp, 'tiny');
    createTinyModel(dir, {
      hiddenSize: 64,
      intermediateSize: 128,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      seed: 5,
      initStd: 0.1,
    });
    loaded = await loadModel(dir, { backend: 'cpu' });
    baseGguf = path.join(tmp, 'base.gguf');
    writeLlamaGguf(baseGguf, loaded.model, loaded.tokenizer);
  });
  after(() => {
    loaded.dispose();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('writes the keys and tensor layout llama.cpp expects', () => {
    const file = path.join(tmp, 'layout.gguf');
    saveGgufLoraAdapter(file, randomAdapter(loaded.config, 'lora', 1), loaded.config);
    const g = readGguf(file);
    assert.equal(ggufGet(g, 'general.type', 'string'), 'adapter');
    assert.equal(ggufGet(g, 'general.architecture', 'string'), 'llama');
    assert.equal(ggufGet(g, 'adapter.type', 'string'), 'lora');
    assert.equal(ggufGet(g, 'adapter.lora.alpha', 'number'), 16);
    assert.equal(g.tensors.size, 2 * 7 * 2);
    // shapes outermost first: lora_a is ggml [in, r] = torch [r, in]; lora_b ggml [r, out] = torch [out, r]
    assert.deepEqual(g.tensors.get('blk.0.attn_q.weight.lora_a')?.shape, [8, 64]);
    assert.deepEqual(g.tensors.get('blk.0.attn_q.weight.lora_b')?.shape, [64, 8]);
    assert.deepEqual(g.tensors.get('blk.1.attn_k.weight.lora_b')?.shape, [32, 8]);
    assert.deepEqual(g.tensors.get('blk.1.ffn_down.weight.lora_a')?.shape, [4, 128]);
    assert.deepEqual(g.tensors.get('blk.0.ffn_gate.weight.lora_b')?.shape, [128, 8]);
    assert.equal(g.tensors.get('blk.0.attn_output.weight.lora_a')?.dtype, 'f32');
  });

  it(
    'llama.cpp without an adapter agrees with qtune (the baseline the bounds rest on)',
    { skip: skipLlamaCpp },
    () => {
      const ours = lastLogits(loaded.model);
      const theirs = llamaCppLastLogits(baseGguf, TOKENS);
      const err = relErr(theirs, ours);
      print(`llama.cpp base vs qtune: ${err.toExponential(2)}`);
      assert.ok(err <= BASE_TOL, `base logits differ by ${err.toExponential(2)}`);
    },
  );

  for (const variant of ['lora', 'rslora'] as const) {
    it(
      `${variant}: llama.cpp with the adapter GGUF = qtune with the adapter (within ${ADAPTED_TOL})`,
      { skip: skipLlamaCpp },
      () => {
        const data = randomAdapter(loaded.config, variant, 7, undefined, 0.02);
        const file = path.join(tmp, `${variant}.gguf`);
        saveGgufLoraAdapter(file, data, loaded.config);
        assert.equal(ggufGet(readGguf(file), 'qtune.adapter.scale_folded', 'boolean'), true);

        const base = lastLogits(loaded.model);
        const ours = hooked(loaded.model, data);
        const theirs = llamaCppLastLogits(baseGguf, TOKENS, file);
        const effect = relErr(ours, base);
        const err = relErr(theirs, ours);
        print(
          `${variant}: adapter effect ${effect.toExponential(2)}, llama.cpp vs qtune ${err.toExponential(2)}`,
        );
        assert.ok(
          effect >= 20 * ADAPTED_TOL,
          `the adapter moves the logits by only ${effect.toExponential(2)}`,
        );
        assert.ok(
          err <= ADAPTED_TOL,
          `llama.cpp's adapted logits differ from qtune's by ${err.toExponential(2)}`,
        );
      },
    );
  }

  it('reads the GGUF adapter back: same products, applied to the GGUF-loaded base', async () => {
    const data = randomAdapter(loaded.config, 'rslora', 9, undefined, 0.02);
    const file = path.join(tmp, 'readback.gguf');
    saveGgufLoraAdapter(file, data, loaded.config);
    const back = loadGgufLoraAdapter(file, loaded.config);
    assert.equal(back.modules.size, data.modules.size);
    assert.deepEqual(back.targetModules, data.targetModules);
    assert.equal(back.baseModel, data.baseModel);
    for (const [name, m] of data.modules) {
      const n = back.modules.get(name)!;
      assert.equal(n.rank, m.rank);
      assert.deepEqual(n.A, m.A, `${name} A`);
      assert.equal(n.alpha, 16);
    }
    const fromGguf = await loadModel(baseGguf, { backend: 'cpu' });
    try {
      const expected = hooked(loaded.model, data);
      const err = relErr(hooked(fromGguf.model, back), expected);
      print(`GGUF read-back on the GGUF base vs original: ${err.toExponential(2)}`);
      assert.ok(err <= 1e-5, `read-back adapter differs by ${err.toExponential(2)}`);
    } finally {
      fromGguf.dispose();
    }
  });

  it('refuses DoRA (tells to merge) and reads only adapter files', () => {
    assert.throws(
      () =>
        saveGgufLoraAdapter(
          path.join(tmp, 'dora.gguf'),
          randomAdapter(loaded.config, 'dora', 3),
          loaded.config,
        ),
      (e: unknown) => e instanceof ConfigError && /DoRA/.test(e.message) && /qtune merge/.test(e.message),
    );
    assert.throws(
      () => loadGgufLoraAdapter(baseGguf, loaded.config),
      (e: unknown) =>
        e instanceof FormatError && /general\.type/.test(e.message) && e.message.includes(baseGguf),
    );
  });
});
