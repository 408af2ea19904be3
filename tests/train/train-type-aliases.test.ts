/**
 * The train-type aliases (src/train/train-type.ts: the seed system's names for a quantization method
 * and an adapter) train on every family: each takes 4 steps on the family's parity fixture, on the
 * CPU, and the validation loss falls. tests/models/families.test.ts runs the five base types longer,
 * on every device; an alias differs from its base type only by the frozen base's quantization method.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { expandModel } from '../../src/peft/expand.js';
import { TRAIN_TYPES, resolveTrainType } from '../../src/train/train-type.js';
import { Trainer } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURES = [
  'llama_gqa',
  'mistral_sliding_window',
  'qwen2_bias_tied',
  'qwen3_qk_norm',
  'smollm3_nope',
  'phi3_fused',
  'gemma3_local_global',
];
const BASE_TYPES = ['full', 'lora', 'qlora', 'dora', 'llama_pro'];
const ALIASES = TRAIN_TYPES.filter((t) => !BASE_TYPES.includes(t));
const LR = { full: 1e-3, lora: 5e-3, dora: 5e-3, llama_pro: 2e-3 };

const backend = cpuBackend();
backend.setThreads(1);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-aliases-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const data = byteData(32, 16, 8);

it('the aliases are the seven the seed system names', () => {
  assert.deepEqual([...ALIASES].sort(), [
    'bnb_dora',
    'bnb_llama_pro',
    'custom_lora',
    'custom_qlora',
    'hqq_dora',
    'hqq_llama_pro',
    'hqq_lora',
  ]);
});

for (const name of FIXTURES) {
  describe(`train-type aliases on ${name}`, () => {
    const fixture = path.join(ROOT, 'tests', 'fixtures', 'parity', name);
    const expanded = path.join(tmp, `${name}-pro`);
    before(() => expandModel(fixture, expanded, 1));
    for (const trainType of ALIASES) {
      const { adapter } = resolveTrainType(trainType);
      it(`${trainType} takes 4 steps with a falling loss`, () => {
        const prepared = prepareFolder(adapter === 'llama_pro' ? expanded : fixture, trainType, backend);
        const trainer = new Trainer(prepared, data, {
          trainType,
          batchSize: 4,
          maxSteps: 4,
          optimizer: { name: 'adamw', lr: LR[adapter] },
          lora: { rank: 8, alpha: 16 },
          seed: 1,
        });
        try {
          const start = trainer.evaluate().loss;
          const end = trainer.train().evals.at(-1)!.loss;
          assert.ok(end < start, `${trainType} on ${name}: validation loss ${start} → ${end}`);
        } finally {
          trainer.dispose();
        }
      });
    }
  });
}
