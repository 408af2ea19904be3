/**
 * Watching and steering a run from the library (src/train/control.ts): trainAsync computes each graph
 * on a worker thread, so an HTTP server in this process answers during a step (and does not during a
 * step of the blocking train(), the contrast that shows what is measured); pause() holds the run and
 * resume() continues it to the losses of an uninterrupted run; stop({ save: true }) ends it with a
 * checkpoint that resumes to those losses; the events come in order; an error is emitted and rejects.
 * The reference losses are those of an uninterrupted train() of the same run.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { Trainer, TrainingError, type LogRecord, type TrainerOptions } from '../../src/train/trainer.js';
import type { TrainData } from '../../src/data/example.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';
import { FIXTURE, writeRandomLlama } from '../helpers/random-model.js';

const DATA = byteData(32, 48, 4);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-events-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function trainer(o: TrainerOptions, dir = FIXTURE, data: TrainData = DATA): Trainer {
  const trainType = o.trainType ?? 'lora';
  return new Trainer(prepareFolder(dir, trainType, cpuBackend()), data, {
    trainType,
    batchSize: 2,
    optimizer: { name: 'adamw', lr: 1e-2 },
    lora: { rank: 4, alpha: 8, dropout: 0.1 },
    seed: 5,
    ...o,
  });
}

function uninterrupted(steps: number): number[] {
  const t = trainer({ maxSteps: steps });
  try {
    return t.train().losses;
  } finally {
    t.dispose();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** GET `url`; resolves with the time (performance.now()) the whole answer had arrived. */
function answeredAt(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(performance.now()));
      })
      .on('error', reject);
  });
}

