/**
 * A full disk (ENOSPC) while qtune writes: one line naming the file, exit 2, and no temporary file
 * left behind. The full disk is a 64 KiB tmpfs, which needs root and a kernel that lets this
 * container mount one; elsewhere the test is skipped with the reason. A disk that fills while a run
 * saves its checkpoint (an 8 MiB tmpfs, room for the outputs and their tokenizer files, filled up to a few pages) keeps the checkpoint it would
 * replace byte for byte, and the run resumes from it once there is room; one that fills while the
 * adapter is written says that the last checkpoint holds the weights, and a resume writes them. A
 * read-only output_dir, or one under a read-only folder, is one line too: a read-only tmpfs mount,
 * and a folder of mode 0555 (skipped as root, whom the mode does not stop). (Other file-system
 * mistakes, a folder for a file, /dev/null or a path under /proc as output folder, are fuzzed in
 * tests/robust/fuzz-targets.ts, target cliPaths.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FileSystemError } from '../../src/errors.js';
import { writeFileAtomic } from '../../src/io/atomic.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { BIN, qtune, tinyTrainArgs } from '../helpers/cli.js';

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

/** qtune train of the tiny model into `out`: checkpoints every step, 23 examples of context 64. */
function trainInto(model: string, out: string, more: string[]) {
  return qtune(
    [
      ...tinyTrainArgs(model, out),
      ...[
        '--save_steps',
        '1',
        '--eval_steps',
        '0',
        '--batch_size',
        '2',
        '--gradient_accumulation_steps',
        '1',
      ],
      ...['--context_length', '64', '--max_samples', '24', ...more],
    ],
    { QTUNE_THREADS: '1' },
  );
}

/** The one `qtune: error:` line of a run that failed with exit code 2, with no stack. */
function errorLine(r: { code: number; stderr: string }): string {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('qtune: error: '));
  assert.equal(lines.length, 1, r.stderr);
  assert.ok(!/^\s+at /m.test(r.stderr), r.stderr);
  return lines[0]!;
}

/** The pages (file-system blocks) the files of `dir` take. */
function pages(dir: string, block: number): number {
  return readdirSync(dir).reduce((n, f) => n + Math.ceil(statSync(path.join(dir, f)).size / block), 0);
}

/** Fills the file system of `dir` until `leave` blocks are free; returns the filler file. */
function fillUpTo(dir: string, leave: number): string {
  const filler = path.join(dir, 'filler.bin');
  rmSync(filler, { force: true });
  const { bavail, bsize } = statfsSync(dir);
  writeFileSync(filler, new Uint8Array((bavail - leave) * bsize));
  assert.equal(statfsSync(dir).bavail, leave);
  return filler;
}

const disk = path.join(tmp, 'disk');
const ro = path.join(tmp, 'ro-mount');
// after every suite: the mounts (each one that is still there), then the folder
after(() => {
  for (const dir of [full, disk, ro]) spawnSync('umount', [dir]);
  rmSync(tmp, { recursive: true, force: true });
});
mkdirSync(disk);
const mountDisk = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', disk], { encoding: 'utf8' });
const skipDisk =
  mountDisk.status === 0
    ? false
    : `cannot mount a tmpfs here: ${(mountDisk.stderr || String(mountDisk.error)).trim()}`;
if (skipDisk !== false) console.log(`# skipping the disk-fills-during-a-run cases: ${skipDisk}`);

