/**
 * Packing: samples concatenated into one sequence with a block-diagonal causal mask give the same
 * logits and loss as each sample run on its own (on CPU, within 1e-5), both through
 * LlamaModel.forward's mask option and through the Trainer, which builds the mask from the
 * examples' segments.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadDataset } from '../../src/data/dataset.js';
import { packedAttentionMask, PAD_SEGMENT } from '../../src/data/packing.js';
import { cpuBackend } from '../../src/engine/device.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { Graph, crossEntropy } from '../../src/tensor/index.js';
import { Trainer, prepareModel } from '../../src/train/trainer.js';
import type { Example } from '../../src/data/example.js';
import { scratchDir, tinyModelDir } from './helpers.js';

const T = 64;
const MODEL = {
  hiddenSize: 64,
  intermediateSize: 128,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  seed: 5,
  initStd: 0.1,
};
const records = [
  { prompt: 'Call me Ishmael.', completion: ' Some years ago, never mind how long precisely.' },
  { prompt: 'It is a way I have', completion: ' of driving off the spleen.' },
  { prompt: 'There now is your insular city', completion: ' of the Manhattoes, belted round by wharves.' },
  { prompt: 'Circumambulate the city', completion: ' of a dreamy Sabbath afternoon.' },
  { prompt: 'What do you see?', completion: ' Posted like silent sentinels all around the town.' },
];

/** The non-padding positions of an unpacked example: its own ids and labels. */
function unpadded(e: Example, pad: number): { ids: Int32Array; labels: Int32Array } {
  let n = e.ids.length;
  while (n > 0 && e.labels[n - 1] === -100 && e.ids[n - 1] === pad) n--;
  return { ids: e.ids.slice(0, n), labels: e.labels.slice(0, n) };
}

