/**
 * GRPO on the `dummy` arithmetic task (data/formats.ts dummyRecords: "a + b =" → " a+b"): a tiny
 * Llama is first fine-tuned (full, a short SFT warm start, written to disk as a model folder), then
 * a LoRA over it trains with objective grpo and an exact-match reward against the record's
 * completion. The mean reward of the last steps is above that of the first (fixed seeds; the
 * sampled completions are the trainer's own, with its adapter). Each step logs TRL's metric names,
 * `sample` records now and then; train() refuses the asynchronous objective in one line, and the
 * options' checks name their YAML keys.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { recordsToExamples } from '../../src/data/dataset.js';
import { dummyRecords } from '../../src/data/formats.js';
import { promptExamples } from '../../src/data/prompts.js';
import { padId } from '../../src/data/tokenize.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { resolveGrpoOptions } from '../../src/train/grpo.js';
import { exactMatchReward } from '../../src/train/rewards.js';
import { Trainer, prepareModel, type LogRecord } from '../../src/train/trainer.js';
import { recordScalars } from '../../src/report/scalars.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-grpo-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const mean = (x: number[]) => x.reduce((a, b) => a + b, 0) / x.length;

describe('GRPO on the dummy arithmetic task', () => {
  it('the mean reward rises after a short SFT warm start; TRL-named metrics and sample rows are logged', async () => {
    const base = path.join(tmp, 'tiny');
    createTinyModel(base, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
    const records = dummyRecords(2, 7); // two sums, every step sees both
    const context = 16;
    // the warm start: full fine-tuning on the sums, saved as a model folder
    const sftModel = await prepareModel(base, { trainType: 'full' });
    const sft = recordsToExamples(records, 'dummy', sftModel.tokenizer!, context, false);
    const warm = new Trainer(
      sftModel,
      { train: sft },
      {
        trainType: 'full',
        batchSize: 2,
        maxSteps: 20,
        seed: 1,
        optimizer: { name: 'adamw', lr: 0.01 },
      },
    );
    warm.train();
    warm.saveOutputs(path.join(tmp, 'sft'));
    warm.dispose();

    const prepared = await prepareModel(path.join(tmp, 'sft', 'model'), { trainType: 'lora' });
    const tok = prepared.tokenizer!;
    const G = 8;
    const trainer = new Trainer(
      prepared,
      { train: promptExamples(tok, records, context, 6, padId(tok)) },
      {
        trainType: 'lora',
        objective: 'grpo',
        batchSize: 2, // prompts per step: 16 completions
        maxSteps: 10,
        seed: 1,
        optimizer: { name: 'adamw', lr: 0.01 },
        grpo: {
          numGenerations: G,
          maxCompletionLength: 6,
          temperature: 0.7,
          beta: 0.04,
          rewardFunctions: [exactMatchReward('completion')],
          logCompletions: 5,
        },
      },
    );
    const logs: LogRecord[] = [];
    trainer.onLog = (r) => logs.push(r);
    try {
      assert.throws(
        () => trainer.train(),
        /steps asynchronously .*train\(\) cannot run it \(await trainer\.trainAsync\(\) instead\)/,
      );
      await trainer.trainAsync();
    } finally {
      trainer.dispose();
    }
    const steps = logs.filter((r) => r.kind === 'step');
    assert.equal(steps.length, 10);
    for (const key of [
      'reward',
      'reward_std',
      'rewards/exact_match/mean',
      'rewards/exact_match/std',
      'kl',
      'completion_length',
      'clip_ratio',
    ])
      assert.ok(typeof steps[0]!.metrics?.[key] === 'number', `step metrics lack ${key}`);
    // TensorBoard and W&B get them as train/<name>
    const tags = recordScalars(steps[0]!).map((s) => s.tag);
    for (const tag of ['train/reward', 'train/rewards/exact_match/mean', 'train/kl'])
      assert.ok(tags.includes(tag), tag);
    const rewards = steps.map((r) => r.metrics!['reward']!);
    const [first, last] = [mean(rewards.slice(0, 3)), mean(rewards.slice(-3))];
    console.log(
      `# grpo dummy: rewards ${rewards.map((r) => r.toFixed(2)).join(' ')} (first 3 ${first.toFixed(3)}, last 3 ${last.toFixed(3)})`,
    );
    assert.ok(last >= first + 0.05, `mean reward ${first.toFixed(3)} → ${last.toFixed(3)}`);
    // one update per generation batch: the ratio is 1, nothing is clipped
    for (const r of steps) assert.equal(r.metrics!['clip_ratio'], 0);
    // the sample rows of steps 5 and 10: G completions of one prompt, with their rewards
    const samples = logs.filter((r) => r.kind === 'sample');
    assert.deepEqual(
      samples.map((r) => r.step),
      [...Array<number>(G).fill(5), ...Array<number>(G).fill(10)],
    );
    for (const s of samples) {
      assert.match(s.prompt!, /^\d+ \+ \d+ =$/);
      assert.equal(typeof s.completion, 'string');
      assert.ok(s.reward === 0 || s.reward === 1);
    }
  });
});

describe('GRPO options', () => {
  const rewardFunctions = [exactMatchReward('answer')];
  it('defaults as TRL: G 8, temperature 1, epsilon 0.2, beta 0, loss_type dapo, scale_rewards group', () => {
    const s = resolveGrpoOptions({ rewardFunctions });
    assert.deepEqual(
      [s.numGenerations, s.temperature, s.topP, s.epsilon, s.epsilonHigh, s.beta, s.lossType, s.scaleRewards],
      [8, 1, 1, 0.2, 0.2, 0, 'dapo', 'group'],
    );
  });
  it('refuse what GRPO cannot run, naming the YAML key', () => {
    assert.throws(
      () => resolveGrpoOptions({ rewardFunctions: [] }),
      /objective: grpo needs at least one reward function/,
    );
    assert.throws(() => resolveGrpoOptions(undefined), /set reward_functions/);
    assert.throws(
      () => resolveGrpoOptions({ rewardFunctions, numGenerations: 1 }),
      /num_generations: 1 is not an integer >= 2/,
    );
    assert.throws(
      () => resolveGrpoOptions({ rewardFunctions, temperature: 0 }),
      /temperature: 0 is not a number > 0/,
    );
    assert.throws(
      () => resolveGrpoOptions({ rewardFunctions, lossType: 'sigmoid' as 'dapo' }),
      /loss_type: "sigmoid" is not dapo, grpo, bnpo, dr_grpo/,
    );
    assert.throws(() => resolveGrpoOptions({ rewardFunctions, beta: -1 }), /beta: -1 is not a number >= 0/);
  });
});
