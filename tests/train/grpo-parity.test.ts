/**
 * GRPO end to end on a tiny model against PyTorch: scripts/grpo_reference.py computes, in float64 on
 * the parity fixture's Llama (tests/fixtures/parity/llama_gqa) with a LoRA on every linear layer,
 * two prompts × G = 2 completions' log-probs under the policy and the reference (the LoRA off), the
 * group advantages, TRL's per-token GRPO loss (clipped ratio, k3 KL with beta 0.04, `dapo`
 * normalisation) and its gradients for LoRA A and B (tests/fixtures/grpo-parity/). qtune reads the
 * log-probs with Trainer.tokenLogProbs, computes the loss and weights with grpo-loss.ts, and takes one
 * weighted step with plain SGD at lr 1 and no clipping, so the change of each adapter tensor is minus
 * its gradient. Bound: 1e-3 relative (f32 on the CPU).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { BackendManager } from '../../src/backends/manager.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { groupAdvantages, grpoLoss } from '../../src/train/grpo-loss.js';
import { Trainer } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { prepareFolder } from '../helpers/finetune.js';
import { relErr } from '../helpers/ref.js';

const DIR = path.join(ROOT, 'tests', 'fixtures', 'grpo-parity');

interface Reference {
  model: string;
  batch: number;
  num_generations: number;
  ids: number[][];
  labels: number[][];
  rewards: number[];
  advantages: number[];
  beta: number;
  epsilon: number;
  lora: { r: number; lora_alpha: number };
  loss: number;
  logp: number[][];
  ref: number[][];
  kl: number;
}

describe('GRPO against PyTorch', () => {
  it('log-probs, advantages, loss, KL and the LoRA gradients of one step (within 1e-3)', () => {
    const ref = JSON.parse(readFileSync(path.join(DIR, 'reference.json'), 'utf8')) as Reference;
    const backend = new BackendManager().select('cpu');
    const prepared = prepareFolder(
      path.join(ROOT, 'tests', 'fixtures', 'parity', ref.model),
      'lora',
      backend,
    );
    const examples = ref.ids.map((ids, b) => ({
      ids: Int32Array.from(ids),
      labels: Int32Array.from(ref.labels[b]!),
    }));
    const trainer = new Trainer(
      prepared,
      { train: examples },
      {
        trainType: 'lora',
        lora: { rank: ref.lora.r, alpha: ref.lora.lora_alpha },
        batchSize: ref.batch,
        maxSteps: 1,
        maxGradNorm: 0,
        optimizer: { name: 'sgd', lr: 1 },
      },
    );
    const values = SafetensorsFile.open(path.join(DIR, 'adapter.safetensors'));
    const expected = SafetensorsFile.open(path.join(DIR, 'grads.safetensors'));
    try {
      const params = new Map(trainer.params.map((p) => [p.name, p]));
      assert.deepEqual([...params.keys()].sort(), values.names().sort());
      for (const n of values.names()) params.get(n)!.store!.write(params.get(n)!, values.readF32(n));

      const logp = trainer.tokenLogProbs(examples);
      const refLogp = trainer.tokenLogProbs(examples, { adapters: false });
      assert.ok(
        relErr(
          logp.flatMap((x) => [...x]),
          ref.logp.flat(),
        ) <= 1e-4,
        'policy log-probs',
      );
      assert.ok(
        relErr(
          refLogp.flatMap((x) => [...x]),
          ref.ref.flat(),
        ) <= 1e-4,
        'reference log-probs',
      );
      const adv = groupAdvantages(ref.rewards, ref.num_generations);
      assert.ok(relErr(adv, ref.advantages) <= 1e-12, 'advantages');

      const seqs = logp.map((lp, i) => ({ logp: lp, old: lp, ref: refLogp[i]!, advantage: adv[i]! }));
      const o = { epsilon: ref.epsilon, beta: ref.beta, lossType: 'dapo' as const, maxCompletionLength: 8 };
      const r = grpoLoss(seqs, o);
      assert.ok(
        Math.abs(r.loss - ref.loss) <= 1e-3 * Math.abs(ref.loss),
        `loss ${r.loss} vs PyTorch ${ref.loss}`,
      );
      assert.ok(Math.abs(r.kl - ref.kl) <= 1e-3 * ref.kl, `kl ${r.kl} vs PyTorch ${ref.kl}`);

      const before = new Map([...params].map(([n, p]) => [n, p.store!.read(p).slice()]));
      const weights = r.weights.map((w) => Float32Array.from(w));
      const step = trainer.weightedStep([{ examples, weights }], { count: 1, loss: r.loss });
      assert.ok(Math.abs(step.loss - r.loss) <= 1e-9 * Math.abs(r.loss), 'the step logs the loss given');
      let worst = 0;
      for (const n of expected.names()) {
        const p = params.get(n)!;
        const after = p.store!.read(p);
        const grad = before.get(n)!.map((v, i) => v - after[i]!); // SGD at lr 1: p ← p − g
        const err = relErr(grad, expected.readF32(n));
        worst = Math.max(worst, err);
        assert.ok(err <= 1e-3, `gradient of ${n} differs from PyTorch by ${err.toExponential(2)}`);
      }
      console.log(
        `# grpo parity: loss ${Math.abs(r.loss / ref.loss - 1).toExponential(2)}, worst gradient ${worst.toExponential(2)} (relative, ${expected.names().length} tensors)`,
      );
    } finally {
      values.close();
      expected.close();
      trainer.dispose();
    }
  });
});
