/**
 * The model families beyond Llama, each end to end (issue 16): `init-tiny --family F` with the
 * family's real tokenizer and chat template, the Hugging Face folder and its GGUF under llama.cpp's
 * architecture name giving the same logits, llama.cpp itself running that GGUF, a LoRA adapter GGUF
 * and a merged GGUF with qtune's logits, PEFT adapter keys as PEFT names them, and every train type
 * converging on the family's PyTorch parity fixture (tests/fixtures/parity, scripts/torch_reference.py,
 * whose logits and LoRA gradients tests/models/parity.test.ts checks).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { tokenizeChat } from '../../src/data/tokenize.js';
import { ggufGet, readGguf } from '../../src/io/gguf.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { ModelType } from '../../src/models/config.js';
import { writeLlamaGguf } from '../../src/models/llama-gguf.js';
import type { LlamaModel } from '../../src/models/llama.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { createTinyModel, type TinyFamily, type TinyModelOptions } from '../../src/models/tiny.js';
import { createAdapterHook } from '../../src/peft/apply.js';
import { expandModel } from '../../src/peft/expand.js';
import { saveGgufLoraAdapter } from '../../src/peft/gguf-lora.js';
import type { LoraAdapterData } from '../../src/peft/lora-weights.js';
import { mergeAdapter } from '../../src/peft/merge.js';
import { PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, savePeftAdapter } from '../../src/peft/peft.js';
import { Graph } from '../../src/tensor/index.js';
import { Trainer } from '../../src/train/trainer.js';
import { ROOT, qtune } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';
import { prepareModelWeights } from '../../src/train/prepare.js';
import { llamaCppLastLogits, llamaCppUnavailable } from '../helpers/llama-cpp.js';
import { relErr } from '../helpers/ref.js';
import { randomAdapter } from '../peft/random-adapter.js';

interface FamilyCase {
  family: TinyFamily & ModelType;
  /** llama.cpp's `general.architecture`. */
  arch: string;
  /** The parity fixture of the family. */
  fixture: string;
  /** The linear layers of a block, as PEFT names them (the default LoRA targets). */
  targets: string[];
  /** Per-layer GGUF tensors the family adds to Llama's. */
  extraGgufTensors: string[];
  /**
   * A conversation, its rendering as the family's chat template documents it, a marker token; or why
   * the tiny model's stand-in tokenizer cannot show the family's template.
   */
  chat:
    { messages: { role: string; content: string }[]; text: string; trained: string; marker: string } | string;
  /** The template refuses a conversation with a system turn, with this message. */
  refusesSystem?: RegExp;
  /** The tiny model's options beyond the shared ones (a short window, small soft-caps). */
  tiny?: Partial<TinyModelOptions>;
  /** GGUF metadata the family writes for llama.cpp, with its values. */
  ggufKeys?: Record<string, number>;
}

const CONVERSATION = [
  { role: 'system', content: 'You answer briefly.' },
  { role: 'user', content: 'What is a whale?' },
  { role: 'assistant', content: 'A large sea mammal.' },
];

const LLAMA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

