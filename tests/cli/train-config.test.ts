/**
 * Training-config options that reach the trainer: fp16 loss scaling's growth interval; PEFT's
 * rank/alpha patterns (Python regex keys) from YAML and flags.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { trainerOptions } from '../../src/cli/commands/train.js';
import { resolveTrainConfig } from '../../src/cli/train-config.js';
import { ConfigError } from '../../src/errors.js';

const base = { model: 'm', dataset: 'd.jsonl' };

describe('train config: loss_scale_growth_interval', () => {
  it("defaults to PyTorch's 2000 and reaches the trainer from YAML and from flags", () => {
    assert.deepEqual(trainerOptions(resolveTrainConfig(base)).lossScale, { growthInterval: 2000 });
    const fromFile = resolveTrainConfig({ ...base, loss_scale_growth_interval: 3 });
    const fromFlag = resolveTrainConfig(base, { loss_scale_growth_interval: '3' });
    assert.deepEqual(trainerOptions(fromFile).lossScale, { growthInterval: 3 });
    assert.deepEqual(trainerOptions(fromFlag).lossScale, { growthInterval: 3 });
  });

  it('refuses an interval below 1 or not a whole number, naming the field', () => {
    for (const bad of [0, 2.5, 'often'])
      assert.throws(
        () => resolveTrainConfig({ ...base, loss_scale_growth_interval: bad }),
        (e: unknown) => e instanceof ConfigError && /^loss_scale_growth_interval: /.test(e.message),
      );
  });
});

describe('train config: lora_rank_pattern and lora_alpha_pattern', () => {
  it('reach the trainer from YAML (a mapping) and from flags (key=value pairs or JSON)', () => {
    const want = { q_proj: 16, '(?P<w>v)_proj': 4 };
    const fromFile = resolveTrainConfig({ ...base, lora_rank_pattern: want });
    const fromPairs = resolveTrainConfig(base, { lora_rank_pattern: 'q_proj=16,(?P<w>v)_proj=4' });
    const fromJson = resolveTrainConfig(base, { lora_rank_pattern: JSON.stringify(want) });
    for (const c of [fromFile, fromPairs, fromJson])
      assert.deepEqual(trainerOptions(c).lora?.rankPattern, want);
    // a key holding '=' and ',' (a backreference, a {m,n} count): JSON, or the last '=' splits a pair
    const backref = resolveTrainConfig(base, { lora_alpha_pattern: '(?P<d>\\d)\\.(?P=d)=0.5' });
    assert.deepEqual(trainerOptions(backref).lora?.alphaPattern, { '(?P<d>\\d)\\.(?P=d)': 0.5 });
    const counted = resolveTrainConfig(base, {
      lora_alpha_pattern: '{"layers\\\\.\\\\d{1,2}\\\\.mlp\\\\..*": 8}',
    });
    assert.deepEqual(trainerOptions(counted).lora?.alphaPattern, { 'layers\\.\\d{1,2}\\.mlp\\..*': 8 });
    assert.equal(trainerOptions(resolveTrainConfig(base)).lora?.rankPattern, undefined);
  });

  it('refuses a bad value or a key Python syntax cannot be translated from, naming the field', () => {
    for (const [field, value, message] of [
      [
        'lora_rank_pattern',
        { q_proj: 2.5 },
        /^lora_rank_pattern: .* is not a mapping of module patterns to whole numbers of at least 1/,
      ],
      ['lora_rank_pattern', 'q_proj', /^lora_rank_pattern: "q_proj" is not a mapping/],
      ['lora_alpha_pattern', { q_proj: 0 }, /^lora_alpha_pattern: .* numbers above 0/],
      ['lora_alpha_pattern', [1, 2], /^lora_alpha_pattern: .* is not a mapping/],
      [
        'lora_rank_pattern',
        { '(?x) q_proj': 4 },
        /^lora_rank_pattern: key "\(\?x\) q_proj" cannot be run as Python's re runs it: verbose mode/,
      ],
      [
        'lora_alpha_pattern',
        { 'q_proj(': 4 },
        /^lora_alpha_pattern: key "q_proj\(" is not a regular expression/,
      ],
    ] as const)
      assert.throws(
        () => resolveTrainConfig({ ...base, [field]: value }),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
        `${field}: ${JSON.stringify(value)}`,
      );
  });
});
