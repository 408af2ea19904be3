/**
 * GRPO's host loss (src/train/grpo-loss.ts) against closed forms written out here in float64 from
 * the formulas of TRL's GRPOTrainer: the group advantages (mean and Bessel-corrected std per group,
 * + 1e-4), the per-token loss at ratio 1 (−A + β·k3) under each loss_type's normalisation, and the
 * derivative with respect to each token's log-prob against central finite differences of the loss
 * itself, with `old` away from `logp` so that both sides of the clip are exercised.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  groupAdvantages,
  grpoLoss,
  type GrpoLossOptions,
  type GrpoSequence,
} from '../../src/train/grpo-loss.js';

const close = (a: number, b: number, tol = 1e-12) =>
  assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} vs ${b}`);

describe('GRPO advantages', () => {
  it('normalise each group by its mean and sample std (+1e-4), as TRL', () => {
    const a = groupAdvantages([1, 0, 0, 1, 2, 2, 2, 2, 3, 0, 0, 0], 4);
    const s1 = Math.sqrt((4 * 0.25) / 3); // group 1: mean 0.5
    [0.5, -0.5, -0.5, 0.5].forEach((d, i) => close(a[i]!, d / (s1 + 1e-4)));
    for (let i = 4; i < 8; i++) assert.equal(a[i], 0); // equal rewards: no signal
    const s3 = Math.sqrt((2.25 ** 2 + 3 * 0.75 ** 2) / 3); // group 3: mean 0.75
    [2.25, -0.75, -0.75, -0.75].forEach((d, i) => close(a[8 + i]!, d / (s3 + 1e-4)));
  });
  it('scale by the batch std, or not at all', () => {
    const r = [1, 0, 3, 3];
    const m = 7 / 4;
    const sb = Math.sqrt(r.reduce((s, v) => s + (v - m) ** 2, 0) / 3);
    const b = groupAdvantages(r, 2, 'batch');
    [0.5, -0.5, 0, 0].forEach((d, i) => close(b[i]!, d / (sb + 1e-4)));
    assert.deepEqual([...groupAdvantages(r, 2, 'none')], [0.5, -0.5, 0, 0]);
  });
  it('refuse rewards that are not whole groups', () => {
    assert.throws(() => groupAdvantages([1, 2, 3], 2), /num_generations: 2 does not divide 3 rewards/);
  });
});

/** Three completions of lengths 3, 1, 2 in two micro-batches. */
function seqs(shift: number[] = [0, 0, 0, 0, 0, 0]): GrpoSequence[] {
  const lp = [[-0.5, -1.2, -0.1], [-2.0], [-0.3, -0.9]];
  const ref = [[-0.7, -1.0, -0.2], [-1.5], [-0.3, -1.4]];
  const adv = [1.3, -0.8, 0.4];
  let k = 0;
  return lp.map((l, i) => ({
    logp: l.map((v) => v + shift[k++]!),
    old: l,
    ref: ref[i]!,
    advantage: adv[i]!,
    microBatch: i === 0 ? 0 : 1,
  }));
}

describe('the GRPO loss at ratio 1 (one update per generation)', () => {
  const beta = 0.04;
  const k3 = (lp: number, ref: number) => Math.exp(ref - lp) - (ref - lp) - 1;
  // per-token losses −A + β·k3, by hand
  const s = seqs();
  const tok = s.map((q) => Array.from(q.logp, (lp, t) => -q.advantage + beta * k3(lp, q.ref![t]!)));
  const sum = (x: number[]) => x.reduce((a, b) => a + b, 0);
  const cases: [GrpoLossOptions['lossType'], number][] = [
    ['dapo', sum(tok.flat()) / 6],
    ['grpo', (sum(tok[0]!) / 3 + sum(tok[1]!) / 1 + sum(tok[2]!) / 2) / 3],
    ['bnpo', (sum(tok[0]!) / 3 + sum([...tok[1]!, ...tok[2]!]) / 3) / 2],
    ['dr_grpo', sum(tok.flat()) / (3 * 8)],
  ];
  for (const [lossType, want] of cases)
    it(`${lossType}: the loss, and −∂loss/∂logp = c·(A − β(1 − e^(ref−logp)))`, () => {
      const r = grpoLoss(s, { epsilon: 0.2, beta, lossType, maxCompletionLength: 8 });
      close(r.loss, want);
      const c = (i: number) =>
        lossType === 'dapo'
          ? 1 / 6
          : lossType === 'grpo'
            ? 1 / (s[i]!.logp.length * 3)
            : lossType === 'bnpo'
              ? 1 / (3 * 2)
              : 1 / 24;
      s.forEach((q, i) =>
        Array.from(q.logp).forEach((lp, t) =>
          close(r.weights[i]![t]!, c(i) * (q.advantage - beta * (1 - Math.exp(q.ref![t]! - lp)))),
        ),
      );
      assert.equal(r.clipRatio, 0);
      close(r.kl, sum(s.flatMap((q) => Array.from(q.logp, (lp, t) => k3(lp, q.ref![t]!)))) / 6);
    });
});

describe('the GRPO loss off the sampling policy (ratios ≠ 1)', () => {
  // ratios e^shift: 1.5 and 0.6 (outside the clip of 0.2), 1.1 and 0.9 (inside)
  const shift = [Math.log(1.5), Math.log(0.6), Math.log(1.1), Math.log(1.5), Math.log(0.9), Math.log(0.6)];
  const o: GrpoLossOptions = { epsilon: 0.2, beta: 0.04, lossType: 'dapo', maxCompletionLength: 8 };
  it('the derivative equals central finite differences of the loss', () => {
    const r = grpoLoss(seqs(shift), o);
    const h = 1e-6;
    let k = 0;
    seqs(shift).forEach((q, i) =>
      Array.from(q.logp).forEach((_, t) => {
        const up = [...shift];
        const down = [...shift];
        up[k]! += h;
        down[k]! -= h;
        const fd = (grpoLoss(seqs(up), o).loss - grpoLoss(seqs(down), o).loss) / (2 * h);
        close(-r.weights[i]![t]!, fd, 1e-7);
        k++;
      }),
    );
  });
  it('counts the clipped tokens as TRL (low: ratio < 1−ε with A < 0; high: ratio > 1+ε with A > 0)', () => {
    const r = grpoLoss(seqs(shift), o);
    // seq 0 (A > 0): 1.5 high-clipped; seq 1 (A < 0): 1.5 not clipped (ratio·A is the minimum);
    // seq 2 (A > 0): 0.6 not clipped
    close(r.clipHigh, 1 / 6);
    close(r.clipLow, 0);
    close(r.clipRatio, 1 / 6);
    // a clipped token has no policy-gradient part: only the KL's
    const q = seqs(shift)[0]!;
    close(-r.weights[0]![0]!, (0.04 * (1 - Math.exp(q.ref![0]! - q.logp[0]!))) / 6);
  });
});
