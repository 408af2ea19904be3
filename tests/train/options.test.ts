/**
 * The Trainer's options are checked by name (src/train/options.ts): a misspelt key — `maxStep` for
 * `maxSteps`, `lora: { r }` for `lora: { rank }`, a PEFT/Axolotl name such as `learningRate` — is a
 * ConfigError naming the key and the known name, where it used to be ignored (a whole epoch ran).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { Trainer, type CreateOptions, type TrainerOptions } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const DATA = byteData(32, 16, 2);

/** The options as a user's untyped object (a JSON file, a JavaScript caller). */
function untyped(o: Record<string, unknown>): TrainerOptions {
  return o;
}

describe('TrainerOptions names', () => {
  for (const [options, problem, hint] of [
    [{ maxStep: 2 }, 'maxStep: unknown trainer option', 'did you mean maxSteps?'],
    [{ max_steps: 2 }, 'max_steps: unknown trainer option', 'did you mean maxSteps?'],
    [{ lora: { r: 4, alpha: 8 } }, 'lora.r: unknown trainer option', 'did you mean lora.rank?'],
    [{ learningRate: 1e-3 }, 'learningRate: unknown trainer option', 'give it as optimizer: { lr }'],
    [{ lr: 1e-3 }, 'lr: unknown trainer option', 'give it as optimizer: { lr }'],
    [
      { lossScale: { growth_interval: 10 } },
      'lossScale.growth_interval: unknown trainer option',
      'did you mean lossScale.growthInterval?',
    ],
    [{ profile: { steps: 2 } }, 'profile.steps: unknown trainer option', 'did you mean profile.step?'],
    [
      { optimizer: { name: 'adamw', weightDecay: 0.1 } },
      'optimizer.weightDecay = 0.1 is not allowed',
      'did you mean weight_decay?',
    ],
    [
      { schedule: { name: 'cosine', warmupRatio: 0.1 } },
      'schedule.warmupRatio = 0.1 is not allowed',
      'did you mean warmup_ratio?',
    ],
  ] as const) {
    it(`new Trainer refuses ${JSON.stringify(options)}: ${hint}`, () => {
      const prepared = prepareFolder(FIXTURE, 'lora', cpuBackend());
      assert.throws(
        () => new Trainer(prepared, DATA, untyped({ trainType: 'lora', ...options })),
        (e: unknown) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.ok(e.problem.startsWith(problem), e.message);
          assert.equal(e.hint, hint, e.message);
          return true;
        },
      );
      // the trainer owned the model from the constructor on: the refusal freed it
      assert.throws(() => prepared.model.weight('lm_head.weight').read());
    });
  }

  it('Trainer.create refuses a misspelt key before it loads the model', async () => {
    // the source does not exist: a check after loading would fail on the path instead
    const o = { trainType: 'lora', maxStep: 2 } as unknown as CreateOptions;
    await assert.rejects(
      Trainer.create(path.join(ROOT, 'no', 'such', 'model'), DATA, o),
      (e: unknown) =>
        e instanceof ConfigError && e.message === 'maxStep: unknown trainer option (did you mean maxSteps?)',
    );
  });

  it('accepts every option it documents, and the model options Trainer.create passes on', () => {
    const t = new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), DATA, {
      trainType: 'lora',
      backend: 'cpu',
      lora: { rank: 4, alpha: 8, dropout: 0, targetModules: ['q_proj'], rsLora: false },
      lossScale: { initial: 1024, growthInterval: 10 },
      profile: { step: 1 },
      maxSteps: 1,
      batchSize: 2,
      evalExamples: 1,
      optimizer: { name: 'adamw', lr: 1e-3 },
      schedule: { name: 'cosine', warmup_ratio: 0.5 },
      // an option given as undefined (a spread of optional values) is no option
      ...untyped({ evalEvery: undefined }),
    } as CreateOptions);
    try {
      assert.equal(t.totalSteps, 1);
      assert.equal(t.lora?.params().length, 2 * t.model.config.num_hidden_layers);
    } finally {
      t.dispose();
    }
  });
});
