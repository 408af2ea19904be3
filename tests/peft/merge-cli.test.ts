/**
 * `qtune merge` through the real binary: a PEFT DoRA adapter merged into a tiny Llama folder gives a
 * folder whose logits equal the base with the adapter applied through the hook; a GGUF LoRA adapter
 * merged to a .gguf model gives a file llama.cpp runs with the same logits (within llama.cpp's f16 KV
 * cache rounding). Bad input exits with code 2 and one line naming the flag or file.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createAdapterHook } from '../../src/peft/apply.js';
import { saveGgufLoraAdapter } from '../../src/peft/gguf-lora.js';
import type { LoraAdapterData } from '../../src/peft/lora-weights.js';
import { savePeftAdapter } from '../../src/peft/peft.js';
import type { LlamaModel } from '../../src/models/llama.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { Graph } from '../../src/tensor/index.js';
import { qtune } from '../helpers/cli.js';
import { llamaCppLastLogits, llamaCppUnavailable } from '../helpers/llama-cpp.js';
import { relErr } from '../helpers/ref.js';
import { randomAdapter } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-merge-cli-'));
const TOKENS = [1, 450, 4996, 17354, 1701, 29916, 432, 17204];
const modelDir = path.join(tmp, 'tiny');
let base: LoadedModel;

function lastLogits(model: LlamaModel, data?: LoraAdapterData): Float32Array {
  const adapter = data === undefined ? null : createAdapterHook(model, data);
  const g = new Graph(model.backend);
  try {
    const ids = g.input([1, TOKENS.length], 'i32', 'ids');
    const out = g.output(
      model.forward(g, ids, { lastOnly: true, ...(adapter === null ? {} : { linear: adapter.hook }) }),
    );
    g.compile();
    g.set(ids, Int32Array.from(TOKENS));
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
    adapter?.dispose();
  }
}

describe('qtune merge', () => {
  before(async () => {
    createTinyModel(modelDir, {
      hiddenSize: 64,
      intermediateSize: 128,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      seed: 8,
      initStd: 0.1,
    });
    base = await loadModel(modelDir, { backend: 'cpu' });
  });
  after(() => {
    base.dispose();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('--help describes the command', () => {
    const r = qtune(['merge', '--help']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /usage: qtune merge --model/);
    assert.match(r.stdout, /--dtype/);
    assert.match(r.stdout, /--format/);
  });

  it('merges a PEFT DoRA adapter into a Hugging Face folder (f32): logits = hook-applied logits', async () => {
    const data = randomAdapter(base.config, 'dora', 12, base.model, 0.02);
    const adapterDir = path.join(tmp, 'dora-adapter');
    savePeftAdapter(adapterDir, data);
    const out = path.join(tmp, 'merged-dora');
    const r = qtune(['merge', '--model', modelDir, '--adapter', adapterDir, '--out', out, '--dtype', 'f32']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /merged a DoRA adapter into 14 weights/);
    const merged = await loadModel(out, { backend: 'cpu' });
    try {
      const err = relErr(lastLogits(merged.model), lastLogits(base.model, data));
      assert.ok(err <= 1e-5, `merged folder differs from the hook by ${err.toExponential(2)}`);
      assert.equal(
        merged.tokenizer.encode('The quick fox').join(),
        base.tokenizer.encode('The quick fox').join(),
      );
    } finally {
      merged.dispose();
    }
  });

  const ggufData = () => randomAdapter(base.config, 'rslora', 13, undefined, 0.02);
  const mergedGguf = path.join(tmp, 'merged.gguf');

  it('merges a LoRA GGUF adapter into a .gguf model: qtune reads it back with the same logits', async () => {
    const data = ggufData();
    const adapterFile = path.join(tmp, 'lora.gguf');
    saveGgufLoraAdapter(adapterFile, data, base.config);
    const r = qtune([
      'merge',
      '--model',
      modelDir,
      '--adapter',
      adapterFile,
      '--out',
      mergedGguf,
      '--dtype',
      'f32',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /merged a LoRA adapter into 14 weights; .*\(gguf, f32\)/);
    const merged = await loadModel(mergedGguf, { backend: 'cpu' });
    try {
      const err = relErr(lastLogits(merged.model), lastLogits(base.model, data));
      assert.ok(err <= 1e-5, `the merged GGUF differs from the hook by ${err.toExponential(2)}`);
    } finally {
      merged.dispose();
    }
  });

  it('llama.cpp runs the merged .gguf with the same logits', { skip: llamaCppUnavailable() ?? false }, () => {
    assert.ok(existsSync(mergedGguf), 'the previous test did not write the merged GGUF');
    const err = relErr(llamaCppLastLogits(mergedGguf, TOKENS), lastLogits(base.model, ggufData()));
    if (process.env['QTUNE_PRINT_ERRORS'])
      console.log(`llama.cpp on the merged GGUF: ${err.toExponential(2)}`);
    assert.ok(err <= 5e-3, `llama.cpp's logits of the merged GGUF differ by ${err.toExponential(2)}`);
  });

  it('exits with code 2 and names the problem on bad input', () => {
    const cases: [string[], RegExp][] = [
      [['merge', '--model', modelDir, '--out', path.join(tmp, 'x')], /--adapter is required/],
      [
        ['merge', '--model', modelDir, '--adapter', tmp, '--out', path.join(tmp, 'x'), '--dtype', 'q4_0'],
        /--dtype=q4_0/,
      ],
      [
        ['merge', '--model', modelDir, '--adapter', tmp, '--out', path.join(tmp, 'x'), '--format', 'onnx'],
        /--format=onnx/,
      ],
      [
        ['merge', '--model', modelDir, '--adapter', path.join(tmp, 'none'), '--out', path.join(tmp, 'x')],
        /adapter .*none does not exist/,
      ],
      [
        ['merge', '--model', modelDir, '--adapter', tmp, '--out', path.join(tmp, 'x')],
        /has no adapter_config\.json/,
      ],
      [
        [
          'merge',
          '--model',
          modelDir,
          '--adapter',
          path.join(tmp, 'dora-adapter'),
          '--out',
          path.join(tmp, 'merged-dora'),
        ],
        /already exists/,
      ],
      [
        [
          'merge',
          '--model',
          modelDir,
          '--adapter',
          tmp,
          '--out',
          path.join(tmp, 'y.gguf'),
          '--format',
          'safetensors',
        ],
        /names a \.gguf file/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = qtune(args);
      assert.equal(r.code, 2, `${args.join(' ')}: exit ${r.code}, ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
      assert.equal(r.stderr.trim().split('\n').length, 1, `more than one line: ${r.stderr}`);
    }
    assert.ok(!existsSync(path.join(tmp, 'x')));
  });
});
