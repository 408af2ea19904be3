/**
 * A run stops when its AbortSignal is aborted (src/train/trainer.ts): trainAsync leaves the event
 * loop free (between steps, and while a step's graphs compute), so a real timer can fire mid-run; the
 * run stops at the next step boundary, writes a checkpoint of that step, says `aborted`, and the
 * checkpoint resumes to the losses of an uninterrupted run. train() (synchronous) stops on a signal aborted from its own onLog.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const DATA = byteData(32, 48, 4);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-abort-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function trainer(o: TrainerOptions): Trainer {
  return new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), DATA, {
    trainType: 'lora',
    batchSize: 2,
    optimizer: { name: 'adamw', lr: 1e-2 },
    lora: { rank: 4, alpha: 8, dropout: 0.1 },
    seed: 5,
    ...o,
  });
}

describe('aborting a run', () => {
  it('trainAsync: a timer aborts a long run mid-way; it stops at a step boundary with a checkpoint of that step', async () => {
    const out = path.join(tmp, 'timer');
    const t = trainer({ maxSteps: 100_000, outputDir: out, saveEvery: 1000 });
    try {
      const controller = new AbortController();
      let firedAt = -1;
      t.onLog = (r) => {
        // the first step builds the graphs: the timer starts once steps are running
        if (r.kind === 'step' && r.step === 1)
          setTimeout(() => {
            firedAt = t.globalStep;
            controller.abort();
          }, 150);
      };
      const t0 = performance.now();
      const result = await t.trainAsync({ signal: controller.signal });
      const seconds = (performance.now() - t0) / 1000;
      assert.equal(result.aborted, true);
      assert.ok(firedAt >= 1, 'the timer never fired during the run');
      // the timer fired between two steps (the run stopped before the next one) or during one (its
      // graphs compute on a worker thread: that step finished, and the run stopped after it)
      assert.ok(result.steps === firedAt || result.steps === firedAt + 1, `${result.steps} vs ${firedAt}`);
      assert.equal(t.globalStep, result.steps);
      assert.ok(result.steps < t.totalSteps, `ran ${result.steps} of ${t.totalSteps} steps`);
      assert.equal(result.losses.length, result.steps);
      assert.ok(seconds < 60, `the run went on for ${seconds} s after the abort`);
      console.log(`a 150 ms timer stopped the run after step ${result.steps} (${seconds.toFixed(2)} s)`);
      // what a user needs: a checkpoint of the step reached, and the adapter written from it
      assert.deepEqual(readdirSync(out), [`checkpoint-${result.steps}`]);
      const written = t.saveOutputs(path.join(out, 'adapter'));
      assert.ok(
        written.some((f) => f.endsWith('adapter_config.json')),
        written.join(', '),
      );
    } finally {
      t.dispose();
    }
  });

  it('train(): a signal aborted from onLog stops after that step; the checkpoint resumes exactly', () => {
    const out = path.join(tmp, 'sync');
    const whole = trainer({ maxSteps: 6 });
    const expected = whole.train().losses;
    whole.dispose();

    const controller = new AbortController();
    const a = trainer({ maxSteps: 6, outputDir: out, saveEvery: 2 });
    a.onLog = (r) => {
      if (r.kind === 'step' && r.step === 3) controller.abort();
    };
    const first = a.train({ signal: controller.signal });
    a.dispose();
    assert.equal(first.aborted, true);
    assert.equal(first.steps, 3);
    assert.deepEqual(first.losses, expected.slice(0, 3));
    // the periodic checkpoint of step 2, and the one the abort wrote at step 3
    assert.deepEqual(readdirSync(out).sort(), ['checkpoint-2', 'checkpoint-3']);

    const b = trainer({ maxSteps: 6 });
    try {
      b.loadCheckpoint(path.join(out, 'checkpoint-3'));
      const rest = b.train();
      assert.equal(rest.aborted, false);
      assert.equal(rest.steps, 6);
      assert.deepEqual(rest.losses, expected.slice(3));
    } finally {
      b.dispose();
    }
  });

  it('a signal aborted before the run starts takes no step and writes nothing', async () => {
    const out = path.join(tmp, 'before');
    const t = trainer({ maxSteps: 4, outputDir: out });
    try {
      const result = await t.trainAsync({ signal: AbortSignal.abort() });
      assert.equal(result.aborted, true);
      assert.equal(result.steps, 0);
      assert.deepEqual(result.losses, []);
      assert.ok(!existsSync(out) || readdirSync(out).length === 0);
      // the trainer is still usable: the same call without the signal trains to the end
      const again = await t.trainAsync();
      assert.equal(again.aborted, false);
      assert.equal(again.steps, 4);
    } finally {
      t.dispose();
    }
  });
});