describe('packing', () => {
  const dir = tinyModelDir('llama2', MODEL);
  const file = path.join(scratchDir('packing'), 'pc.jsonl');
  writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  let loaded: LoadedModel;
  let packed: Example[];
  let single: Example[];
  let pad = 0;

  before(async () => {
    loaded = await loadModel(dir, { backend: cpuBackend(), dtype: 'f32' });
    pad = loaded.tokenizer.padId ?? loaded.tokenizer.eosIds[0]!;
    const cfg = { path: file, format: 'prompt_completion', shuffle: false } as const;
    packed = [...(await loadDataset({ ...cfg, packing: true }, loaded.tokenizer, T)).train];
    single = [...(await loadDataset(cfg, loaded.tokenizer, T)).train];
  });
  after(() => loaded.dispose());

  it('concatenates whole samples in order, with a segment id per position', () => {
    assert.ok(
      packed.length >= 2 && packed.length < single.length,
      `${packed.length} packed of ${single.length}`,
    );
    const pieces = single.map((e) => unpadded(e, pad));
    let k = 0;
    for (const e of packed) {
      assert.equal(e.ids.length, T);
      let at = 0;
      for (let s = 0; at < T && e.segments![at] !== PAD_SEGMENT; s++) {
        const p = pieces[k++]!;
        assert.deepEqual(e.ids.slice(at, at + p.ids.length), p.ids);
        assert.deepEqual(e.labels.slice(at, at + p.labels.length), p.labels);
        assert.ok(e.segments!.slice(at, at + p.ids.length).every((x) => x === s));
        at += p.ids.length;
      }
      assert.ok(e.labels.slice(at).every((l) => l === -100));
    }
    assert.equal(k, pieces.length, 'every sample packed once');
  });

  it('the mask is block-diagonal and causal', () => {
    const m = packedAttentionMask([Int32Array.of(0, 0, 1, 1, -1)], 1, 5);
    const rows = Array.from({ length: 5 }, (_, i) =>
      Array.from(m.slice(i * 5, i * 5 + 5), (x) => (x === 0 ? 1 : 0)),
    );
    assert.deepEqual(rows, [
      [1, 0, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [0, 0, 1, 0, 0],
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 1],
    ]);
  });

  it('packed logits and loss equal each sample computed on its own (within 1e-5)', (t) => {
    const model = loaded.model;
    const V = model.config.vocab_size;
    const e = packed[0]!;
    const g = new Graph(model.backend);
    let packedLogits: Float32Array;
    let packedLoss: number;
    let unmaskedLogits: Float32Array;
    try {
      const ids = g.input([1, T], 'i32', 'ids');
      const labels = g.input([1, T], 'i32', 'labels');
      const mask = g.input([1, 1, T, T], 'f32', 'mask');
      const logits = model.forward(g, ids, { mask });
      const out = g.output(logits);
      const loss = g.output(crossEntropy(logits, labels, { reduction: 'sum' }));
      const plain = g.output(model.forward(g, ids));
      g.compile();
      g.set(ids, e.ids);
      g.set(labels, e.labels);
      g.set(mask, packedAttentionMask([e.segments], 1, T));
      g.run();
      packedLogits = g.read(out);
      packedLoss = g.read(loss)[0]!;
      unmaskedLogits = g.read(plain);
    } finally {
      g.dispose();
    }
    let at = 0;
    let maxDiff = 0;
    let unmaskedDiff = 0;
    let lossSum = 0;
    for (let k = 0; at < T && e.segments![at] !== PAD_SEGMENT; k++) {
      const p = unpadded(single[k]!, pad);
      const n = p.ids.length;
      const g1 = new Graph(model.backend);
      try {
        const ids = g1.input([1, n], 'i32');
        const labels = g1.input([1, n], 'i32');
        const logits = model.forward(g1, ids);
        const out = g1.output(logits);
        const loss = g1.output(crossEntropy(logits, labels, { reduction: 'sum' }));
        g1.compile();
        g1.set(ids, p.ids);
        g1.set(labels, p.labels);
        g1.run();
        const ref = g1.read(out);
        lossSum += g1.read(loss)[0]!;
        for (let i = 0; i < n * V; i++) {
          maxDiff = Math.max(maxDiff, Math.abs(packedLogits[at * V + i]! - ref[i]!));
          unmaskedDiff = Math.max(unmaskedDiff, Math.abs(unmaskedLogits[at * V + i]! - ref[i]!));
        }
      } finally {
        g1.dispose();
      }
      at += n;
    }
    t.diagnostic(
      `max |logit diff| ${maxDiff.toExponential(2)}; loss packed ${packedLoss} vs separate ${lossSum}; without the mask ${unmaskedDiff.toExponential(2)}`,
    );
    assert.ok(maxDiff < 1e-5, `logits differ by ${maxDiff}`);
    assert.ok(Math.abs(packedLoss - lossSum) < 1e-5 * Math.abs(lossSum), `loss ${packedLoss} vs ${lossSum}`);
    assert.ok(unmaskedDiff > 1e-3, 'without the mask the later samples see the earlier ones');
  });

  it('the Trainer builds the mask from segments: packed and unpacked evaluation agree; a step trains', async (t) => {
    const prepared = await prepareModel(dir, { trainType: 'lora', backend: cpuBackend() });
    const trainer = new Trainer(
      prepared,
      { train: packed, validation: single },
      {
        trainType: 'lora',
        batchSize: 2,
        maxSteps: 1,
        seed: 1,
      },
    );
    try {
      const a = trainer.evaluate(packed);
      const b = trainer.evaluate(single);
      t.diagnostic(
        `evaluation loss packed ${a.loss} (${a.tokens} tokens), unpacked ${b.loss} (${b.tokens} tokens)`,
      );
      assert.equal(a.tokens, b.tokens);
      assert.ok(Math.abs(a.loss - b.loss) < 1e-5 * b.loss, `${a.loss} vs ${b.loss}`);
      const r = trainer.step();
      assert.ok(Number.isFinite(r.loss) && r.tokens > 0);
    } finally {
      trainer.dispose();
    }
  });
});
