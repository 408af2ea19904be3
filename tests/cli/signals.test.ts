/**
 * Ctrl-C during `qtune train`, on the real CLI in a child process (tiny model, data/style.jsonl, a
 * max_steps it never reaches): SIGINT once a step line is out finishes the step, writes
 * checkpoint-N, prints the command that resumes and exits with 130; that exact command resumes at
 * step N, and SIGTERM stops it the same way with 143. Two SIGINTs in quick succession quit at once,
 * and every checkpoint-N left is whole (written to a temporary folder, then renamed); the next run
 * removes a half-written one. The output is waited for, never a fixed time.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { resumeCommand } from '../../src/cli/stop-on-signal.js';
import { BIN, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-signals-'));
const tiny = path.join(tmp, 'tiny-model');
after(() => rmSync(tmp, { recursive: true, force: true }));

const WAIT_MS = 240_000; // a slow, loaded machine
const LONG = [
  ...['--max_steps', '1000000', '--eval_steps', '0', '--context_length', '64', '--max_samples', '24'],
  ...['--batch_size', '2', '--gradient_accumulation_steps', '1', '--logging_steps', '1'],
];

/** A `qtune` child process whose output is collected, and waited on line by line. */
class Child {
  readonly proc;
  stdout = '';
  stderr = '';
  readonly done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: (() => void)[] = [];