describe('a disk that fills during a run keeps the last good checkpoint', { skip: skipDisk }, () => {
  let model: string;
  const out = path.join(disk, 'run');
  before(() => {
    model = path.join(tmp, 'model-2');
    createTinyModel(model, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
    const r = trainInto(model, out, ['--max_steps', '2']);
    assert.equal(r.code, 0, r.stderr);
  });

  it('a checkpoint that does not fit: one line, the one it would replace stays whole, the run resumes from it', () => {
    const ckpt = path.join(out, 'checkpoint-2');
    const before = new Map(readdirSync(ckpt).map((f) => [f, readFileSync(path.join(ckpt, f))]));
    // room for the lock file and the metrics rows, not for a checkpoint
    const filler = fillUpTo(disk, 2);
    const r = trainInto(model, out, [
      '--max_steps',
      '2',
      '--resume_from_checkpoint',
      path.join(out, 'checkpoint-1'),
    ]);
    assert.match(
      errorLine(r),
      new RegExp(
        `^qtune: error: checkpoint ${ckpt} cannot be written: the disk is full; the last good checkpoint ${out}/checkpoint-1 is kept \\(free disk space or choose an output_dir on another disk, then resume_from_checkpoint: latest\\)$`,
      ),
    );
    const left = readdirSync(out);
    assert.deepEqual(
      left.filter((f) => /\.(tmp|old)-/.test(f)),
      [],
      `left: ${left.join(', ')}`,
    );
    for (const [f, bytes] of before)
      assert.deepEqual(readFileSync(path.join(ckpt, f)), bytes, `${f} changed`);
    rmSync(filler);
    const again = trainInto(model, out, ['--max_steps', '3', '--resume_from_checkpoint', 'latest']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /resumed from .*checkpoint-2 at step 2/);
  });

  it('an adapter that does not fit: one line saying the last checkpoint holds the weights; a resume writes them', () => {
    const { bsize } = statfsSync(disk);
    const ckpt = pages(path.join(out, 'checkpoint-3'), bsize);
    const adapter = Math.ceil(statSync(path.join(out, 'adapter_model.safetensors')).size / bsize);
    assert.ok(adapter > 3, `the adapter takes ${adapter} pages`);
    // room for the next checkpoint (and the lock file, the metrics rows, a page to spare), not the adapter
    const filler = fillUpTo(disk, ckpt + 3);
    const r = trainInto(model, out, ['--max_steps', '4', '--resume_from_checkpoint', 'latest']);
    const last = path.join(out, 'checkpoint-4');
    assert.match(
      errorLine(r),
      new RegExp(
        `^qtune: error: the trained adapter could not be written: ${out}/adapter_model\\.safetensors cannot be written: the disk is full \\(free disk space or choose another disk; ${last} holds the trained weights: then run again with resume_from_checkpoint: latest to write the adapter from it\\)$`,
      ),
    );
    assert.ok(readdirSync(last).includes('trainer_state.json'));
    assert.deepEqual(
      readdirSync(out).filter((f) => /\.tmp-/.test(f)),
      [],
    );
    rmSync(filler);
    const again = trainInto(model, out, ['--max_steps', '4', '--resume_from_checkpoint', 'latest']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /resumed from .*checkpoint-4 at step 4/);
    assert.match(again.stdout, /wrote .*adapter_model\.safetensors/);
  });
});

describe('a read-only output_dir is one line naming it', () => {
  let model: string;
  before(() => {
    model = path.join(tmp, 'model-ro');
    createTinyModel(model, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
  });

  mkdirSync(ro);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', ro], { encoding: 'utf8' });
  const skipMount =
    m.status === 0 ? false : `cannot mount a read-only tmpfs here: ${(m.stderr || String(m.error)).trim()}`;
  if (skipMount !== false) console.log(`# skipping the read-only mount cases: ${skipMount}`);
  it(
    'on a read-only mount: the folder itself, and a folder to make under it (EROFS)',
    { skip: skipMount },
    () => {
      try {
        for (const out of [ro, path.join(ro, 'sub', 'run')])
          assert.equal(
            errorLine(trainInto(model, out, ['--max_steps', '1'])),
            `qtune: error: output_dir: ${out} is on a read-only file system (choose a path on a writable disk)`,
          );
      } finally {
        spawnSync('umount', [ro]);
      }
    },
  );

  // chmod 0555 stops writes only for a user other than root: as root, the case runs as the user
  // nobody (uid 65534) when nobody can run qtune here, and is skipped otherwise
  const locked = path.join(tmp, 'mode-0555');
  mkdirSync(locked);
  chmodSync(locked, 0o555);
  const asRoot = process.getuid?.() === 0;
  const nobody = { uid: 65534, gid: 65534 };
  let skipMode: string | false = false;
  if (asRoot) {
    chmodSync(tmp, 0o755); // mkdtemp's 0700 would keep nobody out of the model folder too
    const probe = spawnSync(process.execPath, [BIN, '--version'], { ...nobody, encoding: 'utf8' });
    // any failure: a folder above the clone that nobody may not enter reads as "Cannot find module"
    if (probe.error !== undefined || probe.status !== 0)
      skipMode = `running as root, whom mode 0555 does not stop, and the user nobody cannot run qtune here: ${(probe.stderr || String(probe.error)).trim().split('\n')[0]}`;
  }
  if (skipMode !== false) console.log(`# skipping the chmod 0555 cases: ${skipMode}`);
  it(
    'a folder of mode 0555: the folder itself, and a folder to make under it (EACCES)',
    { skip: skipMode },
    () => {
      for (const out of [locked, path.join(locked, 'sub', 'run')]) {
        const args = [...tinyTrainArgs(model, out), '--max_steps', '1'];
        const r = spawnSync(process.execPath, [BIN, ...args], {
          ...(asRoot ? nobody : {}),
          encoding: 'utf8',
          env: { ...process.env, QTUNE_THREADS: '1', HOME: tmp },
        });
        assert.equal(
          errorLine({ code: r.status ?? -1, stderr: r.stderr }),
          `qtune: error: output_dir: ${out} cannot be accessed: permission denied (choose a path you may write to)`,
        );
      }
    },
  );
});
