/**
 * A trainer killed with SIGKILL while it writes a checkpoint loses nothing that was saved: the
 * previous checkpoint still loads, `resume_from_checkpoint: latest` ignores the half-written one
 * (and the resumed run removes it), and the resumed run finishes with exactly the losses and the
 * adapter of a run that was never interrupted.
 *
 * The kill lands inside a write by construction: the test watches the output folder (inotify) for
 * the checkpoint's temporary folder and then that folder for the optimizer state's file (the weights
 * are written by then), stops the trainer with SIGSTOP at that event, and kills it only if the folder
 * is still there, i.e. the write has not reached its final rename; otherwise it lets the trainer go
 * on (SIGCONT) and waits for the next checkpoint.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  watch,
  type FSWatcher,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { Trainer } from '../../src/train/trainer.js';
import { BIN, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-robust-kill-'));
const tiny = path.join(tmp, 'tiny');
after(() => rmSync(tmp, { recursive: true, force: true }));

const STEPS = 8;

function args(out: string): string[] {
  return [
    ...tinyTrainArgs(tiny, out),
    ...['--max_steps', String(STEPS), '--save_steps', '1', '--eval_steps', '0', '--val_size', '0'],
    ...['--context_length', '64', '--max_samples', '24', '--batch_size', '2'],
    ...['--gradient_accumulation_steps', '1', '--logging_steps', '1', '--threads', '1'],
  ];
}

/** The loss of every step in metrics.jsonl (a later row of a step, from a resumed run, wins). */
function losses(out: string): Map<number, number> {
  const m = new Map<number, number>();
  for (const line of readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')) {
    const row = JSON.parse(line) as { kind: string; step: number; loss: number };
    if (row.kind === 'step') m.set(row.step, row.loss);
  }
  return m;
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Waits until the process is stopped (state T in /proc/PID/stat): it runs no further instruction. */
function waitStopped(pid: number): void {
  for (let i = 0; i < 2000; i++) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (/^\d+ \(.*\) [Tt] /.test(stat)) return;
    sleepMs(1);
  }
  throw new Error(`process ${pid} did not stop`);
}

/**
 * Runs `qtune train` into `out` and SIGKILLs it while it writes checkpoint-N (N ≥ minStep): after the
 * trainable weights are in the temporary folder, as the optimizer state is being written. Resolves
 * with N and what the half-written folder held at that moment.
 */
function killDuringCheckpoint(
  out: string,
  minStep: number,
): Promise<{ step: number; folder: string; held: string[] }> {
  mkdirSync(out, { recursive: true });
  const child = spawn(process.execPath, [BIN, ...args(out)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdout.resume();
  let caught: { step: number; folder: string; held: string[] } | null = null;
  let inner: FSWatcher | null = null;
  /** Stops the trainer; true when `folder` still exists then (the write has not finished). */
  const stopInside = (folder: string): boolean => {
    child.kill('SIGSTOP');
    waitStopped(child.pid!);
    if (existsSync(folder)) return true;
    child.kill('SIGCONT'); // this write finished before the stop: wait for the next one
    return false;
  };
  const outer = watch(out, (_event, name) => {
    const m = name === null ? null : /^checkpoint-(\d+)\.tmp-\d+$/.exec(name);
    if (caught !== null || m === null || Number(m[1]) < minStep) return;
    const folder = path.join(out, name!);
    if (!stopInside(folder)) return;
    // stopped right after the folder was made: watch inside it, then let the write go on
    inner?.close();
    inner = watch(folder, (_e, file) => {
      if (caught !== null || file === null || !file.startsWith('optimizer.safetensors')) return;
      if (!stopInside(folder)) return;
      caught = { step: Number(m[1]), folder, held: readdirSync(folder) };
      child.kill('SIGKILL');
    });
    child.kill('SIGCONT');
  });
  return new Promise((resolve, reject) => {
    child.on('close', (code, signal) => {
      outer.close();
      inner?.close();
      if (caught !== null && signal === 'SIGKILL') resolve(caught);
      else
        reject(
          new Error(
            `the run ended (code ${code}, ${signal}) before a checkpoint write was caught: ${stderr}`,
          ),
        );
    });
  });
}

describe('SIGKILL during a checkpoint write', () => {
  before(() => {
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
  });

  it('keeps the previous checkpoint loadable, and resume finishes with the losses of an uninterrupted run', async (t) => {
    if (process.platform !== 'linux') {
      t.skip('needs Linux: the test reads /proc to see the trainer stopped before it kills it');
      return;
    }
    const whole = path.join(tmp, 'whole');
    const r = qtune(args(whole));
    assert.equal(r.code, 0, r.stderr);
    const reference = losses(whole);
    assert.equal(reference.size, STEPS);

    const out = path.join(tmp, 'killed');
    const killed = await killDuringCheckpoint(out, 3);
    const k = killed.step;
    console.log(`killed while writing checkpoint-${k}; its folder held [${killed.held.join(', ')}]`);
    assert.ok(killed.held.includes('trainable.safetensors'), 'the kill came before the weights were written');
    const previous = path.join(out, `checkpoint-${k - 1}`);
    assert.ok(existsSync(killed.folder), 'the half-written folder is gone');
    assert.ok(
      !existsSync(path.join(out, `checkpoint-${k}`)),
      `checkpoint-${k} exists although its write was killed`,
    );

    // the previous checkpoint loads, and holds what the uninterrupted run saved at that step
    const saved = Trainer.checkpointAdapter(previous);
    const same = Trainer.checkpointAdapter(path.join(whole, `checkpoint-${k - 1}`));
    assert.ok(saved.modules.size > 0);
    for (const [name, m] of same.modules) {
      assert.deepEqual(saved.modules.get(name)!.A, m.A, `${name}.lora_A`);
      assert.deepEqual(saved.modules.get(name)!.B, m.B, `${name}.lora_B`);
    }

    // resume from "latest": the complete checkpoint-(k-1), not the half-written one, which is removed
    const resumed = qtune([...args(out), '--resume_from_checkpoint', 'latest']);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stdout, new RegExp(`resumed from .*checkpoint-${k - 1} at step ${k - 1}`));
    assert.ok(!existsSync(killed.folder), `${killed.folder} was left behind`);
    assert.deepEqual(
      readdirSync(out)
        .filter((d) => d.startsWith('checkpoint-'))
        .sort((a, b) => Number(a.slice(11)) - Number(b.slice(11))),
      Array.from({ length: STEPS }, (_, i) => `checkpoint-${i + 1}`),
    );
    const after = losses(out);
    for (let s = 1; s <= STEPS; s++) assert.equal(after.get(s), reference.get(s), `loss of step ${s}`);
    assert.deepEqual(
      readFileSync(path.join(out, 'adapter_model.safetensors')),
      readFileSync(path.join(whole, 'adapter_model.safetensors')),
      'the final adapters differ',
    );
  });
});
