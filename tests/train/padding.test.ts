/**
 * Dynamic padding and length-grouped batches, on the parity fixture's Llama (vocabulary 256) fed
 * Moby Dick as bytes in samples of varied length. The reference is the same trainer padding every
 * batch to the context length: causal attention keeps a position from seeing the padding after it,
 * and padding carries no loss, so cutting a batch to its bucket must leave the loss and every
 * gradient as they were (up to float32 rounding).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { Batches, MIN_BUCKET, exampleLength } from '../../src/data/batches.js';
import type { Example, TrainData } from '../../src/data/example.js';
import { packSamples } from '../../src/data/packing.js';
import { toExample } from '../../src/data/tokenize.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const SEQ = 256;
const PAD = 32; // a space: any id below the vocabulary pads

/** Byte windows of SEQ positions cut to varied lengths (the rest padding), as loadDataset makes them. */
function variedData(): TrainData {
  const cut = (list: readonly Example[], seed: number): Example[] =>
    list.map((e, i) => {
      const length = 8 + ((i * 97 + seed) % (SEQ - 8)); // 8 … 255
      const ids = e.ids.slice();
      const labels = e.labels.slice();
      ids.fill(PAD, length);
      labels.fill(-100, length);
      return { ids, labels, length };
    });
  const d = byteData(SEQ, 16, 4);
  return { train: cut(d.train, 5), validation: cut(d.validation, 11) };
}

function trainer(data: TrainData, o: Partial<TrainerOptions>): Trainer {
  return new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), data, {
    batchSize: 2,
    gradientAccumulationSteps: 2,
    maxSteps: 3,
    optimizer: { name: 'adamw', lr: 1e-2 },
    lora: { rank: 4, alpha: 8, dropout: 0 },
    seed: 7,
    ...o,
  });
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return m === 0 ? d : d / m;
}

describe('dynamic padding', () => {
  it('cuts a micro-batch to the bucket of its longest example: a power of two ≥ 64, at most the context', () => {
    const data = variedData();
    const b = new Batches(data, {
      batchSize: 2,
      accumulation: 1,
      microBatchSize: 2,
      seed: 0,
      vocabSize: 256,
      padding: 'longest',
    });
    const withLength = (n: number): Example => ({ ...data.train[0]!, length: n });
    assert.equal(MIN_BUCKET, 64);
    for (const [lengths, want] of [
      [[10, 20], 64],
      [[64, 3], 64],
      [[65, 3], 128],
      [[10, 200], 256],
      [[255, 255], 256],
    ] as const) {
      const c = b.collate(lengths.map(withLength));
      assert.equal(c.seqLen, want, `lengths ${lengths.join(', ')}`);
      assert.equal(c.ids.length, 2 * want);
      assert.equal(c.inputTokens, lengths[0] + lengths[1]);
      // the first row holds the example's first positions, the padding is the example's own
      assert.deepEqual(c.ids.subarray(0, want), data.train[0]!.ids.subarray(0, want));
    }
    // the longest example of both splits sets the longest graph
    assert.equal(b.maxSeqLen, 256);
    // max_length: every batch the whole context, whatever it holds
    const fixed = new Batches(data, {
      batchSize: 2,
      accumulation: 1,
      microBatchSize: 2,
      seed: 0,
      vocabSize: 256,
    });
    assert.equal(fixed.collate([withLength(10)]).seqLen, SEQ);
  });

  it('gives the loss and gradients of padding to the context length, on shorter graphs', () => {
    const data = variedData();
    const micro = [data.train.slice(0, 2), data.train.slice(2, 4)];
    const fixed = trainer(data, { padding: 'max_length' });
    const dynamic = trainer(data, {}); // the default
    try {
      assert.equal(dynamic.settings.padding, 'longest');
      const a = fixed.gradients(micro);
      const b = dynamic.gradients(micro);
      assert.equal(b.tokens, a.tokens);
      assert.ok(Math.abs(b.loss - a.loss) <= 1e-5 * Math.abs(a.loss), `loss ${b.loss} vs ${a.loss}`);
      for (const [name, g] of a.grads) {
        const rel = maxRelDiff(b.grads.get(name)!, g);
        assert.ok(rel <= 1e-4, `${name}: ${rel.toExponential(2)}`);
      }
      // whole steps agree too, and count the positions that hold samples
      for (let s = 0; s < 3; s++) {
        const ra = fixed.step();
        const rb = dynamic.step();
        assert.ok(
          Math.abs(rb.loss - ra.loss) <= 1e-4 * Math.abs(ra.loss),
          `step ${s + 1}: ${rb.loss} vs ${ra.loss}`,
        );
        assert.equal(rb.inputTokens, ra.inputTokens);
        assert.ok(rb.inputTokens > 0 && rb.inputTokens < 4 * SEQ, `${rb.inputTokens} input tokens`);
      }
      const ea = fixed.evaluate();
      const eb = dynamic.evaluate();
      assert.ok(Math.abs(eb.loss - ea.loss) <= 1e-4 * ea.loss, `eval ${eb.loss} vs ${ea.loss}`);
    } finally {
      fixed.dispose();
      dynamic.dispose();
    }
  });

  it('refuses a padding that is not one, and an example whose length exceeds its positions', () => {
    const data = variedData();
    assert.throws(
      () => trainer(data, { padding: 'dynamic' as never }),
      (e: unknown) => e instanceof ConfigError && e.problem === 'padding: "dynamic" is not a padding',
    );
    const bad = { train: [{ ...data.train[0]!, length: SEQ + 1 }] };
    assert.throws(
      () => trainer(bad, {}),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.problem === `dataset: train example 0 has length ${SEQ + 1}, not 0 to ${SEQ}`,
    );
  });

  it('records the length of a tokenized and of a packed sample', () => {
    const sample = { tokens: [5, 6, 7, 8, 9], targets: [false, false, true, true, true] };
    assert.equal(toExample(sample, 16, 0).length, 4); // 5 tokens: 4 next-token positions
    const packed = packSamples([sample, sample], 16, 0);
    assert.equal(packed.length, 1);
    assert.equal(exampleLength(packed[0]!), 8);
  });
});

describe('group_by_length', () => {
  it('orders each run of 50 global batches longest first, the same permutation on every run', () => {
    const d = variedData();
    const many = Array.from({ length: 6 }, () => d.train).flat(); // 96 examples: two runs of 50 × 1
    const data = { train: many };
    const o = { batchSize: 1, accumulation: 1, microBatchSize: 1, seed: 3, vocabSize: 256 };
    const order = (b: Batches) => Array.from({ length: many.length }, () => b.next()[0]![0]!);
    const grouped = order(new Batches(data, { ...o, groupByLength: true }));
    const again = order(new Batches(data, { ...o, groupByLength: true }));
    const plain = order(new Batches(data, o));
    assert.deepEqual(grouped, again);
    // the same examples, each once (a permutation of the shuffled order)
    assert.deepEqual(
      grouped.map((e) => many.indexOf(e)).sort((a, b) => a - b),
      plain.map((e) => many.indexOf(e)).sort((a, b) => a - b),
    );
    for (const [start, end] of [
      [0, 50],
      [50, 96],
    ]) {
      const lengths = grouped.slice(start, end).map(exampleLength);
      assert.deepEqual(
        lengths,
        [...lengths].sort((a, b) => b - a),
        `run ${start}–${end}`,
      );
      // and the run holds the plain order's examples of the same slots
      assert.deepEqual(new Set(grouped.slice(start, end)), new Set(plain.slice(start, end)));
    }
  });
});
