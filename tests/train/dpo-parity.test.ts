/**
 * DPO end to end against PyTorch: scripts/dpo_reference.py computes in float64, on the parity
 * fixture's Llama with LoRA on every linear layer (tests/fixtures/dpo-parity/), TRL's sigmoid DPO
 * loss (beta 0.1, label_smoothing 0.1) of two pairs whose policy is the adapted model and whose
 * reference is the base, its metrics, and the gradients of every LoRA A and B. qtune runs one DPO
 * step of the shipped objective with the fixture's adapter values; with SGD at lr 1 and no clipping
 * the update is the gradient (before − after). Bound: 1e-3 relative (f32 on the CPU).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { Trainer, type LogRecord } from '../../src/train/trainer.js';
import type { Example } from '../../src/data/example.js';
import { ROOT } from '../helpers/cli.js';
import { prepareFolder } from '../helpers/finetune.js';
import { relErr } from '../helpers/ref.js';

const DIR = path.join(ROOT, 'tests', 'fixtures', 'dpo-parity');
const ref = JSON.parse(readFileSync(path.join(DIR, 'reference.json'), 'utf8')) as {
  ids: number[][];
  labels: number[][];
  beta: number;
  label_smoothing: number;
  loss: number;
  metrics: Record<string, number>;
};

describe('DPO against PyTorch (scripts/dpo_reference.py)', () => {
  it('one step: the loss, TRL’s metrics and every LoRA gradient (within 1e-3 relative)', () => {
    const seq = (k: number): Example => ({
      ids: Int32Array.from(ref.ids[k]!),
      labels: Int32Array.from(ref.labels[k]!),
    });
    const train = [0, 1].map((k) => ({ ...seq(k), rejected: seq(k + 2) }));
    const records: LogRecord[] = [];
    const t = new Trainer(
      prepareFolder(path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa'), 'lora', cpuBackend()),
      { train },
      {
        trainType: 'lora',
        lora: { rank: 8, alpha: 16 },
        objective: 'dpo',
        preference: { beta: ref.beta, labelSmoothing: ref.label_smoothing },
        batchSize: 2,
        maxSteps: 1,
        padding: 'max_length',
        maxGradNorm: 0,
        optimizer: { name: 'sgd', lr: 1 },
        onLog: (r) => records.push(r),
      },
    );
    const values = SafetensorsFile.open(path.join(DIR, 'adapter.safetensors'));
    const expected = SafetensorsFile.open(path.join(DIR, 'grads.safetensors'));
    try {
      const params = new Map(t.params.map((p) => [p.name, p]));
      assert.deepEqual([...params.keys()].sort(), values.names().sort());
      for (const n of values.names()) params.get(n)!.store!.write(params.get(n)!, values.readF32(n));
      t.train();
      const step = records.find((r) => r.kind === 'step')!;
      assert.ok(Math.abs(step.loss! - ref.loss) < 1e-4 * ref.loss, `loss ${step.loss} vs ${ref.loss}`);
      for (const [k, v] of Object.entries(ref.metrics))
        assert.ok(
          Math.abs(step.metrics![k]! - v) < 1e-3 * Math.max(1, Math.abs(v)),
          `${k}: ${step.metrics![k]} vs ${v}`,
        );
      let worst = 0;
      for (const n of expected.names()) {
        const p = params.get(n)!;
        const before = values.readF32(n);
        const after = p.store!.read(p);
        const grad = before.map((x, i) => x - after[i]!);
        const err = relErr(grad, expected.readF32(n));
        worst = Math.max(worst, err);
        assert.ok(err <= 1e-3, `gradient of ${n} differs from PyTorch by ${err.toExponential(2)}`);
      }
      console.log(
        `# dpo parity: loss ${step.loss} (PyTorch ${ref.loss}), worst gradient ${worst.toExponential(2)}`,
      );
    } finally {
      values.close();
      expected.close();
      t.dispose();
    }
  });
});
