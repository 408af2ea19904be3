/**
 * Resuming with changed settings, on the parity fixture's Llama fed Moby Dick as bytes (as
 * trainer.test.ts): each changed setting (lr, schedule, max_steps, batch size, accumulation, seed,
 * LoRA alpha, precision) is returned and logged as a `resume` record and training goes on with it;
 * the LoRA rank, target modules and the optimizer are refused with a ResumeError naming the setting
 * and both values; other data is refused unless resumeIgnoreDataChange; a checkpoint written before
 * settings and the data fingerprint were recorded resumes as before.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError, ResumeError } from '../../src/errors.js';
import type { TrainData } from '../../src/data/example.js';
import { Trainer, type LogRecord, type TrainerOptions } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-resume-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const DATA: TrainData = byteData(32, 24, 4);

const BASE: TrainerOptions & { trainType: string } = {
  trainType: 'lora',
  batchSize: 2,
  gradientAccumulationSteps: 1,
  maxSteps: 2,
  optimizer: { name: 'adamw', lr: 2e-4 },
  lora: { rank: 4, alpha: 8 },
  seed: 3,
};

function trainer(o: Partial<TrainerOptions> = {}, data: TrainData = DATA): Trainer {
  const opts = { ...BASE, ...o };
  return new Trainer(
    prepareFolder(FIXTURE, opts.trainType, cpuBackend(), opts.precision ?? 'fp32'),
    data,
    opts,
  );
}

/** Resumes `ckpt` with options `o`: the changes returned, the resume records logged, the step reached. */
function resume(ckpt: string, o: Partial<TrainerOptions>, data?: TrainData) {
  const records: LogRecord[] = [];
  const t = trainer({ ...o, onLog: (r) => records.push(r) }, data);
  try {
    const changes = t.loadCheckpoint(ckpt);
    return { changes, records: records.filter((r) => r.kind === 'resume'), step: t.globalStep, t };
  } catch (e) {
    t.dispose();
    throw e;
  }
}

let ckpt = '';
before(() => {
  const t = trainer();
  try {
    t.train();
    ckpt = t.saveCheckpoint(path.join(tmp, 'run', 'checkpoint-2'));
  } finally {
    t.dispose();
  }
});