  constructor(args: string[]) {
    this.proc = spawn(process.execPath, [BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, QTUNE_THREADS: '1' },
    });
    const seen = (): void => {
      for (const w of this.waiters.splice(0)) w();
    };
    this.proc.stdout.on('data', (d: Buffer) => {
      this.stdout += d.toString();
      seen();
    });
    this.proc.stderr.on('data', (d: Buffer) => {
      this.stderr += d.toString();
      seen();
    });
    this.done = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        seen();
        resolve({ code, signal });
      });
    });
  }

  get output(): string {
    return this.stdout + this.stderr;
  }

  /** Resolves with the first match of `pattern` in the output; fails after WAIT_MS or at the end. */
  async waitFor(pattern: RegExp): Promise<RegExpMatchArray> {
    const end = Date.now() + WAIT_MS;
    for (;;) {
      const m = pattern.exec(this.output);
      if (m !== null) return m;
      if (this.proc.exitCode !== null || this.proc.signalCode !== null || Date.now() > end)
        assert.fail(`no ${pattern} in the output:\n${this.output}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 1000);
      });
    }
  }
}

/** The words of a command line as a POSIX shell reads them (plain words and '...' quotes). */
function shellWords(line: string): string[] {
  return [...line.matchAll(/(?:[^\s']+|'[^']*')+/g)].map((m) =>
    m[0].replace(/'([^']*)'/g, '$1').replace(/'\\''/g, "'"),
  );
}

/** Asserts `dir` is a whole checkpoint of `step`: its state and both tensor files read back. */
function assertWhole(dir: string, step: number): void {
  const state = JSON.parse(readFileSync(path.join(dir, 'trainer_state.json'), 'utf8')) as { step: number };
  assert.equal(state.step, step, dir);
  for (const f of ['trainable.safetensors', 'optimizer.safetensors']) {
    const file = SafetensorsFile.open(path.join(dir, f));
    try {
      assert.ok(file.names().length > 0, `${dir}/${f} holds tensors`);
      for (const name of file.names()) file.readF32(name); // every tensor reads back whole
    } finally {
      file.close();
    }
  }
}

describe('qtune train: SIGINT and SIGTERM', { timeout: 4 * WAIT_MS }, () => {
  before(() => {
    createTinyModel(tiny, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
  });

  it('SIGINT: finishes the step, writes checkpoint-N, prints the resume command, exits 130; it resumes', async () => {
    const out = path.join(tmp, 'out-int');
    const run = new Child([...tinyTrainArgs(tiny, out), ...LONG, '--save_steps', '0']);
    await run.waitFor(/^step 2\/1000000 /m);
    run.proc.kill('SIGINT');
    const end = await run.done;
    assert.equal(end.code, 130, run.output);
    const [, step] = /^stopped by SIGINT at step (\d+) of 1000000; (.*) holds it$/m.exec(run.stdout) ?? [];
    assert.ok(step !== undefined, run.output);
    const n = Number(step);
    assert.ok(n >= 2, run.output);
    const checkpoint = path.join(out, `checkpoint-${n}`);
    assertWhole(checkpoint, n);
    assert.match(run.stderr, new RegExp(`^qtune: SIGINT: stopping after step ${n} with a checkpoint;`, 'm'));
    assert.ok(!existsSync(path.join(out, '.qtune-lock')), 'the lock is given back');
    assert.deepEqual(
      readdirSync(out).filter((f) => f.includes('.tmp-')),
      [],
      'no temporary folder is left',
    );
    const [, command] = /^resume with: (.*)$/m.exec(run.stdout) ?? [];
    assert.ok(command !== undefined, run.output);
    const words = shellWords(command);
    assert.match(readFileSync(path.join(out, 'train.log'), 'utf8'), /^resume with: qtune train /m);
    assert.deepEqual(words.slice(0, 2), ['qtune', 'train']);
    assert.deepEqual(words.slice(-2), ['--resume_from_checkpoint', checkpoint]);

    // the printed command, as it is: it resumes at step n; SIGTERM stops it the same way, with 143
    const resumed = new Child(words.slice(1));
    await resumed.waitFor(new RegExp(`^resumed from .*checkpoint-${n} at step ${n}$`, 'm'));
    await resumed.waitFor(new RegExp(`^step ${n + 1}/1000000 `, 'm'));
    resumed.proc.kill('SIGTERM');
    const end2 = await resumed.done;
    assert.equal(end2.code, 143, resumed.output);
    const [, step2] = /^stopped by SIGTERM at step (\d+) of 1000000;/m.exec(resumed.stdout) ?? [];
    assert.ok(Number(step2) > n, resumed.output);
    assertWhole(path.join(out, `checkpoint-${step2}`), Number(step2));
    // the resumed run's own command names the new checkpoint, once
    const [, command2] = /^resume with: (.*)$/m.exec(resumed.stdout) ?? [];
    assert.deepEqual(shellWords(command2!), [...words.slice(0, -1), path.join(out, `checkpoint-${step2}`)]);
  });

  it('two SIGINTs in quick succession quit at once; the checkpoints left are whole', async (t) => {
    const out = path.join(tmp, 'out-twice');
    // the default tiny model and 8 micro-batches a step (seconds a step here), a checkpoint at every
    // step; both signals come within step 2 (the pauses keep them apart: the kernel merges two that
    // come before the process runs), so the second is queued behind the first
    const slow = path.join(tmp, 'slow-model');
    createTinyModel(slow);
    const args = [...tinyTrainArgs(slow, out), ...LONG, '--context_length', '128', '--batch_size', '4'];
    args.push('--gradient_accumulation_steps', '8');
    const run = new Child([...args, '--save_steps', '1']);
    await run.waitFor(/^saved step 1 /m);
    await new Promise((resolve) => setTimeout(resolve, 500));
    run.proc.kill('SIGINT');
    await new Promise((resolve) => setTimeout(resolve, 200));
    run.proc.kill('SIGINT');
    const end = await run.done;
    // killed by the second (its default action), or told at once by the handler
    const atOnce =
      end.signal === 'SIGINT' ||
      (end.code === 130 && /^qtune: SIGINT again: quit at once;/m.test(run.stderr));
    assert.ok(atOnce, `${JSON.stringify(end)}\n${run.output}`);
    t.diagnostic(
      end.signal === null ? 'the handler quit at the end of the step' : 'the second signal killed it',
    );
    if (end.signal === null)
      assert.doesNotMatch(run.stdout, /^resume with:/m, 'it did not go on to stop as after one');
    const left = readdirSync(out);
    const steps = left.filter((f) => /^checkpoint-\d+$/.test(f)).map((f) => Number(f.slice(11)));
    assert.ok(steps.includes(1), left.join(', '));
    for (const s of steps) assertWhole(path.join(out, `checkpoint-${s}`), s);
    // a half-written checkpoint is only ever the killed process's temporary folder
    for (const f of left.filter((f) => f.includes('.tmp-') || f.includes('.old-')))
      assert.match(f, new RegExp(`^checkpoint-\\d+\\.(tmp|old)-${run.proc.pid}$`));
    // the next run takes over the lock, removes what was half-written, and resumes from the latest
    const last = Math.max(...steps);
    const next = qtune(
      [...args, '--save_steps', '1', '--max_steps', String(last + 1), '--resume_from_checkpoint', 'latest'],
      { QTUNE_THREADS: '1' },
      WAIT_MS,
    );
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stdout, new RegExp(`resumed from .*checkpoint-${last} at step ${last}`));
    assert.deepEqual(
      readdirSync(out).filter((f) => f.includes('.tmp-') || f.includes('.old-')),
      [],
    );
  });
});

describe('the resume command', () => {
  it("keeps the run's flags, drops its own resume_from_checkpoint in any spelling, quotes for the shell", () => {
    const argv = ['--config', "my run's.yaml", '--resume-from-checkpoint', 'latest', '--lr=1e-4'];
    argv.push('--resume_from_checkpoint=out/checkpoint-2', '--packing', '--resume_from_checkpoint');
    assert.equal(
      resumeCommand(argv, 'out/checkpoint-5'),
      "qtune train --config 'my run'\\''s.yaml' --lr=1e-4 --packing --resume_from_checkpoint out/checkpoint-5",
    );
  });
});
