/**
 * Every train type converges on every device: a tiny model fine-tuned on real text (Moby Dick
 * chapters it never saw) lowers its validation loss by a stated margin. The CPU trains the Moby Dick
 * model pretrained by the test helpers (Llama 2 tokenizer, vocabulary 32000); software Vulkan runs
 * at a few GFLOP/s, so there the parity fixture's Llama (grouped-query attention, vocabulary 256)
 * trains on the same text as bytes — the same code paths with a hundredth of the arithmetic.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import type { Backend } from '../../src/engine/device.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { expandModel } from '../../src/peft/expand.js';
import { TRAIN_TYPES, resolveTrainType } from '../../src/train/train-type.js';
import { Trainer, prepareModel, type PreparedModel, type TrainerOptions } from '../../src/train/trainer.js';
import type { TrainData } from '../../src/data/example.js';
import { ROOT } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { byteData, fineTuneData, prepareFolder } from '../helpers/finetune.js';
import { pretrainedTinyModel } from '../helpers/pretrained.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-train-types-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/**
 * Per train type: learning rate, and the validation loss drop it must reach. Every name
 * `train_type` accepts is here (a test below checks it); the seed system's aliases (`cpuOnly`) run
 * on the CPU only: they are the same adapters over the same quantization methods, and the methods
 * themselves are checked on every device in tests/integration.
 */
const RECIPES: Record<string, { lr: number; margin: number; cpuOnly?: true }> = {
  full: { lr: 1e-3, margin: 0.01 },
  lora: { lr: 5e-3, margin: 0.01 },
  qlora: { lr: 5e-3, margin: 0.01 },
  dora: { lr: 5e-3, margin: 0.01 },
  llama_pro: { lr: 2e-3, margin: 0.01 },
  bnb_dora: { lr: 5e-3, margin: 0.01 },
  custom_lora: { lr: 5e-3, margin: 0.01, cpuOnly: true },
  custom_qlora: { lr: 5e-3, margin: 0.01, cpuOnly: true },
  hqq_lora: { lr: 5e-3, margin: 0.01, cpuOnly: true },
  hqq_dora: { lr: 5e-3, margin: 0.01, cpuOnly: true },
  bnb_llama_pro: { lr: 2e-3, margin: 0.01, cpuOnly: true },
  hqq_llama_pro: { lr: 2e-3, margin: 0.01, cpuOnly: true },
};
const STEPS = 12;

interface Setup {
  dir: string;
  expanded: string;
  data: TrainData;
  prepare(trainType: string, backend: Backend): Promise<PreparedModel>;
}

async function cpuSetup(): Promise<Setup> {
  const { dir } = await pretrainedTinyModel();
  const expanded = path.join(tmp, 'moby-pro');
  expandModel(dir, expanded, 1);
  const data = fineTuneData(Tokenizer.fromFolder(dir), 48, 96, 16);
  return {
    dir,
    expanded,
    data,
    prepare: (trainType, backend) =>
      prepareModel(resolveTrainType(trainType).adapter === 'llama_pro' ? expanded : dir, {
        trainType,
        backend,
      }),
  };
}

function fixtureSetup(): Setup {
  const dir = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
  const expanded = path.join(tmp, 'gqa-pro');
  expandModel(dir, expanded, 1);
  return {
    dir,
    expanded,
    data: byteData(32, 64, 16),
    prepare: (name, backend) =>
      Promise.resolve(
        prepareFolder(resolveTrainType(name).adapter === 'llama_pro' ? expanded : dir, name, backend),
      ),
  };
}

const { devices, skipped } = testDevices();
describe('train types converge', () => {
  it('covers every train type name', () => {
    assert.deepEqual(Object.keys(RECIPES).sort(), [...TRAIN_TYPES].sort());
  });
  for (const device of devices) {
    let setup: Promise<Setup> | undefined;
    const get = () => (setup ??= device.backend.isCpu ? cpuSetup() : Promise.resolve(fixtureSetup()));
    for (const [trainType, recipe] of Object.entries(RECIPES)) {
      if (recipe.cpuOnly === true && !device.backend.isCpu) continue;
      it(`${trainType} on ${device.name}`, async () => {
        const s = await get();
        const prepared = await s.prepare(trainType, device.backend);
        const frozenHash = () => {
          const h = createHash('sha256');
          for (const t of prepared.model.tensors()) if (!t.requiresGrad) h.update(t.store!.readBytes(t));
          return h.digest('hex');
        };
        const before = frozenHash();
        const options: TrainerOptions = {
          trainType,
          batchSize: 4,
          maxSteps: STEPS,
          optimizer: { name: 'adamw', lr: recipe.lr },
          lora: { rank: 8, alpha: 16 },
          seed: 1,
        };
        const trainer = new Trainer(prepared, s.data, options);
        try {
          const start = trainer.evaluate().loss;
          const result = trainer.train();
          const end = result.evals.at(-1)!.loss;
          const drop = 1 - end / start;
          console.log(
            `${trainType} on ${device.name}: validation loss ${start.toFixed(4)} → ${end.toFixed(4)} (${(100 * drop).toFixed(2)}%), ${result.tokensPerS.toFixed(0)} tokens/s`,
          );
          assert.ok(result.losses.every(Number.isFinite));
          assert.ok(
            drop >= recipe.margin,
            `validation loss fell ${(100 * drop).toFixed(2)}%, needs ${100 * recipe.margin}%`,
          );
          if (trainType !== 'full') assert.equal(frozenHash(), before, 'frozen weights changed');
          if (trainType === 'llama_pro' && prepared.tokenizer !== null) {
            // the expanded model with its trained blocks, saved and loaded again, gives the same loss
            const out = path.join(tmp, `out-${device.name}`);
            trainer.saveOutputs(out);
            const again = await prepareModel(path.join(out, 'model'), {
              trainType: 'lora',
              backend: device.backend,
            });
            const reloaded = new Trainer(again, s.data, { trainType: 'lora', batchSize: 4, maxSteps: 1 });
            try {
              const l = reloaded.evaluate().loss;
              assert.ok(Math.abs(l - end) <= 1e-5 * end, `saved model: ${l}, trained: ${end}`);
            } finally {
              reloaded.dispose();
            }
          }
        } finally {
          trainer.dispose();
        }
      });
    }
  }
  for (const reason of skipped) it(`on ${reason.split(':')[0]!}`, { skip: reason }, () => undefined);
});
