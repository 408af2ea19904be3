/**
 * `qtune train` with objective dpo: examples/dpo-tiny.yaml over data/preference.jsonl (TRL's
 * {prompt, chosen, rejected}) through the real CLI, its metrics.jsonl step rows carrying TRL's DPO
 * metrics (and ORPO's and SimPO's on the same data); a preference record with a bad field fails with
 * one line naming file, line and field.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { ROOT, qtune } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-dpo-cli-'));
const tiny = path.join(tmp, 'tiny-model');
after(() => rmSync(tmp, { recursive: true, force: true }));

const run = (out: string, dataset: string, extra: string[] = []) =>
  qtune([
    'train',
    '--config',
    path.join(ROOT, 'examples', 'dpo-tiny.yaml'),
    '--model',
    tiny,
    '--dataset',
    dataset,
    '--output_dir',
    out,
    '--max_steps',
    '3',
    '--save_steps',
    '0',
    '--context_length',
    '64',
    '--max_samples',
    '16',
    ...extra,
  ]);

describe('qtune train --objective dpo', () => {
  before(() =>
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 }),
  );

  it('examples/dpo-tiny.yaml trains, logging TRL’s DPO metrics in metrics.jsonl', () => {
    const out = path.join(tmp, 'out');
    const r = run(out, path.join(ROOT, 'data', 'preference.jsonl'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /trained 3 steps/);
    const steps = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, number>)
      .filter((row) => row['kind'] === ('step' as unknown as number));
    assert.equal(steps.length, 3);
    for (const k of [
      'rewards/chosen',
      'rewards/rejected',
      'rewards/accuracies',
      'rewards/margins',
      'logps/chosen',
      'logps/rejected',
    ])
      assert.equal(typeof steps[0]![k], 'number', `metrics.jsonl lacks ${k}`);
    // step 1: the policy is the reference: rewards 0, the sigmoid loss log 2
    assert.equal(steps[0]!['rewards/margins'], 0);
    assert.ok(Math.abs(steps[0]!['loss']! - Math.log(2)) < 1e-6);
  });

  for (const [objective, extra] of [
    ['orpo', ['nll_loss', 'log_odds_ratio', 'log_odds_chosen']],
    ['simpo', []],
  ] as const) {
    it(`--objective ${objective} trains on the same preference data, logging its TRL metrics`, () => {
      const out = path.join(tmp, `out-${objective}`);
      const r = run(out, path.join(ROOT, 'data', 'preference.jsonl'), ['--objective', objective]);
      assert.equal(r.code, 0, r.stderr);
      const steps = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((row) => row['kind'] === 'step');
      assert.equal(steps.length, 3);
      for (const k of ['rewards/margins', 'rewards/accuracies', 'logps/chosen', ...extra])
        assert.equal(typeof steps[0]![k], 'number', `metrics.jsonl lacks ${k}`);
    });
  }

  it('a record whose rejected field is not text fails with one line naming file, line and field', () => {
    const file = path.join(tmp, 'bad.jsonl');
    writeFileSync(
      file,
      '{"prompt":"a","chosen":"b","rejected":"c"}\n{"prompt":"a","chosen":"b","rejected":7}\n',
    );
    const r = run(path.join(tmp, 'out-bad'), file, ['--val_size', '0']);
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(
      lines[0]!,
      /bad\.jsonl.*line 2: field "rejected" must be a string or a list of messages, got number/,
    );
  });
});
