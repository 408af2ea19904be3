/**
 * One model over two devices in one process: a tiny Llama with block 0 on Vulkan0 (lavapipe) and
 * block 1 with the embeddings and head on the CPU, run by ggml's backend scheduler.
 *
 * The reference is the same run on the CPU alone: the split run's losses, evaluation and greedy
 * generation must equal it within 1e-4, every block's adapters, gradients and optimizer state must
 * live where its weights live (checked against the bytes the engine really allocated per device),
 * and a model over a device's max_memory must fail there alone and train split (through the CLI).
 *
 * ggml-vulkan rounds activations to f16 inside f32 matrix products; at this model's width that moves
 * the losses by ~1e-6, well inside the tolerance (GGML_VK_DISABLE_F16=1 makes them bit-identical).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BackendManager } from '../../src/backends/manager.js';
import { cpuBackend } from '../../src/engine/device.js';
import { nativeMemory } from '../../src/engine/memory.js';
import { generate } from '../../src/models/generate.js';
import { llamaWeights } from '../../src/models/llama.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { tensorBytes } from '../../src/tensor/host.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import type { TrainData } from '../../src/data/example.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { ROOT, qtune } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { fineTuneData } from '../helpers/finetune.js';

// the first device besides the CPU: Vulkan0 (lavapipe) in CI, CUDA0 on a GPU machine
const vulkan = testDevices().devices.find((d) => !d.backend.isCpu)?.backend;
const skip =
  vulkan === undefined &&
  `no device besides the CPU: ${testDevices().skipped.join('; ') || 'not reported by ggml'}`;

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-multi-device-'));
const dir = path.join(tmp, 'tiny');
after(() => rmSync(tmp, { recursive: true, force: true }));

const TOL = 1e-4;
let data: TrainData;

function close(a: readonly number[], b: readonly number[], what: string): void {
  assert.equal(a.length, b.length, what);
  const diff = Math.max(...a.map((x, i) => Math.abs(x - b[i]!)));
  console.log(`${what}: largest difference ${diff.toExponential(2)}`);
  assert.ok(diff <= TOL, `${what}: [${a.join(', ')}] vs [${b.join(', ')}]`);
}

/** f32 bytes of block `i`'s weights, from the config alone. */
function blockBytes(i: number): { bytes: number; tensors: number } {
  const specs = llamaWeights(config()).filter((w) => w.name.startsWith(`model.layers.${i}.`));
  return { bytes: specs.reduce((n, w) => n + tensorBytes('f32', w.shape), 0), tensors: specs.length };
}

let cfg: ReturnType<typeof createTinyModel> | undefined;
const config = () => cfg!;

async function pair(o: TrainerOptions): Promise<{ single: Trainer; split: Trainer }> {
  const single = await Trainer.create(dir, data, { ...o, backend: cpuBackend() });
  const split = await Trainer.create(dir, data, {
    ...o,
    devices: { devices: [vulkan!, cpuBackend()], layerSplit: [1, 1] },
  });
  return { single, split };
}

