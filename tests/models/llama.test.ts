/**
 * Llama-family models end to end: tiny models written by createTinyModel load from safetensors and
 * from GGUF (same logits), generate with a KV cache exactly as without one, and refuse what they do
 * not support with errors that name it.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { DEFAULT_CHAT_TEMPLATE, Tokenizer } from '../../src/io/tokenizer.js';
import { parseLlamaConfig } from '../../src/models/config.js';
import { generate, sampleToken } from '../../src/models/generate.js';
import { reorderRopeRows, writeLlamaGguf } from '../../src/models/llama-gguf.js';
import type { LlamaModel } from '../../src/models/llama.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { createTinyModel, tinyTokenizerFiles } from '../../src/models/tiny.js';
import { Graph } from '../../src/tensor/index.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-models-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function logits(model: LlamaModel, ids: number[][]): Float32Array {
  const g = new Graph(model.backend);
  try {
    const input = g.input([ids.length, ids[0]!.length], 'i32');
    const out = g.output(model.forward(g, input));
    g.compile();
    g.set(input, Int32Array.from(ids.flat()));
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
  }
}

/** Greedy decoding by recomputing the whole sequence at every step (no cache). */
function greedyNoCache(model: LlamaModel, prompt: number[], n: number): number[] {
  const seq = [...prompt];
  const V = model.config.vocab_size;
  for (let i = 0; i < n; i++) {
    const l = logits(model, [seq]);
    const last = l.subarray((seq.length - 1) * V, seq.length * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (last[v]! > last[best]!) best = v;
    seq.push(best);
  }
  return seq.slice(prompt.length);
}

describe('tiny Llama-family models', () => {
  const llamaDir = path.join(tmp, 'llama');
  const qwenDir = path.join(tmp, 'qwen2');
  let llama: LoadedModel;
  let qwen: LoadedModel;
  before(async () => {
    createTinyModel(llamaDir, { seed: 1, initStd: 0.1 });
    createTinyModel(qwenDir, { family: 'qwen2', layers: 2, seed: 2, initStd: 0.1 });
    llama = await loadModel(llamaDir, { backend: cpuBackend() });
    qwen = await loadModel(qwenDir, { backend: cpuBackend() });
  });
  after(() => {
    llama.dispose();
    qwen.dispose();
  });

  it('createTinyModel writes a real HF folder with the default TinyLlama shape', () => {
    for (const f of [
      'config.json',
      'model.safetensors',
      'tokenizer.json',
      'tokenizer_config.json',
      'generation_config.json',
    ]) {
      assert.ok(existsSync(path.join(llamaDir, f)), `missing ${f}`);
    }
    const c = parseLlamaConfig(
      JSON.parse(readFileSync(path.join(llamaDir, 'config.json'), 'utf8')) as Record<string, unknown>,
    );
    assert.deepEqual(
      [
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
      ],
      [256, 688, 4, 8, 4, 32000],
    );
    assert.equal(llama.config.tie_word_embeddings, false);
    assert.equal(qwen.config.tie_word_embeddings, true);
    assert.equal(qwen.config.attention_bias, true);
    assert.ok(
      typeof (
        JSON.parse(readFileSync(path.join(llamaDir, 'tokenizer_config.json'), 'utf8')) as {
          chat_template?: string;
        }
      ).chat_template === 'string',
    );
  });

  for (const [name, get] of [
    ['llama', () => llama],
    ['qwen2', () => qwen],
  ] as const) {
    it(`${name}: the same model from safetensors and from GGUF gives the same logits`, async () => {
      const file = path.join(tmp, `${name}.gguf`);
      const m = get();
      writeLlamaGguf(file, m.model, m.tokenizer);
      const fromGguf = await loadModel(file, { backend: cpuBackend() });
      try {
        assert.deepEqual(fromGguf.config, m.config);
        const ids = [m.tokenizer.encode('Call me Ishmael. Some years ago')];
        assert.deepEqual(logits(fromGguf.model, ids), logits(m.model, ids));
        assert.deepEqual(
          fromGguf.tokenizer.encode('never mind how long'),
          m.tokenizer.encode('never mind how long'),
        );
        assert.equal(fromGguf.tokenizer.chatTemplate, m.tokenizer.chatTemplate);
        const prompt = m.tokenizer.encode('The whale');
        const fromFile = generate(fromGguf.model, fromGguf.tokenizer, prompt, {
          maxNewTokens: 4,
          stopAtEos: false,
        });
        assert.deepEqual(
          fromFile,
          generate(m.model, m.tokenizer, prompt, { maxNewTokens: 4, stopAtEos: false }),
        );
      } finally {
        fromGguf.dispose();
      }
    });

    it(`${name}: generation with the KV cache equals greedy decoding without it`, () => {
      const m = get();
      const prompt = m.tokenizer.encode('It is a truth universally acknowledged');
      const r = generate(m.model, m.tokenizer, prompt, { maxNewTokens: 8, stopAtEos: false });
      assert.deepEqual(r.ids, greedyNoCache(m.model, prompt, 8));
      assert.equal(r.text, m.tokenizer.decode(r.ids, { skipSpecialTokens: true }));
    });
  }

  it('a quantized model (q8_0 linear weights) round-trips through GGUF with identical logits', async () => {
    const q = await loadModel(llamaDir, { backend: cpuBackend(), quantize: 'q8_0' });
    const file = path.join(tmp, 'q8.gguf');
    try {
      assert.deepEqual(
        q.notQuantized,
        ['0', '1', '2', '3'].map((i) => `model.layers.${i}.mlp.down_proj.weight`),
      ); // 688 % 32 ≠ 0
      writeLlamaGguf(file, q.model, q.tokenizer);
      const back = await loadModel(file, { backend: cpuBackend() });
      try {
        assert.equal(back.model.weight('model.layers.0.self_attn.q_proj.weight').dtype, 'q8_0');
        const ids = [q.tokenizer.encode('Call me Ishmael')];
        assert.deepEqual(logits(back.model, ids), logits(q.model, ids));
      } finally {
        back.dispose();
      }
    } finally {
      q.dispose();
    }
  });

  it('down_proj rows of 688 are not whole q4_0 blocks: kept in f32 and reported', async () => {
    const q = await loadModel(llamaDir, { backend: cpuBackend(), quantize: 'q4_0' });
    try {
      assert.equal(q.notQuantized.length, llama.config.num_hidden_layers);
      assert.ok(q.notQuantized.every((n) => n.endsWith('mlp.down_proj.weight')));
      assert.equal(q.model.weight('model.layers.0.mlp.gate_proj.weight').dtype, 'q4_0');
    } finally {
      q.dispose();
    }
  });

  it('q/k row reordering for llama.cpp is a permutation and its inverse restores the HF order', () => {
    const rows = 8; // 2 heads of dimension 4, rows of 3 bytes
    const hf = Uint8Array.from({ length: rows * 3 }, (_, i) => i);
    const gg = reorderRopeRows(hf, rows, 2, true);
    // head 0: HF rows [0 1 | 2 3] (halves) → GGUF rows 0,2,1,3 interleaved: [0, 2, 1, 3]
    assert.deepEqual(Array.from(gg.subarray(0, 12)), [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]);
    assert.deepEqual(reorderRopeRows(gg, rows, 2, false), hf);
  });

  it('sampling: top-k 1 is greedy, a seed makes it reproducible, eos stops', () => {
    const m = llama;
    const prompt = m.tokenizer.encode('The whale');
    const greedy = generate(m.model, m.tokenizer, prompt, { maxNewTokens: 5, stopAtEos: false });
    assert.deepEqual(
      generate(m.model, m.tokenizer, prompt, { maxNewTokens: 5, temperature: 1, topK: 1, stopAtEos: false })
        .ids,
      greedy.ids,
    );
    const a = generate(m.model, m.tokenizer, prompt, {
      maxNewTokens: 6,
      temperature: 1.5,
      topP: 0.95,
      seed: 7,
      stopAtEos: false,
    });
    const b = generate(m.model, m.tokenizer, prompt, {
      maxNewTokens: 6,
      temperature: 1.5,
      topP: 0.95,
      seed: 7,
      stopAtEos: false,
    });
    assert.deepEqual(a.ids, b.ids);
    const withEos = new Tokenizer(m.tokenizer.json, m.tokenizer.config, [greedy.ids[0]!]);
    const stopped = generate(m.model, withEos, prompt, { maxNewTokens: 5 });
    // the EOS that stopped it is reported (GRPO trains it as the completion's last token)
    assert.deepEqual(stopped, { ids: [], text: '', stoppedBy: 'eos', stopToken: greedy.ids[0] });
    const l = Float32Array.of(0.1, 3, -1, 2.9);
    assert.equal(sampleToken(l, { temperature: 0, topK: 0, topP: 1 }, Math.random), 1);
    assert.equal(sampleToken(l, { temperature: 5, topK: 0, topP: 1e-9 }, Math.random), 1);
  });

  it('tokenizers: the default ChatML template for Llama 2 (none of its own), the model template for Llama 3', () => {
    const files = tinyTokenizerFiles('llama2');
    const raw = new Tokenizer(
      JSON.parse(files.tokenizerJson) as Record<string, unknown>,
      JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>,
    );
    assert.equal(raw.hasOwnChatTemplate, false);
    assert.equal(raw.chatTemplate, DEFAULT_CHAT_TEMPLATE);
    const t = llama.tokenizer; // createTinyModel wrote the default template into tokenizer_config.json
    const text = t.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
    assert.equal(text, '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    assert.equal(t.decode(t.encode('Call me Ishmael.'), { skipSpecialTokens: true }), 'Call me Ishmael.');
    assert.equal(t.bosId, 1);
    assert.deepEqual(t.eosIds, [2]);
    const l3dir = path.join(tmp, 'l3tok');
    createTinyModel(l3dir, {
      tokenizer: 'llama3',
      hiddenSize: 32,
      intermediateSize: 64,
      layers: 1,
      heads: 2,
      kvHeads: 1,
    });
    const l3 = Tokenizer.fromFolder(l3dir);
    assert.equal(l3.hasOwnChatTemplate, true);
    assert.match(
      l3.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true }),
      /<\|start_header_id\|>user<\|end_header_id\|>\n\nHi<\|eot_id\|>/,
    );
  });

  it('unsupported configurations are refused by name', async () => {
    const bad = (patch: Record<string, unknown>) => {
      const j = JSON.parse(readFileSync(path.join(llamaDir, 'config.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      return () => parseLlamaConfig({ ...j, ...patch });
    };
    assert.throws(
      bad({ model_type: 'gpt2' }),
      (e: unknown) => e instanceof ConfigError && e.message.includes('"gpt2"'),
    );
    assert.throws(
      bad({ hidden_act: 'gelu' }),
      (e: unknown) => e instanceof ConfigError && e.message.includes('"gelu"'),
    );
    assert.throws(
      bad({ rope_scaling: { rope_type: 'yarn', factor: 4 } }),
      (e: unknown) => e instanceof ConfigError && e.message.includes('"yarn"'),
    );
    assert.throws(
      bad({ num_key_value_heads: 3 }),
      (e: unknown) => e instanceof ConfigError && e.message.includes('num_key_value_heads = 3'),
    );
    const dir = path.join(tmp, 'broken');
    createTinyModel(dir, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
    writeFileSync(
      path.join(dir, 'config.json'),
      JSON.stringify({
        ...JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')),
        model_type: 'falcon',
      }),
    );
    await assert.rejects(
      loadModel(dir, { backend: cpuBackend() }),
      (e: unknown) =>
        e instanceof ConfigError && e.message.includes('falcon') && e.message.includes('config.json'),
    );
  });

  it("Mistral's sliding window: past the window the logits change, and cached generation equals recomputing", () => {
    const c = { ...llama.config, model_type: 'mistral' as const, sliding_window: 4 };
    const windowed = Object.assign(
      Object.create(Object.getPrototypeOf(llama.model) as object) as LlamaModel,
      llama.model,
      { config: c },
    );
    const ids = [llama.tokenizer.encode('It is a truth universally acknowledged, that a single man')];
    const full = logits(llama.model, ids);
    const win = logits(windowed, ids);
    const V = c.vocab_size;
    // the first 4 positions see no more than the window: identical; later ones see less
    assert.deepEqual(win.subarray(0, 4 * V), full.subarray(0, 4 * V));
    assert.notDeepEqual(win.subarray(5 * V, 6 * V), full.subarray(5 * V, 6 * V));
    // with a per-sequence mask (packing's), the window still applies: an all-zero mask changes nothing
    const T = ids[0]!.length;
    const g = new Graph(cpuBackend());
    try {
      const input = g.input([1, T], 'i32');
      const mask = g.input([1, 1, T, T], 'f32');
      const out = g.output(windowed.forward(g, input, { mask }));
      g.compile();
      g.set(input, Int32Array.from(ids[0]!));
      g.set(mask, new Float32Array(T * T));
      g.run();
      assert.deepEqual(g.read(out), win);
    } finally {
      g.dispose();
    }
    const prompt = ids[0]!.slice(0, 3);
    const r = generate(windowed, llama.tokenizer, prompt, { maxNewTokens: 8, stopAtEos: false });
    assert.deepEqual(r.ids, greedyNoCache(windowed, prompt, 8));
  });
});
