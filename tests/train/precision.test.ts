/**
 * The precision modes store and multiply in the types they name. For each mode and for LoRA and full
 * fine-tuning, a Trainer over the parity fixture's Llama (untied head, 2 blocks of 7 linear layers)
 * builds its step, and the test reads the stored weights' types and the source types of every
 * MUL_MAT node of the accumulate graph (forward and backward). With L the mode's low type (bf16 for
 * bf16 and bf16_autocast, f16 for fp16 and fp16_autocast):
 *
 *   stored   fp32, *_autocast: every weight f32.  bf16/fp16: LoRA's frozen linear, embedding and head
 *            weights in L, norms f32; full fine-tuning keeps every weight f32 (trainable masters).
 *            Adapters (A, B, DoRA magnitude) are always f32, the update graph is all f32.
 *   matmuls  fp32: every source f32. Low modes: every matmul of a linear layer's or the head's weight
 *            (forward x·Wᵀ and backward dY·W, the weight stored in L or cast to L in the graph) takes
 *            the weight in L and the activations in f32 (ggml's CPU kernel rounds them to L inside
 *            the dot product); every other matmul (LoRA's A and B, attention scores, weight
 *            gradients) is f32 on both sides.
 *
 * The first step's loss must stay within one unit roundoff of the type of the fp32 loss (relative):
 * bf16 2⁻⁸ ≈ 3.9e-3, f16 2⁻¹¹ ≈ 4.9e-4 — rounding weights and activations by at most u each perturbs
 * the logits by about u relative (less, as the roundings partly cancel in the dot products), and the
 * loss by less still. Measured here: bf16 1.0e-4 to 2.6e-4 (15-38× under), f16 6e-6 to 1.5e-5
 * (30-80× under). The loss must also differ from the fp32 loss at all: a mode that silently computed
 * in f32 would run fp32's graph and give its loss bit for bit.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { llamaWeights } from '../../src/models/llama.js';
import { readConfig } from '../../src/models/load.js';
import type { GraphNode } from '../../src/tensor/index.js';
import type { FrozenCopies } from '../../src/train/frozen.js';
import { PRECISIONS, Trainer, type Precision } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const DATA = byteData(16, 4, 1);
const CONFIG = readConfig(FIXTURE);
const ROLES = new Map(llamaWeights(CONFIG).map((w) => [w.name, w.role]));
/** The weights the linear layers and the head multiply by: 2 × 7 linears and lm_head. */
const MATMUL_WEIGHTS = [...ROLES].filter(([, r]) => r === 'linear' || r === 'lm_head').map(([n]) => n);

const LOW: Record<Precision, 'f32' | 'bf16' | 'f16'> = {
  fp32: 'f32',
  bf16: 'bf16',
  fp16: 'f16',
  bf16_autocast: 'bf16',
  fp16_autocast: 'f16',
};
/** One unit roundoff of the low type: the loss bound relative to fp32. */
const BOUND = { bf16: 2 ** -8, f16: 2 ** -11 };

/** Ops that pass a tensor through (a cast, a transposed copy, a view), followed back to the weight. */
const PASS = new Set(['CPY', 'CONT', 'TRANSPOSE', 'RESHAPE', 'VIEW', 'PERMUTE']);

/** The model weight a matmul source comes from through casts, copies and views, or null. */
function weightOf(nodes: readonly GraphNode[], src: GraphNode['src'][number]): string | null {
  let s = src;
  for (;;) {
    if (s.node === null) {
      // a trainer's persistent copy of a frozen weight: `<name>.T` (Wᵀ) or `<name>.<type>` (W cast)
      const name = s.name.replace(/\.(T|bf16|f16)$/, '');
      return ROLES.has(name) ? name : null;
    }
    const n = nodes[s.node]!;
    if (!PASS.has(n.op) || n.src[0] === undefined) return null;
    s = n.src[0];
  }
}

interface Run {
  loss: number;
  /** frozen weights with persistent copies */
  copies: number;
  stored: Map<string, string>;
  params: string[];
  matmuls: { weight: string | null; src: string[] }[];
  update: string[];
}

