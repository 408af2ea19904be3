/**
 * The objectives' plumbing (src/train/logprobs.ts): Trainer.tokenLogProbs against closed forms, the
 * reference model (adapters off, or full fine-tuning's starting weights), and Trainer.weightedStep
 * against the SFT step and a finite difference. The parity fixture's Llama (vocabulary 256) on real
 * text as bytes, on the CPU.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import type { Example } from '../../src/data/example.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';
import { FIXTURE } from '../helpers/random-model.js';
import { relErr, rng } from '../helpers/ref.js';

const SEQ = 16;
const DATA = byteData(SEQ, 4, 2);

function trainer(trainType: string, o: Partial<TrainerOptions> = {}): Trainer {
  return new Trainer(prepareFolder(FIXTURE, trainType, cpuBackend()), DATA, {
    trainType,
    maxSteps: 10,
    padding: 'max_length',
    maxGradNorm: 0,
    optimizer: { name: 'sgd', lr: 0.05 },
    ...o,
  });
}

/** `e` with only position `t` counted, its label set to `label`. */
function onlyAt(e: Example, t: number, label: number): Example {
  const labels = new Int32Array(e.labels.length).fill(-100);
  labels[t] = label;
  return { ids: e.ids, labels };
}

/** The trainable tensors on the host, by name. */
function weights(t: Trainer): Map<string, Float32Array> {
  return new Map(t.params.map((p) => [p.name, p.store!.read(p)]));
}

describe('Trainer.tokenLogProbs', () => {
  it('gives one log-prob per counted label, equal to the evaluation graph’s −loss token by token', () => {
    const t = trainer('lora');
    try {
      const e = DATA.train[0]!;
      const [lp] = t.tokenLogProbs([e]);
      assert.equal(lp!.length, SEQ);
      for (const pos of [0, 5, SEQ - 1]) {
        const single = onlyAt(e, pos, e.labels[pos]!);
        const ev = t.evaluate([single]); // the Evaluator's forward, its summed cross-entropy
        assert.ok(Math.abs(-ev.loss - lp![pos]!) < 1e-4 * Math.max(1, Math.abs(ev.loss)), `position ${pos}`);
      }
    } finally {
      t.dispose();
    }
  });

  it('is a distribution: Σ_v exp(log p(v)) = 1 over the whole vocabulary at a position', () => {
    const t = trainer('lora');
    try {
      const e = DATA.train[1]!;
      const all = Array.from({ length: 256 }, (_, v) => onlyAt(e, 7, v));
      const lps = t.tokenLogProbs(all).map((a) => a[0]!);
      const total = lps.reduce((s, x) => s + Math.exp(x), 0);
      assert.ok(Math.abs(total - 1) < 1e-4, `Σ p = ${total}`);
    } finally {
      t.dispose();
    }
  });

  for (const trainType of ['lora', 'full']) {
    it(`${trainType}: the reference (adapters: false) stays the starting model as the policy trains`, () => {
      const t = trainer(trainType);
      try {
        const batch = DATA.train.slice(0, 2);
        const start = t.tokenLogProbs(batch);
        // (full, objective sft: the first reference request keeps the starting weights)
        assert.deepEqual(t.tokenLogProbs(batch, { adapters: false }), start);
        for (let i = 0; i < 3; i++) t.step();
        const policy = t.tokenLogProbs(batch);
        const ref = t.tokenLogProbs(batch, { adapters: false });
        const after = t.tokenLogProbs(batch); // the swap (full) put the trained weights back
        for (let b = 0; b < batch.length; b++) {
          assert.ok(relErr(ref[b]!, start[b]!) < 1e-5, `reference ${b}: ${relErr(ref[b]!, start[b]!)}`);
          assert.ok(relErr(policy[b]!, start[b]!) > 1e-3, `the policy moved (${b})`);
          assert.deepEqual(after[b], policy[b]);
        }
      } finally {
        t.dispose();
      }
    });
  }

  it('full, objective sft: a reference asked for only after a step is refused (its weights are gone)', () => {
    const t = trainer('full');
    try {
      t.step();
      assert.throws(() => t.tokenLogProbs(DATA.train.slice(0, 1), { adapters: false }), /starting weights/);
    } finally {
      t.dispose();
    }
  });
});

