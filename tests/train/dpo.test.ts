/**
 * DPO (src/train/preference.ts): the loss of each loss_type and its per-token derivative against a
 * float64 closed form written here from TRL's formulas and central finite differences; then on the
 * parity fixture's Llama (vocabulary 256, real text as bytes): the first step's rewards are 0 and its
 * sigmoid loss log 2 (the policy is the reference), precomputed reference log-probs give the same
 * steps, and a short run raises rewards/accuracies and rewards/margins (lora and full).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { dpoLoss, type PairLogProbs } from '../../src/train/preference.js';
import { Trainer, type LogRecord, type TrainerOptions } from '../../src/train/trainer.js';
import { byteData, preferencePairs, prepareFolder } from '../helpers/finetune.js';
import { FIXTURE } from '../helpers/random-model.js';
import { rng } from '../helpers/ref.js';

const logSig = (z: number) => -Math.log(1 + Math.exp(-z));

/** TRL's per-pair loss, written out. */
function reference(p: PairLogProbs, type: string, beta: number, eps: number): number {
  const s = (a: Float64Array) => a.reduce((x, y) => x + y, 0);
  const div = (a: Float64Array) => (type === 'ipo' ? a.length : 1);
  const h =
    s(p.chosen) / div(p.chosen) -
    s(p.rejected) / div(p.rejected) -
    (s(p.refChosen) / div(p.refChosen) - s(p.refRejected) / div(p.refRejected));
  if (type === 'sigmoid') return -(1 - eps) * logSig(beta * h) - eps * logSig(-beta * h);
  if (type === 'hinge') return Math.max(0, 1 - beta * h);
  return (h - 1 / (2 * beta)) ** 2;
}

function randomPairs(seed: number, n: number): PairLogProbs[] {
  const rand = rng(seed);
  const lp = (len: number) => Float64Array.from({ length: len }, () => -4 * rand());
  return Array.from({ length: n }, (_, i) => ({
    chosen: lp(3 + i),
    rejected: lp(5 - (i % 3)),
    refChosen: lp(3 + i),
    refRejected: lp(5 - (i % 3)),
  }));
}

describe('dpoLoss against the closed form', () => {
  for (const [type, beta, eps] of [
    ['sigmoid', 0.1, 0],
    ['sigmoid', 0.5, 0.2],
    ['hinge', 0.3, 0],
    ['ipo', 0.1, 0],
  ] as const) {
    it(`${type}, beta ${beta}, label_smoothing ${eps}: loss and wₜ = −n·∂L/∂log pₜ`, () => {
      const pairs = randomPairs(3, 4);
      const o = { beta, lossType: type, labelSmoothing: eps };
      const r = dpoLoss(pairs, o);
      const L = (ps: PairLogProbs[]) => ps.reduce((s, p) => s + reference(p, type, beta, eps), 0) / ps.length;
      assert.ok(Math.abs(r.loss - L(pairs)) < 1e-12, `${r.loss} vs ${L(pairs)}`);
      const h = 1e-6;
      pairs.forEach((p, i) => {
        for (const side of ['chosen', 'rejected'] as const) {
          for (let t = 0; t < p[side].length; t++) {
            const bump = (d: number) =>
              pairs.map((q, j) => {
                if (j !== i) return q;
                const a = Float64Array.from(q[side]);
                a[t]! += d;
                return { ...q, [side]: a };
              });
            const dL = (L(bump(h)) - L(bump(-h))) / (2 * h);
            const w = r.weights[i]![side][t]!;
            assert.ok(
              Math.abs(w - -pairs.length * dL) < 1e-6,
              `${side} ${i}.${t}: ${w} vs ${-pairs.length * dL}`,
            );
          }
        }
      });
      // the metrics as TRL defines them
      const rc = pairs.map(
        (p) => beta * (p.chosen.reduce((a, b) => a + b) - p.refChosen.reduce((a, b) => a + b)),
      );
      const rr = pairs.map(
        (p) => beta * (p.rejected.reduce((a, b) => a + b) - p.refRejected.reduce((a, b) => a + b)),
      );
      const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
      assert.ok(Math.abs(r.metrics['rewards/chosen']! - mean(rc)) < 1e-12);
      assert.ok(Math.abs(r.metrics['rewards/margins']! - (mean(rc) - mean(rr))) < 1e-12);
      assert.equal(r.metrics['rewards/accuracies'], mean(rc.map((c, k) => (c > rr[k]! ? 1 : 0))));
    });
  }
});

