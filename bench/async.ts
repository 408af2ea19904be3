/**
 * `npm run bench:async`: the cost of the non-blocking loop. The same LoRA run (same seed, same data,
 * same losses) trained with the blocking `train()` and with `trainAsync()` (each graph computed
 * through koffi's async call on a worker thread), alternating `--rounds` times, at two shapes: the
 * parity fixture (hidden 64, 2 blocks, 2 × 32 tokens: a step of a few ms, where the hop to the
 * thread pool shows most) and a wider model (hidden 256, 2 blocks, 2 × 128 tokens).
 *
 *   npm run bench:async [-- --rounds 3] [--steps 40]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { cpuBackend } from '../src/engine/device.js';
import { Trainer } from '../src/train/trainer.js';
import { byteData, prepareFolder } from '../tests/helpers/finetune.js';
import { FIXTURE, writeRandomLlama } from '../tests/helpers/random-model.js';

const { values } = parseArgs({ options: { rounds: { type: 'string' }, steps: { type: 'string' } } });
const rounds = Number(values.rounds ?? 3);
const steps = Number(values.steps ?? 40);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-bench-async-'));
const wide = writeRandomLlama(
  path.join(tmp, 'wide'),
  {
    hidden_size: 256,
    intermediate_size: 768,
    num_hidden_layers: 2,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 32,
    max_position_embeddings: 256,
  },
  7,
);
const shapes = [
  { name: 'fixture (64 × 2 blocks, 2 × 32 tokens)', dir: FIXTURE, seq: 32, steps },
  { name: 'wide (256 × 2 blocks, 2 × 128 tokens)', dir: wide, seq: 128, steps: Math.max(4, steps / 8) },
];
for (const shape of shapes) {
  const data = byteData(shape.seq, 2 * shape.steps, 0);
  const rates: Record<string, number[]> = { train: [], trainAsync: [] };
  let lossesSame = true;
  for (let r = 0; r < rounds; r++) {
    const last: number[][] = [];
    for (const mode of ['train', 'trainAsync'] as const) {
      const t = new Trainer(prepareFolder(shape.dir, 'lora', cpuBackend()), data, {
        trainType: 'lora',
        batchSize: 2,
        maxSteps: shape.steps,
        seed: 1,
      });
      t.allocate(); // the graphs are built before the clock starts
      const t0 = performance.now();
      const result = mode === 'train' ? t.train() : await t.trainAsync();
      rates[mode]!.push(result.steps / ((performance.now() - t0) / 1000));
      last.push(result.losses);
      t.dispose();
    }
    lossesSame &&= JSON.stringify(last[0]) === JSON.stringify(last[1]);
  }
  const best = (xs: number[]) => Math.max(...xs);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const [b, a] = [rates['train']!, rates['trainAsync']!];
  console.log(
    `| ${shape.name} | ${shape.steps} | ${best(b).toFixed(1)} (${median(b).toFixed(1)}) | ${best(a).toFixed(1)} (${median(a).toFixed(1)}) | ${((best(a) / best(b) - 1) * 100).toFixed(1)}% (${((median(a) / median(b) - 1) * 100).toFixed(1)}%) | ${lossesSame ? 'yes' : 'NO'} |`,
  );
}
rmSync(tmp, { recursive: true, force: true });
