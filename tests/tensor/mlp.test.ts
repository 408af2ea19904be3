/**
 * Proof that it trains: the QLoRA MLP of `qtune demo` (frozen q4_0 weight + rank-4 LoRA + AdamW as
 * graph ops) must lower its loss by at least 80% in 150 steps, and leave the frozen weight's bytes
 * unchanged, on every device.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { trainQloraMlp } from '../../src/demo/qlora-mlp.js';
import { testDevices } from '../helpers/devices.js';

const { devices, skipped } = testDevices();
describe('2-layer MLP: frozen q4_0 weight + rank-4 LoRA + AdamW graph ops', () => {
  for (const device of devices) {
    it(`loss falls by at least 80% on ${device.name}`, () => {
      const r = trainQloraMlp(device.backend, { steps: 150 });
      const first = r.losses[0]!;
      const last = r.losses[r.losses.length - 1]!;
      const drop = 1 - last / first;
      assert.ok(Number.isFinite(last), `loss became ${last}`);
      assert.ok(
        drop >= 0.8,
        `loss fell from ${first.toFixed(4)} to ${last.toFixed(4)} (${(drop * 100).toFixed(1)}%) on ${device.name}`,
      );
      assert.equal(r.baseHashAfter, r.baseHashBefore, 'the frozen q4_0 weight changed');
    });
  }
  for (const reason of skipped) it(`on ${reason.split(':')[0]!}`, { skip: reason }, () => undefined);
});
