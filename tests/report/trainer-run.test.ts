/**
 * The report loggers on a real run: the Trainer (LoRA on the parity fixture's Llama, Moby Dick as
 * bytes) logs into createRunLoggers; metrics.jsonl, the event file and the loss chart follow it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { createRunLoggers } from '../../src/report/logger.js';
import { Trainer, prepareModelWeights } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData } from '../helpers/finetune.js';
import { decodeEvent, readTfRecords } from './decode.js';
import { TextCollector } from './records.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-report-run-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('report loggers on a real training run', () => {
  it('records every step and evaluation of Trainer.train()', async () => {
    const prepared = prepareModelWeights(FIXTURE, { trainType: 'lora', backend: cpuBackend() });
    const out = path.join(tmp, 'out');
    const console = new TextCollector();
    const run = await createRunLoggers({
      outputDir: out,
      logTo: ['tensorboard'],
      totalSteps: 6,
      stream: console,
    });
    const trainer = new Trainer(prepared, byteData(32, 24, 4), {
      trainType: 'lora',
      batchSize: 2,
      maxSteps: 6,
      evalEvery: 3,
      optimizer: { name: 'adamw', lr: 1e-2 },
      seed: 3,
      onLog: (r) => run.log(r),
    });
    try {
      const result = trainer.train();
      await run.close(result);
      const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
        .trimEnd()
        .split('\n')
        .map(
          (l) =>
            JSON.parse(l) as { kind: string; step: number; loss: number; memory?: { engine_bytes: number } },
        );
      assert.deepEqual(
        rows.map((r) => `${r.kind}${r.step}`),
        ['step1', 'step2', 'step3', 'eval3', 'step4', 'step5', 'step6', 'eval6'],
      );
      assert.deepEqual(
        rows.filter((r) => r.kind === 'step').map((r) => r.loss),
        result.losses,
      );
      assert.ok(rows[0]!.memory!.engine_bytes > 0);
      const file = readdirSync(path.join(out, 'runs'))[0]!;
      const events = readTfRecords(readFileSync(path.join(out, 'runs', file))).map(decodeEvent);
      const evalLoss = events.flatMap((e) =>
        e.values.filter((v) => v.tag === 'eval/loss').map((v) => [e.step, v.value]),
      );
      assert.deepEqual(
        evalLoss,
        result.evals.map((e) => [e.step, Math.fround(e.loss)]),
      );
      assert.ok(readFileSync(path.join(out, 'loss.png')).length > 1000);
      assert.match(readFileSync(path.join(out, 'loss.svg'), 'utf8'), /id="validation-loss"/);
      assert.match(console.text, /step 1\/6 .*\n(.*\n)*eval {2}step 3 .*\n(.*\n)*done: 6 steps/);
    } finally {
      trainer.dispose();
    }
  });
});