const FAMILIES: FamilyCase[] = [
  {
    family: 'mistral',
    arch: 'llama', // as llama.cpp's converter writes Mistral
    fixture: 'mistral_sliding_window', // training runs 32 tokens through a window of 5
    targets: LLAMA_TARGETS,
    extraGgufTensors: [],
    chat: "Llama 2's tokenizer has no chat template or chat tokens (Mistral's [INST] is plain text)",
  },
  {
    family: 'qwen2',
    arch: 'qwen2',
    fixture: 'qwen2_bias_tied',
    targets: LLAMA_TARGETS,
    extraGgufTensors: ['blk.0.attn_q.bias', 'blk.0.attn_k.bias', 'blk.1.attn_v.bias'],
    chat: {
      messages: CONVERSATION,
      // Qwen2.5's template: ChatML turns
      text:
        '<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nWhat is a whale?<|im_end|>\n' +
        '<|im_start|>assistant\nA large sea mammal.<|im_end|>\n',
      trained: 'A large sea mammal.<|im_end|>',
      marker: '<|im_start|>',
    },
  },
  {
    family: 'qwen3',
    arch: 'qwen3',
    fixture: 'qwen3_qk_norm',
    targets: LLAMA_TARGETS,
    extraGgufTensors: ['blk.0.attn_q_norm.weight', 'blk.0.attn_k_norm.weight'],
    chat: {
      messages: CONVERSATION,
      // Qwen3's template: ChatML turns, and the last assistant turn after the last user message with
      // an empty thinking block (the non-thinking form)
      text:
        '<|im_start|>system\nYou answer briefly.<|im_end|>\n<|im_start|>user\nWhat is a whale?<|im_end|>\n' +
        '<|im_start|>assistant\n<think>\n\n</think>\n\nA large sea mammal.<|im_end|>\n',
      trained: '<think>\n\n</think>\n\nA large sea mammal.<|im_end|>',
      marker: '<|im_start|>',
    },
  },
  {
    family: 'smollm3',
    arch: 'smollm3',
    fixture: 'smollm3_nope',
    targets: LLAMA_TARGETS,
    extraGgufTensors: [],
    chat: {
      messages: CONVERSATION,
      // the stand-in Llama 3 tokenizer's template (it always ends with the assistant header)
      text:
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou answer briefly.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nWhat is a whale?<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\nA large sea mammal.<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
      trained: 'A large sea mammal.<|eot_id|>',
      marker: '<|start_header_id|>',
    },
  },
  {
    family: 'phi3',
    arch: 'phi3',
    fixture: 'phi3_fused',
    targets: ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'],
    extraGgufTensors: ['blk.0.attn_qkv.weight', 'blk.1.ffn_up.weight'],
    chat: {
      messages: CONVERSATION,
      // Phi-3-mini's template, its chat tokens added to the stand-in Llama 2 tokenizer by init-tiny
      text:
        '<|system|>\nYou answer briefly.<|end|>\n<|user|>\nWhat is a whale?<|end|>\n' +
        '<|assistant|>\nA large sea mammal.<|end|>\n<|endoftext|>',
      trained: 'A large sea mammal.<|end|>',
      marker: '<|user|>',
    },
  },
  {
    family: 'gemma3_text',
    arch: 'gemma3',
    fixture: 'gemma3_local_global',
    targets: LLAMA_TARGETS,
    extraGgufTensors: [
      'blk.0.post_attention_norm.weight',
      'blk.0.post_ffw_norm.weight',
      'blk.1.attn_k_norm.weight',
    ],
    chat: {
      messages: CONVERSATION,
      // Gemma's template: no system role (it opens the first user turn), the assistant is "model"
      text:
        '<bos><start_of_turn>user\nYou answer briefly.\n\nWhat is a whale?<end_of_turn>\n' +
        '<start_of_turn>model\nA large sea mammal.<end_of_turn>\n',
      trained: 'A large sea mammal.<end_of_turn>',
      marker: '<start_of_turn>',
    },
  },
  {
    family: 'gemma2',
    arch: 'gemma2',
    fixture: 'gemma2_softcap', // caps of 0.5 on the scores and 0.8 on the logits
    targets: LLAMA_TARGETS,
    extraGgufTensors: ['blk.0.post_attention_norm.weight', 'blk.1.post_ffw_norm.weight'],
    chat: {
      // Gemma 2's template refuses a system turn
      messages: CONVERSATION.slice(1),
      text:
        '<bos><start_of_turn>user\nWhat is a whale?<end_of_turn>\n' +
        '<start_of_turn>model\nA large sea mammal.<end_of_turn>\n',
      trained: 'A large sea mammal.<end_of_turn>',
      marker: '<start_of_turn>',
    },
    refusesSystem: /the chat template failed to render: System role not supported/,
    // a window shorter than the test's tokens, and caps that bend the scores and logits, so llama.cpp
    // agrees only if it reads both from the GGUF (its defaults are 50 and 30)
    tiny: { slidingWindow: 4, softcaps: { attention: 0.5, logits: 1 } },
    ggufKeys: {
      'gemma2.attn_logit_softcapping': 0.5,
      'gemma2.final_logit_softcapping': 1,
      'gemma2.attention.sliding_window': 4,
    },
  },
];

