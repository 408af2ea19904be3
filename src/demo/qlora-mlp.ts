/**
 * The smallest real QLoRA: a 2-layer MLP whose first weight is frozen in q4_0 and adapted by a rank-4
 * LoRA (A Kaiming-uniform, B zero, scale alpha/r, as PEFT initialises them), with the second layer and
 * the adapter trained by AdamW written as graph ops. One graph per step (forward, backward, update),
 * built once and run for every step. The data is a fixed synthetic batch generated from a seed, so it
 * needs no download. `qtune demo` runs it; the test suite checks that its loss falls.
 */
import { createHash } from 'node:crypto';
import type { Backend } from '../engine/device.js';
import { AdamW } from '../optim/adamw.js';
import { Graph } from '../tensor/graph.js';
import { add, scale } from '../tensor/ops/elementwise.js';
import { crossEntropy } from '../tensor/ops/loss.js';
import { linear } from '../tensor/ops/matmul.js';
import { silu } from '../tensor/ops/nn.js';
import { TensorStore } from '../tensor/store.js';
import { gaussian, seededUniform } from '../util/random.js';

export interface QloraMlpOptions {
  steps?: number;
  lr?: number;
  seed?: number;
  /** Called after every step with its loss. */
  onStep?: (step: number, loss: number) => void;
}

export interface QloraMlpResult {
  losses: number[];
  /** sha256 of the frozen q4_0 weight's bytes before and after training. */
  baseHashBefore: string;
  baseHashAfter: string;
  msPerStep: number;
}

const IN = 64;
const HIDDEN = 96;
const CLASSES = 10;
const RANK = 4;
const ALPHA = 8;
const BATCH = 48;

export function trainQloraMlp(backend: Backend, o: QloraMlpOptions = {}): QloraMlpResult {
  const steps = o.steps ?? 150;
  const rand = seededUniform(o.seed ?? 42);
  const store = TensorStore.create(backend, [
    { name: 'w1', shape: [HIDDEN, IN], dtype: 'q4_0' },
    { name: 'lora_a', shape: [RANK, IN], dtype: 'f32', requiresGrad: true },
    { name: 'lora_b', shape: [HIDDEN, RANK], dtype: 'f32', requiresGrad: true },
    { name: 'w2', shape: [CLASSES, HIDDEN], dtype: 'f32', requiresGrad: true },
  ]);
  const w1 = store.get('w1');
  const a = store.get('lora_a');
  const b = store.get('lora_b');
  const w2 = store.get('w2');
  store.write(w1, gaussian(rand, HIDDEN * IN, 1 / Math.sqrt(IN)));
  const bound = 1 / Math.sqrt(IN); // kaiming_uniform_(a=√5)
  store.write(
    a,
    Float32Array.from({ length: RANK * IN }, () => (2 * rand() - 1) * bound),
  );
  store.write(w2, gaussian(rand, CLASSES * HIDDEN, 1 / Math.sqrt(HIDDEN)));
  const hash = () => createHash('sha256').update(store.readBytes(w1)).digest('hex');
  const baseHashBefore = hash();

  const g = new Graph(backend);
  const opt = new AdamW(backend, [a, b, w2], { lr: o.lr ?? 1e-2, weightDecay: 0 });
  try {
    const x = g.input([BATCH, IN], 'f32', 'x');
    const labels = g.input([BATCH], 'i32', 'labels');
    const base = linear(x, w1); // (B, HIDDEN), frozen q4_0
    const delta = scale(linear(linear(x, a), b), ALPHA / RANK); // LoRA: (α/r)·B·A·x
    const logits = linear(silu(add(base, delta)), w2);
    const loss = crossEntropy(logits, labels);
    opt.build(g, g.backward(loss, [a, b, w2]));
    const lossOut = g.output(loss);
    g.compile();
    g.set(x, gaussian(rand, BATCH * IN));
    g.set(
      labels,
      Int32Array.from({ length: BATCH }, () => Math.floor(rand() * CLASSES)),
    );
    const losses: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) {
      g.run();
      const l = g.read(lossOut)[0]!;
      losses.push(l);
      o.onStep?.(i + 1, l);
    }
    const msPerStep = (performance.now() - t0) / steps;
    return { losses, baseHashBefore, baseHashAfter: hash(), msPerStep };
  } finally {
    g.dispose();
    opt.dispose();
    store.dispose();
  }
}
