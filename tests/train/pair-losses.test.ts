/**
 * SimPO and ORPO (src/train/pair-losses.ts): each loss against a float64 closed form written here
 * from TRL's CPOTrainer (loss_type simpo) and ORPOTrainer, its per-token weights against central
 * finite differences of that closed form; then on the parity fixture's Llama (real text as bytes,
 * the rejected completion reversed) a short run of each raises rewards/margins and
 * rewards/accuracies, with no reference pass.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { orpoLoss, simpoLoss } from '../../src/train/pair-losses.js';
import type { PairLogProbs } from '../../src/train/preference.js';
import { Trainer, type LogRecord } from '../../src/train/trainer.js';
import { byteData, preferencePairs, prepareFolder } from '../helpers/finetune.js';
import { FIXTURE } from '../helpers/random-model.js';
import { rng } from '../helpers/ref.js';

const avg = (a: Float64Array) => a.reduce((x, y) => x + y, 0) / a.length;
const logSig = (z: number) => -Math.log(1 + Math.exp(-z));

/** TRL's SimPO: logits = (āc − ār) − γ/β, ℓ = −(1−ε)·log σ(β·logits) − ε·log σ(−β·logits), mean over pairs. */
function simpoRef(ps: PairLogProbs[], beta: number, gamma: number, eps: number): number {
  const l = ps.map((p) => {
    const logits = avg(p.chosen) - avg(p.rejected) - gamma / beta;
    return -(1 - eps) * logSig(beta * logits) - eps * logSig(-beta * logits);
  });
  return l.reduce((a, b) => a + b, 0) / l.length;
}

/** TRL's ORPO: the chosen tokens' mean NLL − mean β·log σ(log odds(āc) − log odds(ār)). */
function orpoRef(ps: PairLogProbs[], beta: number): number {
  const tokens = ps.flatMap((p) => [...p.chosen]);
  const nll = -tokens.reduce((a, b) => a + b, 0) / tokens.length;
  const odds = (a: number) => a - Math.log(1 - Math.exp(a));
  const ratio = ps.map((p) => logSig(odds(avg(p.chosen)) - odds(avg(p.rejected))));
  return nll - (beta * ratio.reduce((a, b) => a + b, 0)) / ps.length;
}

function randomPairs(seed: number, n: number): PairLogProbs[] {
  const rand = rng(seed);
  const lp = (len: number) => Float64Array.from({ length: len }, () => -0.05 - 4 * rand());
  const none = new Float64Array(0);
  return Array.from({ length: n }, (_, i) => ({
    chosen: lp(3 + i),
    rejected: lp(5 - (i % 3)),
    refChosen: none,
    refRejected: none,
  }));
}

/** Every token weight equals −n·∂L/∂log pₜ of the closed form `L` (central differences). */
function checkWeights(
  pairs: PairLogProbs[],
  weights: { chosen: Float64Array; rejected: Float64Array }[],
  L: (ps: PairLogProbs[]) => number,
): void {
  const h = 1e-6;
  pairs.forEach((p, i) => {
    for (const side of ['chosen', 'rejected'] as const)
      for (let t = 0; t < p[side].length; t++) {
        const bump = (d: number) =>
          pairs.map((q, j) => {
            if (j !== i) return q;
            const a = Float64Array.from(q[side]);
            a[t]! += d;
            return { ...q, [side]: a };
          });
        const want = (-pairs.length * (L(bump(h)) - L(bump(-h)))) / (2 * h);
        const got = weights[i]![side][t]!;
        assert.ok(
          Math.abs(got - want) < 1e-6 * Math.max(1, Math.abs(want)),
          `${side} ${i}.${t}: ${got} vs ${want}`,
        );
      }
  });
}

describe('SimPO and ORPO against the closed forms', () => {
  for (const [beta, gamma, eps] of [
    [0.1, 0.5, 0],
    [2, 1, 0.1],
  ] as const) {
    it(`simpo, beta ${beta}, gamma ${gamma}, label_smoothing ${eps}: loss, weights, metrics`, () => {
      const pairs = randomPairs(5, 4);
      const r = simpoLoss(pairs, { beta, gamma, labelSmoothing: eps });
      const L = (ps: PairLogProbs[]) => simpoRef(ps, beta, gamma, eps);
      assert.ok(Math.abs(r.loss - L(pairs)) < 1e-12, `${r.loss} vs ${L(pairs)}`);
      checkWeights(pairs, r.weights, L);
      const margins = pairs.map((p) => beta * (avg(p.chosen) - avg(p.rejected)));
      const m = margins.reduce((a, b) => a + b, 0) / margins.length;
      assert.ok(Math.abs(r.metrics['rewards/margins']! - m) < 1e-12);
      assert.equal(r.metrics['rewards/accuracies'], margins.filter((x) => x > 0).length / margins.length);
    });
  }

  for (const beta of [0.1, 1]) {
    it(`orpo, beta ${beta}: loss, weights (NLL and odds ratio), metrics`, () => {
      const pairs = randomPairs(7, 3);
      const r = orpoLoss(pairs, { beta });
      const L = (ps: PairLogProbs[]) => orpoRef(ps, beta);
      assert.ok(Math.abs(r.loss - L(pairs)) < 1e-12, `${r.loss} vs ${L(pairs)}`);
      checkWeights(pairs, r.weights, L);
      assert.ok(Math.abs(r.loss - (r.metrics['nll_loss']! - beta * r.metrics['log_odds_ratio']!)) < 1e-12);
      assert.ok(
        Math.abs(r.metrics['logps/chosen']! - pairs.reduce((s, p) => s + avg(p.chosen), 0) / 3) < 1e-12,
      );
    });
  }
});

const SEQ = 32;
const DATA = { train: preferencePairs(8, SEQ) };

describe('SimPO and ORPO on a tiny model', () => {
  for (const [objective, beta] of [
    ['simpo', 2],
    ['orpo', 0.5],
  ] as const) {
    it(`${objective}: rewards/margins and rewards/accuracies rise`, () => {
      const records: LogRecord[] = [];
      const t = new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), DATA, {
        trainType: 'lora',
        objective,
        batchSize: 2,
        maxSteps: 16,
        padding: 'max_length',
        optimizer: { name: 'adamw', lr: 1e-2 },
        preference: { beta },
        onLog: (r) => records.push(r),
      });
      try {
        t.train();
        const steps = records.filter((x) => x.kind === 'step').map((x) => x.metrics!);
        assert.equal(steps.length, 16);
        const mean = (k: string, a: typeof steps) => a.reduce((s, m) => s + m[k]!, 0) / a.length;
        const [early, late] = [steps.slice(0, 4), steps.slice(-4)];
        const margins = JSON.stringify(steps.map((m) => m['rewards/margins']));
        assert.ok(mean('rewards/margins', late) > mean('rewards/margins', early), margins);
        assert.ok(mean('rewards/accuracies', late) >= mean('rewards/accuracies', early), margins);
        if (objective === 'orpo') assert.ok(mean('nll_loss', late) < mean('nll_loss', early));
      } finally {
        t.dispose();
      }
    });
  }

  it('refuses examples without a rejected completion, naming the objective', () => {
    assert.throws(
      () =>
        new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), byteData(SEQ, 2, 0), {
          trainType: 'lora',
          objective: 'simpo',
        }),
      /objective simpo: a training example has no rejected completion/,
    );
  });
});