describe(`a model split over ${vulkan?.name ?? 'Vulkan0'} and the CPU`, () => {
  before(() => {
    // one CPU thread: ggml's threads spin at barriers, and the test machine's cores are shared
    new BackendManager().setThreads(1);
    cfg = createTinyModel(dir, {
      hiddenSize: 64,
      intermediateSize: 160,
      layers: 2,
      heads: 4,
      kvHeads: 2,
      seed: 7,
    });
    data = fineTuneData(Tokenizer.fromFolder(dir), 32, 8, 4);
  });

  it(
    'LoRA trains, evaluates and generates as on the CPU alone, each block on its device',
    { skip },
    async () => {
      if (vulkan === undefined) return; // skipped
      const { single, split } = await pair({
        trainType: 'lora',
        maxSteps: 3,
        batchSize: 2,
        seed: 5,
        optimizer: { name: 'adamw', lr: 1e-3 },
      });
      try {
        const a = single.train();
        const b = split.train();
        close(b.losses, a.losses, 'LoRA losses');
        close(
          b.evals.map((e) => e.loss),
          a.evals.map((e) => e.loss),
          'validation loss',
        );

        // where everything lives: block 0 on Vulkan0, block 1 and the head group on the CPU
        const map = split.model.deviceMap;
        assert.deepEqual(
          map.blocks.map((d) => d.name),
          [vulkan.name, 'CPU'],
        );
        assert.equal(map.model.name, 'CPU');
        const byDevice = split.memoryByDevice();
        assert.deepEqual(
          byDevice.map((d) => [d.device, d.blocks, d.head]),
          [
            [vulkan.name, [0], false],
            ['CPU', [1], true],
          ],
        );
        const vk = byDevice[0]!;
        // block 0's weights and, beside each frozen linear weight, its f32 Wᵀ (frozen_weight_copies: auto)
        const block0 = blockBytes(0);
        const linear0 = llamaWeights(config()).filter(
          (w) => w.name.startsWith('model.layers.0.') && w.role === 'linear',
        );
        const copies = linear0.reduce((n, w) => n + tensorBytes('f32', w.shape), 0);
        const want = block0.bytes + copies;
        assert.ok(
          vk.weights >= want && vk.weights <= want + 256 * (block0.tensors + linear0.length),
          `${vk.weights} vs ${want}`,
        );
        // rank-8 A [8, in] and B [out, 8] for the 7 linear layers of block 0
        const lora = llamaWeights(config())
          .filter((w) => w.name.startsWith('model.layers.0.') && w.role === 'linear')
          .reduce((n, w) => n + 4 * 8 * (w.shape[0]! + w.shape[1]!), 0);
        assert.ok(vk.adapters >= lora && vk.adapters <= lora + 256 * 14, `${vk.adapters} vs ${lora}`);
        assert.equal(vk.gradients, vk.adapters, 'block 0 gradients accumulate on Vulkan0');
        assert.ok(vk.optimizerState >= 2 * lora && vk.optimizerState <= 2 * (lora + 256 * 14));
        assert.ok(vk.compute > 0 && byDevice[1]!.compute > 0);
        // the report adds up to what the engine allocated on Vulkan0
        assert.equal(nativeMemory().byDevice[vulkan.name], vk.total);

        // greedy generation through the split model (KV cache per device) with the trained adapter
        const tok = split.tokenizer!;
        const prompt = tok.encode('Call me Ishmael. Some years ago');
        const gen = (tr: Trainer) =>
          generate(tr.model, tok, prompt, { maxNewTokens: 6, stopAtEos: false, linear: tr.lora!.hook() }).ids;
        const ids = gen(split);
        assert.deepEqual(ids, gen(single));
        assert.equal(ids.length, 6);
      } finally {
        single.dispose();
        split.dispose();
      }
    },
  );

  it('full fine-tuning: the same losses, each weight updated on its own device', { skip }, async () => {
    if (vulkan === undefined) return; // skipped
    const { single, split } = await pair({
      trainType: 'full',
      maxSteps: 2,
      batchSize: 2,
      seed: 5,
      // SGD: each weight moves by lr times its gradient (AdamW would move near-zero gradients by ~lr
      // in the direction of their sign, which rounding can flip)
      optimizer: { name: 'sgd', lr: 0.5 },
    });
    try {
      const w = 'model.layers.0.mlp.down_proj.weight';
      const before = split.model.weight(w).read();
      const a = single.train();
      const b = split.train();
      close(b.losses, a.losses, 'full fine-tuning losses');
      close(
        b.evals.map((e) => e.loss),
        a.evals.map((e) => e.loss),
        'validation loss after full fine-tuning',
      );
      const vk = split.memoryByDevice().find((d) => d.device === vulkan.name)!;
      assert.equal(vk.gradients, vk.weights, 'the gradients of block 0 live beside its weights');
      assert.equal(vk.optimizerState, 0, 'plain SGD keeps no state');
      // block 0 was updated on Vulkan0 as on the CPU, relative to the size of the update
      const x = split.model.weight(w).read();
      const y = single.model.weight(w).read();
      let diff = 0;
      let step = 0;
      for (let i = 0; i < x.length; i++) {
        diff = Math.max(diff, Math.abs(x[i]! - y[i]!));
        step = Math.max(step, Math.abs(y[i]! - before[i]!));
      }
      console.log(`${w}: largest update ${step.toExponential(2)}, difference ${diff.toExponential(2)}`);
      assert.ok(step > 0 && diff <= 0.01 * step, `${w}: updates differ by ${diff}, the largest is ${step}`);
    } finally {
      single.dispose();
      split.dispose();
    }
  });

  it('a model over max_memory on Vulkan0 fails there alone and trains split (CLI)', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    // the head group alone (embeddings and LM head, 2 x 32000 x 64 f32) is 16 MiB
    const common = [
      'train',
      '--model',
      dir,
      '--dataset',
      path.join(ROOT, 'data', 'style.jsonl'),
      '--max_steps',
      '1',
      '--context_length',
      '64',
      '--max_samples',
      '8',
      '--threads',
      '1',
      '--max_memory',
      `${vulkan.name.toLowerCase()}=4MiB`,
    ];
    const alone = path.join(tmp, 'out-alone');
    const r1 = qtune([...common, '--backend', vulkan.name, '--output_dir', alone]);
    assert.equal(r1.code, 2, r1.stderr); // a batch or model the device cannot hold is wrong input
    assert.match(r1.stderr, new RegExp(`${vulkan.name}: .* would pass its max_memory of 4\\.0 MiB`));
    assert.match(r1.stderr, /spread the model over more devices/);
    assert.ok(!existsSync(path.join(alone, 'adapter_model.safetensors')));

    const r2 = qtune([
      ...common,
      '--devices',
      `${vulkan.name},cpu`,
      '--output_dir',
      path.join(tmp, 'out-split'),
    ]);
    assert.equal(r2.code, 0, r2.stderr);
    assert.match(r2.stdout, new RegExp(`placement: ${vulkan.name}: blocks 0-1\\n`));
    assert.match(r2.stdout, /placement: CPU: embeddings, final norm, LM head\n/);
    assert.match(r2.stdout, new RegExp(`trained 1 steps \\(lora on ${vulkan.name}\\+CPU\\)`));
    const total = new RegExp(`memory on ${vulkan.name}: .*\\(total ([\\d.]+) (KiB|MiB)\\)`).exec(r2.stdout);
    assert.ok(total !== null, r2.stdout);
    assert.ok(total[2] === 'KiB' || Number(total[1]) <= 4, `Vulkan0 holds ${total[1]} ${total[2]}`);
  });
});