const SEQ = 32;
const DATA = { train: preferencePairs(8, SEQ) };

function dpoTrainer(trainType: string, o: Partial<TrainerOptions>, records: LogRecord[]): Trainer {
  return new Trainer(prepareFolder(FIXTURE, trainType, cpuBackend()), DATA, {
    trainType,
    objective: 'dpo',
    batchSize: 2,
    maxSteps: 16,
    padding: 'max_length',
    optimizer: { name: 'adamw', lr: trainType === 'full' ? 1e-3 : 1e-2 },
    onLog: (r) => records.push(r),
    ...o,
  });
}

describe('DPO on a tiny model', () => {
  it('step 1: the policy is the reference, so every reward is 0 and the sigmoid loss is log 2', () => {
    const records: LogRecord[] = [];
    const t = dpoTrainer('lora', { maxSteps: 1, preference: { beta: 0.1 } }, records);
    try {
      t.train();
      const first = records.find((x) => x.kind === 'step')!;
      assert.ok(Math.abs(first.loss! - Math.log(2)) < 1e-6, `${first.loss}`);
      assert.equal(first.metrics!['rewards/chosen'], 0);
      assert.equal(first.metrics!['rewards/margins'], 0);
      assert.ok(first.metrics!['logps/chosen']! < 0);
    } finally {
      t.dispose();
    }
  });

  for (const trainType of ['lora', 'full']) {
    it(`${trainType}: rewards/accuracies and rewards/margins rise`, () => {
      const records: LogRecord[] = [];
      const t = dpoTrainer(trainType, { preference: { beta: 0.5 } }, records);
      try {
        t.train();
        const steps = records.filter((x) => x.kind === 'step').map((x) => x.metrics!);
        assert.equal(steps.length, 16);
        const mean = (k: string, a: typeof steps) => a.reduce((s, m) => s + m[k]!, 0) / a.length;
        const [early, late] = [steps.slice(0, 4), steps.slice(-4)];
        assert.ok(
          mean('rewards/margins', late) > mean('rewards/margins', early) + 0.1,
          JSON.stringify(steps.map((m) => m['rewards/margins'])),
        );
        assert.ok(
          mean('rewards/accuracies', late) > mean('rewards/accuracies', early),
          JSON.stringify(steps.map((m) => m['rewards/accuracies'])),
        );
        assert.ok(mean('rewards/accuracies', late) >= 0.75);
      } finally {
        t.dispose();
      }
    });
  }

  it('precompute_ref_log_probs gives the same steps as the reference per batch', () => {
    const ra: LogRecord[] = [];
    const rb: LogRecord[] = [];
    const a = dpoTrainer('lora', { maxSteps: 3 }, ra);
    const b = dpoTrainer('lora', { maxSteps: 3, preference: { precomputeRefLogProbs: true } }, rb);
    try {
      a.train();
      b.train();
      const [sa, sb] = [ra.filter((x) => x.kind === 'step'), rb.filter((x) => x.kind === 'step')];
      sa.forEach((x, i) => {
        assert.ok(Math.abs(x.loss! - sb[i]!.loss!) < 1e-9 * Math.max(1, x.loss!), `step ${i + 1}`);
        assert.deepEqual(Object.keys(x.metrics!), Object.keys(sb[i]!.metrics!));
      });
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  it('refuses training examples without a rejected completion, and a bad loss_type', () => {
    const prep = () => prepareFolder(FIXTURE, 'lora', cpuBackend());
    assert.throws(
      () => new Trainer(prep(), byteData(SEQ, 2, 0), { trainType: 'lora', objective: 'dpo' }),
      /objective dpo: a training example has no rejected completion/,
    );
    assert.throws(
      () =>
        new Trainer(prep(), DATA, {
          trainType: 'lora',
          objective: 'dpo',
          preference: { lossType: 'sigmod' as 'ipo' },
        }),
      /loss_type: "sigmod" is not a DPO loss \(use one of sigmoid, ipo, hinge\)/,
    );
  });
});
