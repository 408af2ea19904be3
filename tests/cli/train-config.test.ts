/** Training-config options that reach the trainer: fp16 loss scaling's growth interval. */
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
