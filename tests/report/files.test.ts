/**
 * The run's files through createRunLoggers: metrics.jsonl (complete lines while the run goes, the
 * issue's snake_case fields) and TensorBoard event files, read back with a TFRecord/protobuf decoder
 * written from the specifications, every CRC checked against a bitwise CRC-32C.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { createRunLoggers } from '../../src/report/logger.js';
import { crc32c, maskedCrc32c } from '../../src/report/tensorboard.js';
import { crc32cBitwise, decodeEvent, readTfRecords } from './decode.js';
import { MIB, TextCollector, resultOf, runRecords } from './records.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-report-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('CRC-32C', () => {
  it('matches the check value and a bitwise computation', () => {
    const check = new TextEncoder().encode('123456789');
    assert.equal(crc32c(check), 0xe3069283);
    assert.equal(crc32cBitwise(check), 0xe3069283);
    const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7919) & 0xff);
    assert.equal(crc32c(bytes), crc32cBitwise(bytes));
    assert.equal(maskedCrc32c(new Uint8Array(0)), (((0 >>> 15) | (0 << 17)) + 0xa282ead8) >>> 0);
  });
});

describe('createRunLoggers: metrics.jsonl and TensorBoard', () => {
  const out = path.join(tmp, 'run');
  const records = runRecords(10, 5);

  it('writes complete metrics.jsonl lines as the run goes, and event files TensorBoard reads', async () => {
    const console = new TextCollector();
    const run = await createRunLoggers({
      outputDir: out,
      logTo: ['tensorboard'],
      totalSteps: 10,
      stream: console,
    });
    for (const r of records.slice(0, 6)) run.log(r);
    // mid-run (as after a crash): every line there is whole
    const mid = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8');
    assert.ok(mid.endsWith('\n'));
    assert.equal(mid.trimEnd().split('\n').length, 6);
    for (const line of mid.trimEnd().split('\n')) JSON.parse(line);
    for (const r of records.slice(6)) run.log(r);
    await run.close(resultOf(records));

    // metrics.jsonl
    const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(rows.length, records.length);
    const first = rows[0]!;
    assert.deepEqual(Object.keys(first).sort(), [
      'epoch',
      'grad_norm',
      'kind',
      'loss',
      'lr',
      'memory',
      'step',
      'time',
      'tokens',
      'tokens_per_s',
    ]);
    assert.equal(first['step'], 1);
    assert.equal(first['loss'], 3 - 0.2);
    assert.equal(first['grad_norm'], 1.1);
    assert.equal(first['tokens_per_s'], 1001);
    assert.deepEqual(first['memory'], {
      engine_bytes: 10 * MIB,
      rss_bytes: 100 * MIB,
      peak_rss_bytes: 120 * MIB,
    });
    assert.ok(Math.abs((first['time'] as number) - Date.now() / 1000) < 60);
    const skip = rows.find((r) => r['kind'] === 'skip')!;
    assert.equal(skip['step'], 3);
    assert.match(skip['message'] as string, /overflowed/);
    const evals = rows.filter((r) => r['kind'] === 'eval');
    assert.deepEqual(
      evals.map((r) => [r['step'], r['loss'], r['perplexity']]),
      [
        [5, 2.9 - 0.75, Math.exp(2.9 - 0.75)],
        [10, 2.9 - 1.5, Math.exp(2.9 - 1.5)],
      ],
    );
    assert.equal(rows.at(-1)!['kind'], 'checkpoint');
    assert.equal(rows.at(-1)!['path'], '/tmp/out/checkpoint-10');

    // TensorBoard
    const files = readdirSync(path.join(out, 'runs'));
    assert.equal(files.length, 1);
    assert.match(files[0]!, /^events\.out\.tfevents\.\d{10}\.[^/]+$/);
    const events = readTfRecords(readFileSync(path.join(out, 'runs', files[0]!))).map(decodeEvent);
    assert.equal(events[0]!.fileVersion, 'brain.Event:2');
    assert.ok(Math.abs(events[0]!.wallTime - Date.now() / 1000) < 60);
    const scalars = events.slice(1);
    assert.equal(scalars.length, 12, 'ten steps and two evaluations; the checkpoint has no scalars');
    const series = (tag: string): [number, number][] =>
      scalars.flatMap((e) =>
        e.values.filter((v) => v.tag === tag).map((v): [number, number] => [e.step, v.value]),
      );
    const steps = records.filter((r) => r.kind === 'step' || r.kind === 'skip');
    assert.deepEqual(
      series('train/loss'),
      steps.map((r) => [r.step, Math.fround(r.loss!)]),
    );
    assert.deepEqual(
      series('train/lr'),
      steps.map((r) => [r.step, Math.fround(r.lr!)]),
    );
    assert.deepEqual(
      series('train/grad_norm'),
      steps.map((r) => [r.step, Math.fround(r.gradNorm!)]),
    );
    assert.deepEqual(
      series('train/tokens_per_s'),
      steps.map((r) => [r.step, r.tokensPerS]),
    );
    assert.deepEqual(series('eval/loss'), [
      [5, Math.fround(2.9 - 0.75)],
      [10, Math.fround(2.9 - 1.5)],
    ]);
    assert.deepEqual(
      series('eval/perplexity').map(([s]) => s),
      [5, 10],
    );
    assert.deepEqual(
      series('memory/engine_mib'),
      steps.map((r) => [r.step, 10 * r.step]),
    );
    assert.deepEqual(series('memory/peak_rss_mib')[0], [1, 120]);
    assert.deepEqual(series('train/skipped'), [[3, 1]]);

    // the loss chart, with no temporary files left beside it
    assert.ok(existsSync(path.join(out, 'loss.svg')));
    assert.ok(existsSync(path.join(out, 'loss.png')));
    assert.deepEqual(readdirSync(out).sort(), ['loss.png', 'loss.svg', 'metrics.jsonl', 'runs']);
    assert.match(console.text, /done: 10 steps/);
  });

  it('refuses an unknown log_to target', async () => {
    await assert.rejects(
      createRunLoggers({
        outputDir: path.join(tmp, 'x'),
        logTo: ['mlflow' as 'wandb'],
        totalSteps: 1,
        stream: false,
      }),
      (e: unknown) => e instanceof ConfigError && /log_to: "mlflow"/.test(e.message),
    );
  });
});
