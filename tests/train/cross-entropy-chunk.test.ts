/**
 * The Trainer's fused, chunked output layer and loss (crossEntropyChunk, linearCrossEntropy): the
 * same losses, evaluations and trained weights as the logits computed whole (the reference here is
 * the unfused path, whose ops tests/tensor/gradcheck.test.ts checks against finite differences), for
 * a frozen head (LoRA, QLoRA, bf16 autocast) and a trainable one (full fine-tuning, untied and tied
 * to the embeddings); and the accumulate graph's compute buffer shrinks when the logits dominate it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { Trainer, type Precision } from '../../src/train/trainer.js';
import type { TrainData } from '../../src/data/example.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';
import { FIXTURE, writeRandomLlama } from '../helpers/random-model.js';
import { relErr } from '../helpers/ref.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-xent-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const DATA: TrainData = byteData(32, 12, 2); // batches of 2 × 32 = 64 token rows

function make(
  dir: string,
  trainType: string,
  crossEntropyChunk: number,
  precision: Precision = 'fp32',
  data: TrainData = DATA,
): Trainer {
  const backend = cpuBackend();
  backend.setThreads(1);
  return new Trainer(prepareFolder(dir, trainType, backend, precision), data, {
    trainType,
    precision,
    batchSize: 2,
    maxSteps: 3,
    // SGD: the update is linear in the gradient, so the trained weights compare the gradients (AdamW's
    // m/√v turns rounding-level differences of near-zero gradients into steps of the learning rate)
    optimizer: { name: 'sgd', lr: 0.5 },
    seed: 5,
    crossEntropyChunk,
  });
}

/** Losses of 3 steps, the evaluation after them, and the trainable weights at the end. */
function trainRun(dir: string, trainType: string, chunk: number, precision: Precision) {
  const t = make(dir, trainType, chunk, precision);
  try {
    const losses = [0, 1, 2].map(() => t.step().loss);
    const evalLoss = t.evaluate().loss;
    const weights = t.params.map((p) => p.read());
    // one summed loss node per chunk of rows
    const chunks = t.graphNodes().accumulate.filter((n) => n.name === 'cross_entropy').length;
    return { losses, evalLoss, weights, chunks };
  } finally {
    t.dispose();
  }
}

describe('Trainer: the output layer and loss in chunks of token rows', () => {
  const tied = writeRandomLlama(path.join(tmp, 'tied'), { tie_word_embeddings: true }, 4);
  const cases: { name: string; dir: string; trainType: string; precision: Precision }[] = [
    { name: 'lora (frozen head)', dir: FIXTURE, trainType: 'lora', precision: 'fp32' },
    { name: 'qlora (nf4 base, f32 head)', dir: FIXTURE, trainType: 'qlora', precision: 'fp32' },
    {
      name: 'lora, bf16 autocast (bf16 head matmul)',
      dir: FIXTURE,
      trainType: 'lora',
      precision: 'bf16_autocast',
    },
    {
      name: 'lora, fp16 autocast (f16 head matmul, loss scale 2^16)',
      dir: FIXTURE,
      trainType: 'lora',
      precision: 'fp16_autocast',
    },
    { name: 'full (trainable untied head)', dir: FIXTURE, trainType: 'full', precision: 'fp32' },
    {
      name: 'full, tied embeddings (the head is the embedding)',
      dir: tied,
      trainType: 'full',
      precision: 'fp32',
    },
  ];
  for (const c of cases) {
    // bf16/f16 matmuls round their inputs to 8/11 significant bits: a difference of 1e-7 upstream
    // (softmax as exp(x − lse) here, ggml's soft_max there) flips a rounding now and then
    // flips a rounding now and then; so does the 4-bit base's forward, which rounds its activations to
    // q8_0 blocks (a flip moves an element by 1/127 of its block's largest). With the forward through
    // the CPU's repacked layout, QLoRA's losses stayed within 1e-5, its evaluation after three steps
    // moved by 1.4e-4 and its lora_B (from zero) by 1.2e-3 relative
    const tol = c.trainType === 'qlora' ? 1e-2 : c.precision === 'fp32' ? 1e-5 : 1e-3;
    it(`${c.name}: chunks of 24 rows (not dividing 64) train as the whole logits do (within ${tol})`, () => {
      const whole = trainRun(c.dir, c.trainType, 0, c.precision);
      const chunked = trainRun(c.dir, c.trainType, 24, c.precision);
      assert.equal(whole.chunks, 1);
      assert.equal(chunked.chunks, 3, 'rows 0-23, 24-47, 48-63');
      whole.losses.forEach((l, i) => {
        const e = relErr([chunked.losses[i]!], [l]);
        assert.ok(e < tol, `step ${i + 1}: ${chunked.losses[i]} vs ${l} (${e.toExponential(1)})`);
      });
      assert.ok(whole.losses[2]! < whole.losses[0]!, `the loss falls: ${whole.losses.join(', ')}`);
      assert.ok(
        relErr([chunked.evalLoss], [whole.evalLoss]) < tol,
        `eval ${chunked.evalLoss} vs ${whole.evalLoss}`,
      );
      whole.weights.forEach((w, i) => {
        const e = relErr(chunked.weights[i]!, w);
        assert.ok(e < tol, `trainable tensor ${i}: relative difference ${e.toExponential(1)}`);
      });
    });
  }

  it('lowers the accumulate graph memory when the logits dominate it (vocabulary 8192, one block)', () => {
    const wide = writeRandomLlama(path.join(tmp, 'wide'), { vocab_size: 8192, num_hidden_layers: 1 }, 6);
    const activations = (chunk: number) => {
      const t = make(wide, 'lora', chunk);
      try {
        t.allocate();
        return t.memory().parts.activations;
      } finally {
        t.dispose();
      }
    };
    const whole = activations(0);
    const chunked = activations(16);
    console.log(`accumulate compute buffer: ${whole} bytes whole, ${chunked} in chunks of 16 rows`);
    // whole: ~3 tensors of 64 × 8192 floats (2 MiB each) beside Wᵀ (2 MiB); chunked: a quarter of them
    assert.ok(chunked < 0.6 * whole);
  });

  it('keeps the whole logits where a trainable head would need more in chunks (2.5·tokens < hidden + 3·rows)', () => {
    const count = (trainType: string, chunk: number) => {
      const t = make(FIXTURE, trainType, chunk);
      try {
        return t.graphNodes().accumulate.filter((n) => n.name === 'cross_entropy').length;
      } finally {
        t.dispose();
      }
    };
    // 64 rows, hidden 64: chunks of 32 → 160 ≥ 64 + 96, fused; chunks of 40 → 160 < 64 + 120, whole
    assert.equal(count('full', 32), 2);
    assert.equal(count('full', 40), 1);
    assert.equal(count('lora', 40), 2, 'a frozen head is always chunked');
  });

  it('refuses a chunk size that is not a whole number ≥ 0, naming the key', () => {
    for (const chunk of [-1, 2.5]) {
      assert.throws(
        () => make(FIXTURE, 'lora', chunk),
        (e: unknown) => e instanceof ConfigError && e.message.startsWith(`cross_entropy_chunk: ${chunk} `),
      );
    }
  });
});
