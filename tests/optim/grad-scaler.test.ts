/**
 * The GradScaler's rule, against the closed form of PyTorch's torch.amp.GradScaler (init_scale,
 * backoff_factor 0.5, growth_factor 2, growth_interval): an overflow halves the scale, resets the
 * count of good steps and skips the step; `growthInterval` good steps in a row double it; off, the
 * scale stays 1.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { GradScaler } from '../../src/optim/grad-scaler.js';

/** PyTorch's update rule, step by step, for a sequence of overflow flags. */
function reference(initial: number, interval: number, overflows: readonly boolean[]): number[] {
  let scale = initial;
  let good = 0;
  return overflows.map((inf) => {
    if (inf) {
      scale *= 0.5;
      good = 0;
    } else if (++good === interval) {
      scale *= 2;
      good = 0;
    }
    return scale;
  });
}

describe('GradScaler', () => {
  it('follows PyTorch’s rule over a sequence of good and overflowing steps', () => {
    const flags = [false, false, true, false, false, false, true, true, false, false, false, false];
    const want = reference(1024, 3, flags);
    const s = GradScaler.create(true, { initial: 1024, growthInterval: 3 });
    const got = flags.map((inf) => {
      const d = s.update(inf);
      assert.equal(d.skipped, inf);
      return s.scale;
    });
    assert.deepEqual(got, want);
  });

  it('is exhausted when an overflow takes the scale below 1', () => {
    const s = GradScaler.create(true, { initial: 2 });
    assert.deepEqual(s.update(true), { skipped: true, exhausted: false }); // 1
    assert.deepEqual(s.update(true), { skipped: true, exhausted: true }); // 0.5
  });

  it('is off outside fp16: the scale is 1 and the default 2^16 applies only when on', () => {
    assert.equal(GradScaler.create(false, { initial: 8 }).scale, 1);
    assert.equal(GradScaler.create(true).scale, 2 ** 16);
    assert.equal(GradScaler.create(true).growthInterval, 2000);
  });

  it('refuses a growth interval that is not a positive integer, naming the field', () => {
    for (const growthInterval of [0, 1.5, -2])
      assert.throws(
        () => GradScaler.create(true, { growthInterval }),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.problem === `loss_scale.growth_interval: ${growthInterval} must be a positive integer`,
      );
  });
});
