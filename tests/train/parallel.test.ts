/**
 * How a global batch splits across ranks: every rank takes the same number of examples, in equal
 * micro-batches of at most batch_size, and together they take the whole batch; a batch that does not
 * split is a ConfigError naming the numbers. Validation shares cover every example once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { shareOf, splitGlobalBatch } from '../../src/train/parallel.js';

describe('splitting a global batch', () => {
  it('gives each rank equal micro-batches of at most batch_size, the whole batch in all', () => {
    for (let batch = 1; batch <= 8; batch++)
      for (let acc = 1; acc <= 6; acc++)
        for (let ranks = 1; ranks <= 8; ranks++) {
          if ((batch * acc) % ranks !== 0) continue;
          const s = splitGlobalBatch(batch, acc, ranks);
          assert.equal(s.perRank * ranks, batch * acc);
          assert.equal(s.microBatch * s.microBatches, s.perRank);
          assert.ok(s.microBatch >= 1 && s.microBatch <= batch);
        }
    // one rank: the config's own micro-batches
    assert.deepEqual(splitGlobalBatch(4, 3, 1), { perRank: 12, microBatch: 4, microBatches: 3 });
    // ranks that share the accumulation steps keep batch_size
    assert.deepEqual(splitGlobalBatch(4, 4, 2), { perRank: 8, microBatch: 4, microBatches: 2 });
    // 6 per rank with batch_size 4: two micro-batches of 3, no padding
    assert.deepEqual(splitGlobalBatch(4, 3, 2), { perRank: 6, microBatch: 3, microBatches: 2 });
    // more ranks than accumulation steps: smaller micro-batches
    assert.deepEqual(splitGlobalBatch(2, 2, 4), { perRank: 1, microBatch: 1, microBatches: 1 });
  });

  it('refuses a batch that does not split, naming the numbers', () => {
    assert.throws(
      () => splitGlobalBatch(4, 2, 3),
      (e: unknown) =>
        e instanceof ConfigError &&
        /4 × 2 = 8 examples per step, which do not split across 3 ranks/.test(e.message) &&
        /multiple of 3/.test(e.message),
    );
  });

  it('shares n examples so that every one is evaluated once', () => {
    for (let n = 0; n <= 13; n++)
      for (let size = 1; size <= 5; size++) {
        let next = 0;
        for (let r = 0; r < size; r++) {
          const [start, end] = shareOf(n, r, size);
          assert.equal(start, next);
          assert.ok(end - start === Math.floor(n / size) || end - start === Math.ceil(n / size));
          next = end;
        }
        assert.equal(next, n);
      }
  });
});
