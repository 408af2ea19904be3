/**
 * One run per output folder: a second `qtune train` into a folder a live run holds fails with one
 * line naming it; a stale lock is taken over; a folder with an earlier run is refused unless
 * overwrite_output_dir (which clears it) or a resume; resume "latest" on an empty folder fails before
 * metrics.jsonl is started.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { BIN, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-run-folder-'));
const tiny = path.join(tmp, 'tiny-model');
after(() => rmSync(tmp, { recursive: true, force: true }));

const QUICK = ['--max_steps', '2', '--eval_steps', '0', '--save_steps', '0', '--context_length', '64'];
const SMALL = [...QUICK, '--max_samples', '24'];

function oneLineError(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

describe('qtune train: one run per output_dir', () => {
  before(() => {
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
  });

  it('a second run into the folder of a running one fails with one line naming it (pid, since when)', async () => {
    const out = path.join(tmp, 'out-twice');
    // the first run trains long enough for the second to start while it holds the folder
    const first = spawn(
      process.execPath,
      [BIN, ...tinyTrainArgs(tiny, out), ...QUICK, '--max_steps', '400', '--max_samples', '24'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let firstErr = '';
    first.stderr.on('data', (d: Buffer) => (firstErr += d.toString()));
    const firstDone = new Promise<number>((resolve) => first.on('close', (code) => resolve(code ?? -1)));
    const lock = path.join(out, '.qtune-lock');
    for (let i = 0; i < 600 && !existsSync(lock); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(existsSync(lock), `the first run took no lock: ${firstErr}`);
    const second = qtune([...tinyTrainArgs(tiny, out), ...SMALL]);
    oneLineError(
      second,
      new RegExp(`is in use by another qtune train \\(pid ${first.pid} on .*, since \\d{4}-`),
    );
    first.kill('SIGTERM');
    await firstDone;
  });

  it('a lock whose process has ended is taken over', () => {
    const out = path.join(tmp, 'out-stale');
    mkdirSync(out);
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {
      encoding: 'utf8',
    });
    const lock = { pid: Number(dead.stdout), host: os.hostname(), started: '2026-01-01T00:00:00.000Z' };
    writeFileSync(path.join(out, '.qtune-lock'), JSON.stringify(lock));
    const r = qtune([...tinyTrainArgs(tiny, out), ...SMALL]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!existsSync(path.join(out, '.qtune-lock')), 'the lock is given back at the end');
  });

  it('a folder with an earlier run is refused; overwrite_output_dir clears it; a resume keeps it', () => {
    const out = path.join(tmp, 'out-used');
    const save = ['--save_steps', '1'];
    assert.equal(qtune([...tinyTrainArgs(tiny, out), ...SMALL, '--max_steps', '3', ...save]).code, 0);
    assert.ok(existsSync(path.join(out, 'checkpoint-3')));
    writeFileSync(path.join(out, 'notes.txt'), 'mine');
    oneLineError(
      qtune([...tinyTrainArgs(tiny, out), ...SMALL, ...save]),
      /output_dir: .*out-used already holds a run \(adapter.*checkpoint-.*\).*overwrite_output_dir: true/,
    );
    const r = qtune([...tinyTrainArgs(tiny, out), ...SMALL, ...save, '--overwrite_output_dir']);
    assert.equal(r.code, 0, r.stderr);
    const left = readdirSync(out);
    assert.ok(!left.includes('checkpoint-3'), `the old checkpoint is gone: ${left.join(', ')}`);
    assert.ok(left.includes('checkpoint-2'));
    assert.equal(
      readFileSync(path.join(out, 'notes.txt'), 'utf8'),
      'mine',
      'files qtune did not write are kept',
    );
    const steps = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { step?: number })
      .filter((m) => m.step !== undefined);
    assert.ok(steps.length > 0 && steps.every((m) => m.step! <= 2), 'metrics.jsonl holds the new run only');
    const resumed = qtune([
      ...tinyTrainArgs(tiny, out),
      ...SMALL,
      '--max_steps',
      '3',
      '--resume_from_checkpoint',
      'latest',
    ]);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stdout, /resumed from .*checkpoint-2 at step 2/);
  });

  it("context_length above the model's max_position_embeddings: one line with the limit", () => {
    const short = path.join(tmp, 'short-model');
    createTinyModel(short, {
      hiddenSize: 32,
      intermediateSize: 64,
      layers: 1,
      heads: 2,
      kvHeads: 1,
      maxPositionEmbeddings: 48,
    });
    oneLineError(
      qtune([...tinyTrainArgs(short, path.join(tmp, 'out-long')), ...SMALL]),
      /context_length: 64 is more than the 48 positions of .*short-model \(max_position_embeddings\) \(use context_length 48 or less\)/,
    );
  });

  it('resume_from_checkpoint: latest on an empty folder: one line, no metrics.jsonl', () => {
    const out = path.join(tmp, 'out-empty');
    mkdirSync(out);
    oneLineError(
      qtune([...tinyTrainArgs(tiny, out), ...SMALL, '--resume_from_checkpoint', 'latest']),
      /resume_from_checkpoint: latest, but .*out-empty has no checkpoint-N folder/,
    );
    assert.deepEqual(readdirSync(out), []);
    const missing = path.join(tmp, 'out-missing');
    oneLineError(
      qtune([...tinyTrainArgs(tiny, missing), ...SMALL, '--resume_from_checkpoint', 'latest']),
      /has no checkpoint-N folder/,
    );
    assert.ok(!existsSync(missing), 'a folder the failed run made is removed');
  });
});
