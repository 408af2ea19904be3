/**
 * The trainer's own adapters against PyTorch. scripts/torch_reference.py computes in float64, on the
 * parity fixture's Llama (tests/fixtures/parity/llama_gqa) with every linear layer adapted, the loss
 * and the gradients of LoRA A and B (and DoRA's magnitude) for four cases
 * (tests/fixtures/lora-parity/<case>/): plain LoRA (s = α/r), rsLoRA (s = α/√r), DoRA (PEFT's
 * m ⊙ (W + s·B·A) / ‖W + s·B·A‖, the row norm detached) and per-module rank/alpha from PEFT-style
 * rank_pattern/alpha_pattern (the per-module r and α the script chose by PEFT's rule are checked
 * too). qtune builds the shipped LoraLayers through a Trainer, writes the fixture's A, B and
 * magnitude values into them, and computes the loss and gradients with the trainer's own accumulate
 * graph (Trainer.gradients). Bound: 1e-3 relative on the CPU in f32; 2e-2 on Vulkan, whose matmuls
 * round their inputs to f16 (as tests/models/parity.test.ts).
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { prepareFolder } from '../helpers/finetune.js';
import { relErr } from '../helpers/ref.js';

const FIXTURES = path.join(ROOT, 'tests', 'fixtures', 'lora-parity');

interface Reference {
  model: string;
  batch: number;
  seq: number;
  ids: number[][];
  labels: number[][];
  peft_config: {
    r: number;
    lora_alpha: number;
    use_rslora?: boolean;
    use_dora?: boolean;
    rank_pattern?: Record<string, number>;
    alpha_pattern?: Record<string, number>;
  };
  modules: Record<string, { rank: number; alpha: number; scale: number }>;
  loss: number;
}

const { devices, skipped } = testDevices();
for (const s of skipped) console.log(`# lora parity: skipped ${s}`);

for (const name of readdirSync(FIXTURES).sort()) {
  const dir = path.join(FIXTURES, name);
  const ref = JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as Reference;
  const c = ref.peft_config;
  describe(`the trainer's ${name} against PyTorch`, () => {
    for (const device of devices) {
      const tol = device.backend.isCpu ? 1e-3 : 2e-2;
      it(`loss and gradients on ${device.name} (within ${tol} relative)`, () => {
        const trainType = c.use_dora === true ? 'dora' : 'lora';
        const prepared = prepareFolder(
          path.join(ROOT, 'tests', 'fixtures', 'parity', ref.model),
          trainType,
          device.backend,
        );
        const examples = ref.ids.map((ids, b) => ({
          ids: Int32Array.from(ids),
          labels: Int32Array.from(ref.labels[b]!),
        }));
        const lora: NonNullable<TrainerOptions['lora']> = {
          rank: c.r,
          alpha: c.lora_alpha,
          rsLora: c.use_rslora === true,
          ...(c.rank_pattern === undefined ? {} : { rankPattern: c.rank_pattern }),
          ...(c.alpha_pattern === undefined ? {} : { alphaPattern: c.alpha_pattern }),
        };
        const trainer = new Trainer(
          prepared,
          { train: examples },
          { trainType, lora, batchSize: ref.batch, maxSteps: 1 },
        );
        const values = SafetensorsFile.open(path.join(dir, 'adapter.safetensors'));
        const expected = SafetensorsFile.open(path.join(dir, 'grads.safetensors'));
        try {
          // the modules, ranks, alphas and scales PEFT's rules give
          const layers = trainer.lora!;
          assert.deepEqual([...layers.modules.keys()].sort(), Object.keys(ref.modules).sort());
          for (const [module, m] of Object.entries(ref.modules)) {
            const info = layers.modules.get(module)!;
            assert.equal(info.rank, m.rank, `rank of ${module}`);
            assert.equal(info.alpha, m.alpha, `alpha of ${module}`);
            assert.ok(Math.abs(info.scale - m.scale) <= 1e-12 * m.scale, `scale of ${module}`);
          }
          // the fixture's adapter values, in place of the initialisation
          const params = new Map(trainer.params.map((p) => [p.name, p]));
          assert.deepEqual([...params.keys()].sort(), values.names().sort());
          for (const n of values.names()) {
            const t = params.get(n)!;
            t.store!.write(t, values.readF32(n));
          }
          const { loss, grads } = trainer.gradients([examples]);
          const lossErr = Math.abs(loss - ref.loss) / ref.loss;
          let worst = 0;
          for (const n of expected.names()) {
            const err = relErr(grads.get(n)!, expected.readF32(n));
            worst = Math.max(worst, err);
            assert.ok(err <= tol, `gradient of ${n} differs from PyTorch by ${err.toExponential(2)}`);
          }
          console.log(
            `# lora parity ${name} on ${device.name}: loss ${lossErr.toExponential(2)}, worst gradient ${worst.toExponential(2)} (relative, ${expected.names().length} tensors)`,
          );
          assert.ok(lossErr <= tol, `loss ${loss} vs PyTorch ${ref.loss}`);
        } finally {
          values.close();
          expected.close();
          trainer.dispose();
        }
      });
    }
  });
}
