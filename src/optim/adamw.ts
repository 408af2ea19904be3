/**
 * AdamW (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW`) written as graph ops: the update of
 * every parameter and of its moment estimates is part of the training step's graph, so a step is
 * one ggml compute on any device.
 *
 *   p ← p·(1 − lr·wd)
 *   m ← β₁m + (1 − β₁)g          v ← β₂v + (1 − β₂)g²
 *   p ← p − lr·(m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
 *
 * lr and the bias corrections change every step, so they are per-run scalar inputs.
 */
import type { Backend } from '../engine/device.js';
import { QtuneError } from '../errors.js';
import type { Graph } from '../tensor/graph.js';
import { add, affine, div, mul, scale, sqr, sqrt, sub } from '../tensor/ops/elementwise.js';
import { TensorStore } from '../tensor/store.js';
import type { Tensor } from '../tensor/tensor.js';

export interface AdamWOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
}

export class AdamW {
  readonly params: readonly Tensor[];
  /** The learning rate used by the next step; change it between runs for a schedule. */
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly state: TensorStore;
  private t = 0;

  constructor(backend: Backend, params: readonly Tensor[], o: AdamWOptions) {
    for (const p of params) {
      if (p.kind !== 'stored' || !p.requiresGrad) {
        throw new QtuneError('INVALID_ARGUMENT', `AdamW: ${p.toString()} is not a trainable stored tensor`);
      }
    }
    this.params = params;
    this.lr = o.lr;
    this.beta1 = o.beta1 ?? 0.9;
    this.beta2 = o.beta2 ?? 0.999;
    this.eps = o.eps ?? 1e-8;
    this.weightDecay = o.weightDecay ?? 0.01;
    this.state = TensorStore.create(
      backend,
      params.flatMap((p, i) => [
        { name: `m${i}`, shape: p.shape, dtype: 'f32' as const },
        { name: `v${i}`, shape: p.shape, dtype: 'f32' as const },
      ]),
    );
  }

  /** Steps taken so far. */
  get step(): number {
    return this.t;
  }

  /** Adds the update of every parameter to `g`, given their gradients (from `g.backward`). */
  build(g: Graph, grads: Map<Tensor, Tensor>): void {
    g.noGrad(() => {
      const stepLr = g.input([1], 'f32', 'adamw_lr_corrected');
      const vCorr = g.input([1], 'f32', 'adamw_v_correction');
      const decay = g.input([1], 'f32', 'adamw_decay');
      g.beforeRun(() => {
        this.t++;
        g.set(stepLr, Float32Array.of(this.lr / (1 - this.beta1 ** this.t)));
        g.set(vCorr, Float32Array.of(1 / (1 - this.beta2 ** this.t)));
        g.set(decay, Float32Array.of(1 - this.lr * this.weightDecay));
      });
      this.params.forEach((p, i) => {
        const grad = grads.get(p);
        if (grad === undefined) throw new QtuneError('GRAPH', `AdamW: no gradient for ${p.toString()}`);
        const m = this.state.get(`m${i}`);
        const v = this.state.get(`v${i}`);
        const m2 = add(scale(m, this.beta1), scale(grad, 1 - this.beta1));
        const v2 = add(scale(v, this.beta2), scale(sqr(grad), 1 - this.beta2));
        const denom = affine(sqrt(mul(v2, vCorr)), 1, this.eps);
        const p2 = sub(mul(p, decay), div(mul(m2, stepLr), denom));
        g.assign(m, m2);
        g.assign(v, v2);
        g.assign(p, p2);
      });
    });
  }

  dispose(): void {
    this.state.dispose();
  }
}
