/**
 * `qtune train` with objective grpo: examples/grpo-tiny.yaml runs through the real CLI on a tiny
 * model and writes its adapter and metrics.jsonl, whose step rows carry TRL's GRPO metrics and whose
 * `sample` rows hold prompts, completions and rewards; a prompt dataset file with a reward module
 * written to disk trains too; a bad reward module, a missing one and a bad GRPO key each fail in
 * one line with exit code 2.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { ROOT, qtune } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-grpo-cli-'));
const tiny = path.join(tmp, 'tiny-model');
after(() => rmSync(tmp, { recursive: true, force: true }));

const example = (out: string, ...flags: string[]) => [
  'train',
  '--config',
  path.join(ROOT, 'examples', 'grpo-tiny.yaml'),
  '--model',
  tiny,
  '--output_dir',
  out,
  '--max_steps',
  '2',
  '--num_generations',
  '4',
  ...flags,
];

function rows(out: string): Record<string, unknown>[] {
  return readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function oneLineError(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

describe('qtune train --objective grpo', () => {
  before(() =>
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 }),
  );

  it('examples/grpo-tiny.yaml trains, logging the GRPO metrics and sample completions', () => {
    const out = path.join(tmp, 'out-example');
    const r = qtune(example(out, '--log_completions', '1'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /trained 2 steps/);
    assert.ok(existsSync(path.join(out, 'adapter_model.safetensors')));
    const steps = rows(out).filter((row) => row['kind'] === 'step');
    assert.equal(steps.length, 2);
    const metrics = steps[0]! as Record<string, number>;
    for (const key of [
      'reward',
      'reward_std',
      'rewards/exact_match/mean',
      'rewards/format/std',
      'kl',
      'completion_length',
      'clip_ratio',
    ])
      assert.equal(typeof metrics[key], 'number', `metrics.jsonl step rows lack ${key}`);
    const samples = rows(out).filter((row) => row['kind'] === 'sample');
    assert.equal(samples.length, 2 * 4); // every step: the first prompt's 4 completions
    for (const s of samples) {
      assert.match(String(s['prompt']), /^\d+ \+ \d+ =$/);
      assert.equal(typeof s['completion'], 'string');
      assert.equal(typeof s['reward'], 'number');
    }
  });

  it('a prompt file and a reward module train; bad modules and keys fail in one line', () => {
    const data = path.join(tmp, 'prompts.jsonl');
    writeFileSync(
      data,
      ['{"prompt": "The whale is", "answer": "white"}', '{"prompt": "Call me", "answer": "Ishmael"}'].join(
        '\n',
      ) + '\n',
    );
    writeFileSync(
      path.join(tmp, 'short.mjs'),
      'export default function short(prompts, completions) { return completions.map((c) => -c.length / 10); }\n',
    );
    const out = path.join(tmp, 'out-file');
    const file = ['--dataset', data, '--dataset_format', 'alpaca', '--context_length', '32'];
    const r = qtune([
      ...example(out, ...file, '--reward_functions', path.join(tmp, 'short.mjs'), '--exact_match', 'answer'),
    ]);
    assert.equal(r.code, 0, r.stderr);
    const metrics = rows(out).find((row) => row['kind'] === 'step')! as Record<string, number>;
    assert.ok(metrics['rewards/short/mean']! <= 0, 'the module scored the completions');

    writeFileSync(path.join(tmp, 'wrong.mjs'), 'export default () => [1];\n');
    oneLineError(
      qtune(example(path.join(tmp, 'o2'), '--reward_functions', path.join(tmp, 'wrong.mjs'))),
      /reward function wrong returned 1 values for 8 completions/,
    );
    oneLineError(
      qtune(example(path.join(tmp, 'o3'), '--reward_functions', path.join(tmp, 'nope.mjs'))),
      /reward_functions: .*nope\.mjs: no such file/,
    );
    oneLineError(
      qtune(example(path.join(tmp, 'o4'), '--loss_type', 'sigmoid')),
      /loss_type: "sigmoid" is not dapo/,
    );
    oneLineError(
      qtune(example(path.join(tmp, 'o5'), '--context_length', '8')),
      /line \d+: the prompt has \d+ tokens, and with max_completion_length 6 needs \d+ positions; context_length is 8/,
    );
  });
});