describe('Trainer.weightedStep', () => {
  it('with every weight 1 and count = tokens, is the SFT step (the same update and norm)', () => {
    const [a, b] = [trainer('lora'), trainer('lora')];
    try {
      const batch = [DATA.train.slice(0, 1), DATA.train.slice(1, 2)];
      const n = batch.flat().reduce((s, e) => s + e.labels.filter((l) => l !== -100).length, 0);
      const ra = a.step(batch);
      const micro = batch.map((examples) => ({
        examples,
        weights: examples.map((e) => new Float32Array(e.labels.filter((l) => l !== -100).length).fill(1)),
      }));
      const rb = b.weightedStep(micro, { count: n, loss: 1.25, metrics: { 'x/y': 2 } });
      assert.ok(Math.abs(ra.gradNorm - rb.gradNorm) < 1e-5 * ra.gradNorm, `${ra.gradNorm} ${rb.gradNorm}`);
      assert.equal(rb.loss, 1.25);
      assert.deepEqual(rb.metrics, { 'x/y': 2 });
      const [wa, wb] = [weights(a), weights(b)];
      for (const [name, v] of wa) assert.ok(relErr(wb.get(name)!, v) < 1e-5, name);
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('with arbitrary weights, is the gradient of Σ w·(−log p)/count: a finite difference agrees', () => {
    // SGD without clipping: θ' = θ − η·g, so L(θ') − L(θ) ≈ −η·‖g‖² for small η
    const eta = 1e-3;
    const t = trainer('full', { optimizer: { name: 'sgd', lr: eta } });
    try {
      const examples = DATA.train.slice(0, 1);
      const rand = rng(7);
      const w = [Float32Array.from({ length: SEQ }, () => 2 * rand() - 1)];
      const count = 3;
      const L = () => t.tokenLogProbs(examples)[0]!.reduce((s, lp, i) => s - w[0]![i]! * lp, 0) / count;
      const before = L();
      const r = t.weightedStep([{ examples, weights: w }], { count, loss: before });
      const after = L();
      const predicted = -eta * r.gradNorm ** 2;
      assert.ok(
        Math.abs(after - before - predicted) < 0.05 * Math.abs(predicted),
        `ΔL ${after - before}, −η‖g‖² ${predicted}`,
      );
    } finally {
      t.dispose();
    }
  });

  it('refuses weights that do not match the counted labels, and a count that is not positive', () => {
    const t = trainer('lora');
    try {
      const examples = DATA.train.slice(0, 1);
      assert.throws(
        () => t.weightedStep([{ examples, weights: [new Float32Array(3)] }], { count: 1, loss: 0 }),
        /example 0 has 16 counted label tokens but 3 weights/,
      );
      assert.throws(
        () => t.weightedStep([{ examples, weights: [new Float32Array(SEQ)] }], { count: 0, loss: 0 }),
        /count 0 is not a positive number/,
      );
    } finally {
      t.dispose();
    }
  });
});

describe('the objective option', () => {
  it('refuses a name that is not an objective, naming the choices and the nearest', () => {
    assert.throws(
      () => trainer('lora', { objective: 'dpx' as 'dpo' }),
      /objective: "dpx" is not an objective \(use one of sft, dpo, orpo, kto, simpo, grpo; did you mean dpo\?\)/,
    );
  });

  it('sft (the default) trains exactly as without the option', () => {
    const [a, b] = [trainer('lora'), trainer('lora', { objective: 'sft' })];
    try {
      const [ra, rb] = [a.step(), b.step()];
      assert.equal(ra.loss, rb.loss);
      assert.equal(ra.gradNorm, rb.gradNorm);
      assert.equal(rb.metrics, undefined);
    } finally {
      a.dispose();
      b.dispose();
    }
  });
});
