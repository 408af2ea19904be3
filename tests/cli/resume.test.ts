/**
 * `qtune train --resume_from_checkpoint` with changed settings, on the tiny model and
 * data/style.jsonl: each changed setting is a `resume:` line on stderr and a `kind: "resume"` row in
 * metrics.jsonl; a LoRA rank that differs is refused with one line naming both values (exit 2); a
 * changed dataset (or the same file giving other examples) is refused with one line naming both
 * fingerprints and the fix, and `--resume_ignore_data_change` goes on with a warning line.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { ROOT, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-cli-resume-'));
const tiny = path.join(tmp, 'tiny-model');
const out = path.join(tmp, 'out');
after(() => rmSync(tmp, { recursive: true, force: true }));

const QUICK = [
  ...['--eval_steps', '0', '--save_steps', '1', '--context_length', '64', '--max_samples', '24'],
  ...['--batch_size', '2', '--gradient_accumulation_steps', '1'],
];

function train(args: string[]): { code: number; stdout: string; stderr: string } {
  return qtune([...tinyTrainArgs(tiny, out), ...QUICK, ...args], { QTUNE_THREADS: '1' });
}

function oneLineError(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

describe('qtune train: resume with changed settings', () => {
  before(() => {
    createTinyModel(tiny, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
    const r = train(['--max_steps', '2']);
    assert.equal(r.code, 0, r.stderr);
  });

  it('each changed setting is a resume: line on stderr and a resume row in metrics.jsonl', () => {
    const r = train(['--max_steps', '3', '--lr', '1e-4', '--resume_from_checkpoint', 'latest']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /resumed from .*checkpoint-2 at step 2/);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('resume: '));
    assert.deepEqual(lines, ['resume: lr changed 0.002 -> 1e-4', 'resume: max_steps changed 2 -> 3']);
    const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; step: number; message?: string })
      .filter((row) => row.kind === 'resume');
    assert.deepEqual(
      rows.map((row) => [row.step, row.message]),
      [
        [2, 'lr changed 0.002 -> 1e-4'],
        [2, 'max_steps changed 2 -> 3'],
      ],
    );
  });

  it('another LoRA rank cannot resume: one line naming both values, exit 2', () => {
    const r = train([
      '--max_steps',
      '4',
      '--lr',
      '1e-4',
      '--lora_rank',
      '4',
      '--resume_from_checkpoint',
      'latest',
    ]);
    oneLineError(
      r,
      /^qtune: error: checkpoint .*checkpoint-3 was written for other trainable tensors: lora_rank 8, this run has 4 \(/,
    );
  });

  it('the same file giving other examples (another seed draws another split) is refused, saying why', () => {
    const r = train([
      '--max_steps',
      '4',
      '--lr',
      '1e-4',
      '--seed',
      '7',
      '--resume_from_checkpoint',
      'latest',
    ]);
    oneLineError(
      r,
      /^qtune: error: checkpoint .*checkpoint-3 was trained on other data: (.*style\.jsonl) \(23 examples, sha256 ([0-9a-f]{12})\); this run has \1 \(23 examples, sha256 (?!\2)[0-9a-f]{12}\) \(the same file gives other examples when it was edited, or when .*the seed that draws the split changed\) \(resume with the data/,
    );
  });

  it('another dataset is refused with one line naming both; resume_ignore_data_change goes on', () => {
    const other = path.join(tmp, 'other.jsonl');
    const lines = readFileSync(path.join(ROOT, 'data', 'style.jsonl'), 'utf8')
      .trim()
      .split('\n');
    writeFileSync(other, lines.slice(30).join('\n') + '\n');
    const args = [
      '--max_steps',
      '4',
      '--lr',
      '1e-4',
      '--dataset',
      other,
      '--resume_from_checkpoint',
      'latest',
    ];
    const refused = train(args);
    oneLineError(
      refused,
      new RegExp(
        `^qtune: error: checkpoint .*checkpoint-3 was trained on other data: .*style\\.jsonl \\(23 examples, sha256 [0-9a-f]{12}\\); this run has ${other.replace(/[.]/g, '\\.')} \\(23 examples, sha256 [0-9a-f]{12}\\) \\(.*set resume_ignore_data_change: true`,
      ),
    );
    const r = train([...args, '--resume_ignore_data_change']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /^resume: dataset changed .*style\.jsonl \(23 examples, sha256 [0-9a-f]{12}\) -> .*other\.jsonl \(23 examples, sha256 [0-9a-f]{12}\); going on with the new data \(resume_ignore_data_change\)$/m,
    );
    assert.match(r.stdout, /resumed from .*checkpoint-3 at step 3/);
  });
});
