/**
 * A full disk (ENOSPC) while qtune writes: one line naming the file, exit 2, and no temporary file
 * left behind. The full disk is a 64 KiB tmpfs, which needs root and a kernel that lets this
 * container mount one; elsewhere the test is skipped with the reason. (Other file-system mistakes,
 * a folder for a file, /dev/null or a path under /proc as output folder, are fuzzed in
 * tests/robust/fuzz-targets.ts, target cliPaths.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FileSystemError } from '../../src/errors.js';
import { writeFileAtomic } from '../../src/io/atomic.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-fs-errors-'));
const full = path.join(tmp, 'full');
mkdirSync(full);
const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', full], { encoding: 'utf8' });
const skip =
  mount.status === 0 ? false : `cannot mount a tmpfs here: ${(mount.stderr || String(mount.error)).trim()}`;
if (skip !== false) console.log(`# skipping the full-disk cases: ${skip}`);

describe('a full disk is one line naming the file', { skip }, () => {
  let model: string;
  before(() => {
    model = path.join(tmp, 'model');
    createTinyModel(model, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
  });
  after(() => {
    spawnSync('umount', [full]);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('writeFileAtomic: a FileSystemError ENOSPC naming the file; no temporary file is left', () => {
    const file = path.join(full, 'big.bin');
    assert.throws(
      () => writeFileAtomic(file, [new Uint8Array(256 * 1024)]),
      (e: unknown) =>
        e instanceof FileSystemError &&
        e.sysCode === 'ENOSPC' &&
        e.message === `${file} cannot be written: the disk is full (free disk space or choose another disk)`,
    );
    assert.deepEqual(readdirSync(full), []);
  });

  it('qtune train saving a checkpoint onto a full disk: exit 2, one line, no half-written checkpoint', () => {
    const out = path.join(full, 'run');
    const r = qtune(
      [
        ...tinyTrainArgs(model, out),
        ...['--max_steps', '2', '--save_steps', '1', '--eval_steps', '0', '--batch_size', '1'],
        ...['--gradient_accumulation_steps', '1'],
      ],
      { QTUNE_THREADS: '1' },
    );
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('qtune: error: '));
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /cannot be written: the disk is full/);
    assert.ok(!/^\s+at /m.test(r.stderr), r.stderr);
    // an earlier checkpoint may have fitted; the one that did not left no temporary folder
    const left = readdirSync(out);
    assert.deepEqual(
      left.filter((f) => /\.(tmp|old)-/.test(f)),
      [],
      `left: ${left.join(', ')}`,
    );
    for (const c of left.filter((f) => f.startsWith('checkpoint-')))
      assert.ok(readdirSync(path.join(out, c)).includes('trainer_state.json'), `${c} is incomplete`);
  });
});