describe('resume with changed settings', () => {
  it('the same settings: nothing reported', () => {
    const r = resume(ckpt, {});
    r.t.dispose();
    assert.deepEqual(r.changes, []);
    assert.deepEqual(r.records, []);
    assert.equal(r.step, 2);
  });

  it('each changed setting is one line, returned and logged as a resume record; training goes on', () => {
    const r = resume(ckpt, {
      optimizer: { name: 'adamw', lr: 1e-4 },
      schedule: { name: 'cosine', warmup_steps: 1 },
      maxSteps: 4,
      batchSize: 1,
      gradientAccumulationSteps: 2,
      seed: 5,
      lora: { rank: 4, alpha: 16, dropout: 0.1 },
      maxGradNorm: 0.5,
    });
    try {
      assert.deepEqual(
        r.changes.map((c) => c.line),
        [
          'lr changed 2e-4 -> 1e-4',
          'lr_scheduler changed constant -> cosine',
          'warmup_steps changed 0 -> 1',
          'max_steps changed 2 -> 4',
          'batch_size changed 2 -> 1',
          'gradient_accumulation_steps changed 1 -> 2',
          'seed changed 3 -> 5',
          'lora_alpha changed 8 -> 16',
          'lora_dropout changed 0 -> 0.1',
          'max_grad_norm changed 1 -> 0.5',
        ],
      );
      assert.deepEqual(
        r.changes.find((c) => c.setting === 'lr'),
        { setting: 'lr', checkpoint: '2e-4', run: '1e-4', line: 'lr changed 2e-4 -> 1e-4' },
      );
      assert.deepEqual(
        r.records.map((x) => [x.step, x.message]),
        r.changes.map((c) => [2, c.line]),
      );
      const result = r.t.train();
      assert.equal(result.steps, 4);
      assert.equal(result.losses.length, 2);
      assert.ok(result.losses.every(Number.isFinite), String(result.losses));
    } finally {
      r.t.dispose();
    }
  });

  it('another precision: reported, and the loss scale is the new run’s', () => {
    const fp16 = trainer({ precision: 'fp16', maxSteps: 1 });
    let dir: string;
    try {
      fp16.train();
      assert.ok(fp16.currentLossScale > 1);
      dir = fp16.saveCheckpoint(path.join(tmp, 'fp16', 'checkpoint-1'));
    } finally {
      fp16.dispose();
    }
    const r = resume(dir, { maxSteps: 1 });
    r.t.dispose();
    assert.deepEqual(
      r.changes.map((c) => c.line),
      ['precision changed fp16 -> fp32'],
    );
    assert.equal(r.t.currentLossScale, 1);
  });

  for (const [what, o, setting, values, line] of [
    [
      'the LoRA rank',
      { lora: { rank: 8, alpha: 8 } },
      'lora_rank',
      ['4', '8'],
      /lora_rank 4, this run has 8/,
    ],
    [
      'the target modules',
      { lora: { rank: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'] } },
      'lora_target_modules',
      ['down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj', 'q_proj,v_proj'],
      /lora_target_modules down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj, this run has q_proj,v_proj/,
    ],
    [
      'the optimizer',
      { optimizer: { name: 'sgd' as const, lr: 2e-4 } },
      'optimizer',
      ['adamw', 'sgd'],
      /optimizer adamw, this run has sgd \(its optimizer state cannot be carried over/,
    ],
  ] as const) {
    it(`${what} cannot change: a ResumeError naming it and both values`, () => {
      assert.throws(
        () => resume(ckpt, o),
        (e: unknown) =>
          e instanceof ResumeError &&
          e instanceof ConfigError &&
          e.setting === setting &&
          e.checkpointValue === values[0] &&
          e.runValue === values[1] &&
          line.test(e.message) &&
          !e.message.includes('\n'),
      );
    });
  }
});

describe('resume on other data', () => {
  const other: TrainData = { train: byteData(32, 24, 4).train.slice(0, 20), source: 'other.jsonl' };

  it('is refused with one line naming both fingerprints and the fix', () => {
    assert.throws(
      () => resume(ckpt, {}, other),
      (e: unknown) =>
        e instanceof ResumeError &&
        e.setting === 'dataset' &&
        /^checkpoint .*checkpoint-2 was trained on other data: \(24 examples, sha256 [0-9a-f]{12}\); this run has other\.jsonl \(20 examples, sha256 [0-9a-f]{12}\) \(.*resume_ignore_data_change: true \(Trainer option resumeIgnoreDataChange\)/.test(
          e.message,
        ),
    );
  });

  it('resumeIgnoreDataChange goes on with the new data, with a line saying so', () => {
    const r = resume(ckpt, { resumeIgnoreDataChange: true, maxSteps: 3 }, other);
    try {
      assert.equal(r.changes.length, 2);
      assert.match(r.changes[0]!.line, /^max_steps changed 2 -> 3$/);
      assert.match(
        r.changes[1]!.line,
        /^dataset changed \(24 examples, sha256 [0-9a-f]{12}\) -> other\.jsonl \(20 examples, sha256 [0-9a-f]{12}\); going on with the new data \(resume_ignore_data_change\)$/,
      );
      assert.equal(r.t.train().steps, 3);
    } finally {
      r.t.dispose();
    }
  });

  it('the same examples in another order: not a change', () => {
    const shuffled: TrainData = { train: [...DATA.train].reverse(), validation: DATA.validation! };
    const r = resume(ckpt, {}, shuffled);
    r.t.dispose();
    assert.deepEqual(r.changes, []);
  });

  it('a checkpoint written before settings and the data fingerprint were recorded resumes as before', () => {
    const file = path.join(ckpt, 'trainer_state.json');
    const state = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    assert.equal(typeof (state['data'] as { fingerprint?: unknown }).fingerprint, 'string');
    const old = path.join(tmp, 'old', 'checkpoint-2');
    cpSync(ckpt, old, { recursive: true });
    delete state['data'];
    delete state['settings'];
    writeFileSync(path.join(old, 'trainer_state.json'), JSON.stringify(state, null, 2));
    const r = resume(old, { maxGradNorm: 0.5 }, other); // neither is recorded: neither is compared
    try {
      assert.deepEqual(r.changes, []);
      assert.equal(r.step, 2);
    } finally {
      r.t.dispose();
    }
  });
});