const TRAIN_TYPES: Record<string, number> = {
  full: 1e-3,
  lora: 5e-3,
  qlora: 5e-3,
  dora: 5e-3,
  llama_pro: 2e-3,
};
const BASE_TOL = 5e-3; // llama.cpp (f16 KV cache) vs qtune, as tests/peft/gguf-lora.test.ts
const skipLlamaCpp = llamaCppUnavailable() ?? false;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-families-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function lastLogits(model: LlamaModel, tokens: readonly number[], data?: LoraAdapterData): Float32Array {
  const adapter = data === undefined ? null : createAdapterHook(model, data);
  const g = new Graph(model.backend);
  try {
    const ids = g.input([1, tokens.length], 'i32', 'ids');
    const out = g.output(
      model.forward(g, ids, { lastOnly: true, ...(adapter === null ? {} : { linear: adapter.hook }) }),
    );
    g.compile();
    g.set(ids, Int32Array.from(tokens));
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
    adapter?.dispose();
  }
}

const { devices } = testDevices();

for (const f of FAMILIES) {
  describe(`model family ${f.family}`, () => {
    const dir = path.join(tmp, f.family);
    const gguf = path.join(tmp, `${f.family}.gguf`);
    let m: LoadedModel;
    let tokens: number[];
    before(async () => {
      const r = qtune([
        'init-tiny',
        dir,
        '--family',
        f.family,
        '--hidden',
        '64',
        '--intermediate',
        '128',
        '--layers',
        '2',
        '--heads',
        '4',
        '--kv-heads',
        '2',
        '--seed',
        '3',
      ]);
      assert.equal(r.code, 0, r.stderr);
      // larger weights than init-tiny's 0.02, so an adapter's effect stands out from rounding
      createTinyModel(dir, {
        family: f.family,
        hiddenSize: 64,
        intermediateSize: 128,
        layers: 2,
        heads: 4,
        kvHeads: 2,
        seed: 3,
        initStd: 0.1,
        ...f.tiny,
      });
      m = await loadModel(dir, { backend: 'cpu' });
      tokens = m.tokenizer.encode('Call me Ishmael. Some years ago, never mind how long');
      writeLlamaGguf(gguf, m.model, m.tokenizer);
    });
    after(() => m.dispose());

    it('init-tiny writes the family config.json, with its real tokenizer and chat template', (t) => {
      const cfg = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      assert.equal(cfg['model_type'], f.family);
      assert.equal(m.config.model_type, f.family);
      const chat = f.chat;
      if (typeof chat === 'string') {
        t.skip(chat);
        return;
      }
      assert.equal(m.tokenizer.applyChatTemplate(chat.messages), chat.text);
      // the template's markers are single special tokens, and only the assistant's turn is trained
      const sample = tokenizeChat(m.tokenizer, chat.messages);
      assert.equal(m.tokenizer.encode(chat.marker, { addSpecialTokens: false }).length, 1);
      const trained = sample.tokens.filter((_, i) => sample.targets[i]);
      assert.equal(m.tokenizer.decode(trained), chat.trained);
      if (f.refusesSystem !== undefined)
        assert.throws(() => m.tokenizer.applyChatTemplate(CONVERSATION), f.refusesSystem);
    });

    it(`its GGUF is llama.cpp's ${f.arch} architecture and loads back with the same config and logits`, async () => {
      const g = readGguf(gguf);
      assert.equal(ggufGet(g, 'general.architecture', 'string'), f.arch);
      for (const t of f.extraGgufTensors) assert.ok(g.tensors.has(t), `the GGUF lacks ${t}`);
      for (const [k, v] of Object.entries(f.ggufKeys ?? {})) assert.equal(ggufGet(g, k, 'number'), v, k);
      if (m.config.fused_projections) assert.ok(!g.tensors.has('blk.0.attn_q.weight'), 'q is in attn_qkv');
      const back = await loadModel(gguf, { backend: 'cpu' });
      try {
        assert.deepEqual(back.config, m.config);
        assert.deepEqual(lastLogits(back.model, tokens), lastLogits(m.model, tokens));
        assert.deepEqual(
          back.tokenizer.encode('never mind how long'),
          m.tokenizer.encode('never mind how long'),
        );
      } finally {
        back.dispose();
      }
    });

    it('llama.cpp runs the GGUF with qtune’s logits', { skip: skipLlamaCpp }, () => {
      const err = relErr(llamaCppLastLogits(gguf, tokens), lastLogits(m.model, tokens));
      if (process.env['QTUNE_PRINT_ERRORS'])
        console.log(`${f.family}: llama.cpp vs qtune ${err.toExponential(2)}`);
      assert.ok(err <= BASE_TOL, `llama.cpp's logits differ from qtune's by ${err.toExponential(2)}`);
    });

    it(
      'llama.cpp with the LoRA adapter GGUF, and on the merged GGUF, = qtune with the adapter',
      { skip: skipLlamaCpp },
      async () => {
        const data = randomAdapter(m.config, 'rslora', 11, undefined, 0.02);
        const adapterFile = path.join(tmp, `${f.family}-lora.gguf`);
        saveGgufLoraAdapter(adapterFile, data, m.config);
        assert.equal(ggufGet(readGguf(adapterFile), 'general.architecture', 'string'), f.arch);
        const ours = lastLogits(m.model, tokens, data);
        const effect = relErr(ours, lastLogits(m.model, tokens));
        assert.ok(effect >= 20 * BASE_TOL, `the adapter moves the logits by only ${effect.toExponential(2)}`);
        const adapted = relErr(llamaCppLastLogits(gguf, tokens, adapterFile), ours);
        assert.ok(adapted <= BASE_TOL, `llama.cpp with the adapter differs by ${adapted.toExponential(2)}`);

        const copy = await loadModel(dir, { backend: 'cpu' });
        try {
          mergeAdapter(copy.model, data);
          const mergedFile = path.join(tmp, `${f.family}-merged.gguf`);
          writeLlamaGguf(mergedFile, copy.model, copy.tokenizer);
          const merged = relErr(llamaCppLastLogits(mergedFile, tokens), ours);
          assert.ok(merged <= BASE_TOL, `llama.cpp on the merged GGUF differs by ${merged.toExponential(2)}`);
        } finally {
          copy.dispose();
        }
      },
    );

    it('a PEFT adapter has the keys and target modules PEFT gives this family', () => {
      const out = path.join(tmp, `${f.family}-peft`);
      // the adapter a Trainer makes with its default targets: every linear layer the model has
      const prepared = prepareModelWeights(dir, { trainType: 'lora', backend: 'cpu' });
      const trainer = new Trainer(prepared, byteData(8, 4, 2), { trainType: 'lora', maxSteps: 1 });
      try {
        savePeftAdapter(out, trainer.adapterWeights());
      } finally {
        trainer.dispose();
      }
      const st = SafetensorsFile.open(path.join(out, PEFT_WEIGHTS_FILE));
      const keys = [...st.entries.keys()];
      st.close();
      for (const k of [
        `base_model.model.model.layers.0.self_attn.${f.targets[0]}.lora_A.weight`,
        'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight',
      ])
        assert.ok(keys.includes(k), `no ${k} in ${keys.slice(0, 4).join(', ')}…`);
      assert.ok(!keys.some((k) => /norm/.test(k)), 'norms are not LoRA targets');
      const cfg = JSON.parse(readFileSync(path.join(out, PEFT_CONFIG_FILE), 'utf8')) as Record<
        string,
        unknown
      >;
      assert.deepEqual([...(cfg['target_modules'] as string[])].sort(), [...f.targets].sort());
    });

    describe('every train type converges on the parity fixture', () => {
      const fixture = path.join(ROOT, 'tests', 'fixtures', 'parity', f.fixture);
      const expanded = path.join(tmp, `${f.family}-pro`);
      before(() => expandModel(fixture, expanded, 1));
      const data = byteData(32, 64, 16);
      for (const device of devices) {
        for (const [trainType, lr] of Object.entries(TRAIN_TYPES)) {
          it(`${trainType} on ${device.name}`, () => {
            const prepared = prepareFolder(
              trainType === 'llama_pro' ? expanded : fixture,
              trainType,
              device.backend,
            );
            const trainer = new Trainer(prepared, data, {
              trainType,
              batchSize: 4,
              maxSteps: 12,
              optimizer: { name: 'adamw', lr },
              lora: { rank: 8, alpha: 16 },
              seed: 1,
            });
            try {
              const start = trainer.evaluate().loss;
              const result = trainer.train();
              const end = result.evals.at(-1)!.loss;
              const drop = 1 - end / start;
              console.log(
                `${f.family} ${trainType} on ${device.name}: validation loss ${start.toFixed(4)} → ${end.toFixed(4)}`,
              );
              assert.ok(drop >= 0.01, `validation loss fell ${(100 * drop).toFixed(2)}%, needs 1%`);
            } finally {
              trainer.dispose();
            }
          });
        }
      }
    });
  });
}
