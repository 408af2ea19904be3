/**
 * Samples during training (src/train/samples.ts) on the pretrained tiny model with its Llama 2
 * tokenizer: the evalPrompts are generated at each evaluation and at the end, without a validation
 * set, emitted as `sample` events and onLog records; the last one is what the trained adapter
 * generates when it is written out and loaded back through the PEFT reader (the reference: a path
 * that shares nothing with the trainer's own adapter hook). Bad prompts and options are refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { generate } from '../../src/models/generate.js';
import { createAdapterHook } from '../../src/peft/apply.js';
import { loadPeftAdapter } from '../../src/peft/peft.js';
import type { SampleRecord } from '../../src/train/control.js';
import { Trainer, prepareModel, type LogRecord } from '../../src/train/trainer.js';
import { byteData, fineTuneData, prepareFolder } from '../helpers/finetune.js';
import { pretrainedTinyModel } from '../helpers/pretrained.js';
import { FIXTURE } from '../helpers/random-model.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-samples-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const PROMPTS = ['Call me Ishmael. Some years ago', 'The whale'];

describe('samples during training (evalPrompts)', () => {
  it('generates each prompt at every evaluation and at the end, without validation data, with the adapter as trained so far', async () => {
    const { dir } = await pretrainedTinyModel();
    const prepared = await prepareModel(dir, { trainType: 'lora', backend: cpuBackend() });
    const data = { train: fineTuneData(prepared.tokenizer!, 32, 16, 0).train };
    const t = new Trainer(prepared, data, {
      trainType: 'lora',
      maxSteps: 3,
      evalEvery: 2,
      batchSize: 2,
      optimizer: { name: 'adamw', lr: 1e-1 },
      lora: { rank: 4, alpha: 8, dropout: 0.1 },
      evalPrompts: PROMPTS,
      evalGeneration: { maxNewTokens: 8 },
      seed: 3,
    });
    try {
      const events: SampleRecord[] = [];
      const logged: LogRecord[] = [];
      t.on('sample', (s) => events.push(s));
      t.onLog = (r) => logged.push(r);
      const result = await t.trainAsync();
      assert.deepEqual(result.evals, []); // no validation data: no loss, but the samples
      // steps 2 (evalEvery) and 3 (the end), each prompt in order, each after its step's record
      assert.deepEqual(
        events.map((s) => [s.step, s.prompt]),
        [
          [2, PROMPTS[0]],
          [2, PROMPTS[1]],
          [3, PROMPTS[0]],
          [3, PROMPTS[1]],
        ],
      );
      assert.deepEqual(
        logged.map((r) => `${r.kind}:${r.step}`),
        ['step:1', 'step:2', 'sample:2', 'sample:2', 'step:3', 'sample:3', 'sample:3'],
      );
      for (const s of events) {
        assert.equal(s.kind, 'sample');
        assert.ok(s.epoch > 0);
        assert.equal(typeof s.completion, 'string');
      }
      // the reference: the trained adapter, written as PEFT files and read back, greedy
      const adapterDir = path.join(tmp, 'adapter');
      t.saveOutputs(adapterDir);
      const hook = createAdapterHook(t.model, loadPeftAdapter(adapterDir));
      try {
        for (const [k, prompt] of PROMPTS.entries()) {
          const ids = t.tokenizer!.encode(prompt);
          const want = generate(t.model, t.tokenizer!, ids, { maxNewTokens: 8, linear: hook.hook }).text;
          assert.equal(events[2 + k]!.completion, want, `prompt ${k}`);
        }
        // the base model alone says something else: the samples show the training
        const base = PROMPTS.map(
          (p) => generate(t.model, t.tokenizer!, t.tokenizer!.encode(p), { maxNewTokens: 8 }).text,
        );
        assert.notDeepEqual(
          events.slice(2).map((s) => s.completion),
          base,
        );
      } finally {
        hook.dispose();
      }
    } finally {
      t.dispose();
    }
  });

  it('refuses prompts for a model without a tokenizer, and generation options out of range, naming the field', () => {
    const data = byteData(32, 8, 0);
    const make = (o: object) => () =>
      new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), data, {
        trainType: 'lora',
        maxSteps: 1,
        ...o,
      });
    assert.throws(
      make({ evalPrompts: ['hi'] }),
      (e: unknown) => e instanceof ConfigError && /^eval_prompts: .*no tokenizer/.test(e.message),
    );
    assert.throws(
      make({ evalPrompts: ['hi'], evalGeneration: { maxNewTokens: 0 } }),
      (e: unknown) => e instanceof ConfigError && /eval_max_new_tokens: 0/.test(e.message),
    );
    assert.throws(
      make({ evalPrompts: ['hi'], evalGeneration: { maxTokens: 4 } }),
      (e: unknown) => e instanceof ConfigError && /evalGeneration\.maxTokens/.test(e.message),
    );
  });
});