describe('Trainer events, pause and stop', () => {
  it('an HTTP server in this process answers a request made during a long step of trainAsync (not of train())', async () => {
    // a step of a few hundred ms here: hidden 256, 2 blocks, batch × 128 tokens (a faster machine
    // doubles the batch until a step takes 150 ms)
    const model = writeRandomLlama(
      path.join(tmp, 'wide'),
      {
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: 4,
        head_dim: 32,
        max_position_embeddings: 256,
      },
      7,
    );
    const server = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    /** Three steps; a request 20 ms into step 2. Times from the end of step 1. */
    const run = async (mode: 'train' | 'trainAsync', batchSize: number) => {
      const t = trainer(
        { maxSteps: 3, batchSize, lora: { rank: 4, alpha: 8 } },
        model,
        byteData(128, 3 * batchSize, 0),
      );
      try {
        const stepAt: number[] = [];
        let sent = 0;
        let answer: Promise<number> | null = null; // the request's, once its timer fired
        t.on('step', (r) => {
          stepAt[r.step] = performance.now();
          if (r.step === 1)
            answer = new Promise((resolve) =>
              setTimeout(() => {
                sent = performance.now();
                resolve(answeredAt(url));
              }, 20),
            );
        });
        if (mode === 'train') t.train();
        else await t.trainAsync();
        const got = await answer!;
        const [t1, step2, step3] = [stepAt[1]!, stepAt[2]! - stepAt[1]!, stepAt[3]! - stepAt[1]!];
        console.log(
          `${mode}, batch ${batchSize}: step 2 took ${step2.toFixed(0)} ms; the request sent ${(sent - t1).toFixed(0)} ms into it was answered at ${(got - t1).toFixed(0)} ms`,
        );
        return { step2, step3, sent: sent - t1, got: got - t1 };
      } finally {
        t.dispose();
      }
    };
    try {
      let batch = 2;
      let a = await run('trainAsync', batch);
      while (a.step2 < 150 && batch < 32) a = await run('trainAsync', (batch *= 2));
      assert.ok(a.step2 >= 150, `step 2 took ${a.step2} ms: too short to tell`);
      assert.ok(a.sent < a.step2, 'the timer fired only after the step');
      assert.ok(a.got < a.step2, `answered ${a.got - a.step2} ms after the step ended`);
      // the blocking loop: the timer could not even fire before the run ended
      const b = await run('train', batch);
      assert.ok(b.sent > b.step3, 'the blocking run let a timer fire');
    } finally {
      server.close();
    }
  });

  for (const offThread of [true, false])
    it(`pause() holds the run (no step while paused); resume() continues to the losses of an uninterrupted run (offThread ${offThread})`, async () => {
      const expected = uninterrupted(6);
      const t = trainer({ maxSteps: 6 });
      try {
        const stepAt: number[] = [];
        let [pausedAt, resumedAt] = [0, 0];
        t.on('step', (r) => {
          stepAt[r.step] = performance.now();
          if (r.step !== 2) return;
          t.pause();
          pausedAt = performance.now();
          setTimeout(() => {
            resumedAt = performance.now();
            t.resume();
          }, 300);
        });
        const result = await t.trainAsync({ offThread });
        assert.equal(result.aborted, false);
        assert.deepEqual(result.losses, expected);
        const during = stepAt.filter((s) => s > pausedAt && s < resumedAt);
        assert.deepEqual(during, [], 'steps ran while paused');
        assert.ok(stepAt[3]! >= resumedAt, 'step 3 ended before resume()');
        assert.ok(resumedAt - pausedAt >= 290, `paused for ${resumedAt - pausedAt} ms`);
      } finally {
        t.dispose();
      }
    });

  it('stop({ save: true }) ends the run with checkpoint-N of the step reached, which resumes to the uninterrupted losses', async () => {
    const expected = uninterrupted(6);
    const out = path.join(tmp, 'stop');
    const a = trainer({ maxSteps: 6, outputDir: out });
    a.on('step', (r) => {
      if (r.step === 3) a.stop({ save: true });
    });
    const first = await a.trainAsync();
    a.dispose();
    assert.equal(first.aborted, true);
    assert.equal(first.steps, 3);
    assert.deepEqual(first.losses, expected.slice(0, 3));
    assert.deepEqual(readdirSync(out), ['checkpoint-3']);

    const b = trainer({ maxSteps: 6 });
    try {
      b.loadCheckpoint(path.join(out, 'checkpoint-3'));
      const rest = await b.trainAsync();
      assert.equal(rest.steps, 6);
      assert.deepEqual(rest.losses, expected.slice(3));
    } finally {
      b.dispose();
    }
  });

  it('stop({ save: false }) writes nothing; stop({ save: true }) without an outputDir is refused', async () => {
    const out = path.join(tmp, 'nosave');
    const t = trainer({ maxSteps: 6, outputDir: out });
    try {
      t.on('step', (r) => {
        if (r.step === 2) t.stop({ save: false });
      });
      const r = await t.trainAsync();
      assert.equal(r.steps, 2);
      assert.ok(!existsSync(out) || readdirSync(out).length === 0);
    } finally {
      t.dispose();
    }
    const u = trainer({ maxSteps: 2 });
    try {
      assert.throws(
        () => u.stop({ save: true }),
        (e: unknown) => e instanceof ConfigError && /outputDir/.test(e.message),
      );
    } finally {
      u.dispose();
    }
  });

  it('events arrive in order: each record as log then as its kind, evaluations and checkpoints after their step, end last', async () => {
    const out = path.join(tmp, 'order');
    const t = trainer({ maxSteps: 4, evalEvery: 2, saveEvery: 2, outputDir: out });
    try {
      const seen: string[] = [];
      const on = (name: 'step' | 'eval' | 'checkpoint' | 'log') =>
        t.on(name, (r: LogRecord) => seen.push(`${name}:${r.kind}:${r.step}`));
      for (const name of ['step', 'eval', 'checkpoint', 'log'] as const) on(name);
      t.on('end', (r) => seen.push(`end:${r.steps}`));
      const result = await t.trainAsync();
      const expected: string[] = [];
      for (let s = 1; s <= 4; s++) {
        expected.push(`log:step:${s}`, `step:step:${s}`);
        if (s % 2 === 0)
          expected.push(
            `log:eval:${s}`,
            `eval:eval:${s}`,
            `log:checkpoint:${s}`,
            `checkpoint:checkpoint:${s}`,
          );
      }
      expected.push('end:4');
      assert.deepEqual(seen, expected);
      assert.equal(result.evals.length, 2);
    } finally {
      t.dispose();
    }
  });

  it('an error during training is emitted as error and rejects the run (no end)', async () => {
    const t = trainer({
      trainType: 'full',
      maxSteps: 30,
      maxGradNorm: 0,
      optimizer: { name: 'sgd', lr: 1e30 },
    });
    try {
      const errors: Error[] = [];
      let ended = false;
      t.on('error', (e) => errors.push(e));
      t.on('end', () => (ended = true));
      let thrown: unknown = null;
      await t.trainAsync().catch((e: unknown) => (thrown = e));
      assert.ok(thrown instanceof TrainingError, String(thrown));
      assert.match(thrown.message, /training stopped at step \d+/);
      assert.deepEqual(errors, [thrown]);
      assert.equal(ended, false);
    } finally {
      t.dispose();
    }
  });

  it('pause() during the blocking train() is refused (it cannot wait); a paused trainer starts no step until resumed', async () => {
    const t = trainer({ maxSteps: 3 });
    try {
      t.on('step', () => t.pause());
      assert.throws(
        () => t.train(),
        (e: unknown) => e instanceof ConfigError && /trainAsync/.test(e.hint ?? ''),
      );
      t.removeAllListeners('step');
      t.pause();
      const steps: number[] = [];
      t.on('step', (r) => steps.push(r.step));
      const run = t.trainAsync();
      await sleep(100);
      assert.deepEqual(steps, []);
      t.resume();
      const r = await run;
      assert.equal(r.steps, 3);
    } finally {
      t.dispose();
    }
  });
});