function run(trainType: 'lora' | 'full', precision: Precision, copies: FrozenCopies): Run {
  const t = new Trainer(prepareFolder(FIXTURE, trainType, cpuBackend(), precision), DATA, {
    trainType,
    precision,
    frozenWeightCopies: copies,
    batchSize: 2,
    maxSteps: 1,
    seed: 5,
  });
  try {
    const stored = new Map(t.model.tensors().map((w) => [w.name, w.dtype as string]));
    const nodes = t.graphNodes();
    const matmuls = nodes.accumulate
      .filter((n) => n.op === 'MUL_MAT')
      .map((n) => ({ weight: weightOf(nodes.accumulate, n.src[0]!), src: n.src.map((s) => s.dtype) }));
    const loss = t.step().loss;
    const choices = t.kernelChoices()!;
    return {
      loss,
      copies: choices.frozenCopies.count,
      stored,
      params: t.params.map((p) => p.dtype),
      matmuls,
      update: [...new Set(nodes.update.map((n) => n.dtype))],
    };
  } finally {
    t.dispose();
  }
}

for (const [trainType, copies] of [
  ['lora', 'off'],
  ['lora', 'on'],
  ['full', 'off'],
] as const) {
  describe(`precision modes store and multiply in their types: ${trainType}, frozen weight copies ${copies}`, () => {
    let base: Run | undefined;
    const fp32 = (): Run => (base ??= run(trainType, 'fp32', copies));
    for (const precision of PRECISIONS) {
      const low = LOW[precision];
      it(`${precision}: weights, matmul inputs${low === 'f32' ? '' : `, loss within ${BOUND[low].toExponential(1)} of fp32`}`, () => {
        const r = precision === 'fp32' ? fp32() : run(trainType, precision, copies);
        // LoRA's frozen base: every linear and head weight has its copies when they are on
        assert.equal(r.copies, copies === 'on' ? MATMUL_WEIGHTS.length : 0, `${precision}: copies`);
        if (copies === 'on') {
          // the copies hold what the in-graph casts and transposes compute: the same loss, bit for bit
          const inGraph = run(trainType, precision, 'off');
          assert.equal(r.loss, inGraph.loss, `${precision}: loss with copies vs without`);
        }
        // stored weights
        const storesLow = trainType === 'lora' && (precision === 'bf16' || precision === 'fp16');
        for (const [name, dtype] of r.stored) {
          const want = storesLow && ROLES.get(name) !== 'norm' ? low : 'f32';
          assert.equal(dtype, want, `${precision}: ${name} is stored in ${dtype}, expected ${want}`);
        }
        assert.deepEqual(
          [...new Set(r.params)],
          ['f32'],
          `${precision}: trainable tensors in ${r.params.join(', ')}`,
        );
        assert.deepEqual(r.update, ['f32'], `${precision}: update graph types ${r.update.join(', ')}`);
        // matmuls: every linear and head weight is multiplied, in the low type; all else in f32
        const reached = new Set(r.matmuls.flatMap((m) => (m.weight === null ? [] : [m.weight])));
        assert.deepEqual([...reached].sort(), [...MATMUL_WEIGHTS].sort());
        for (const m of r.matmuls) {
          const want = m.weight !== null ? [low, 'f32'] : ['f32', 'f32'];
          assert.deepEqual(
            m.src,
            want,
            `${precision}: matmul of ${m.weight ?? 'activations'} takes ${m.src.join(' x ')}`,
          );
        }
        if (low === 'f32') return;
        const ref = fp32().loss;
        const rel = Math.abs(r.loss - ref) / ref;
        console.log(
          `# ${trainType} ${precision}: first-step loss ${r.loss.toFixed(6)} vs fp32 ${ref.toFixed(6)}, relative ${rel.toExponential(2)} (bound ${BOUND[low].toExponential(2)})`,
        );
        assert.ok(rel <= BOUND[low], `${precision}: loss ${r.loss} vs fp32 ${ref} (${rel.toExponential(2)})`);
        assert.ok(rel > 0, `${precision}: the loss equals fp32's bit for bit: nothing ran in ${low}`);
      });
    }
  });
}
