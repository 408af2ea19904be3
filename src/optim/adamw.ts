/**
 * AdamW (Loshchilov & Hutter; PyTorch's `torch.optim.AdamW`) and Adam (`torch.optim.Adam`, whose
 * weight decay is an L2 term added to the gradient) written as graph ops: the update of every
 * parameter and of its moment estimates is part of the training step's graph, so a step is one
 * ggml compute on any device.
 *
 *   AdamW: p ← p·(1 − lr·wd)          Adam: g ← g + wd·p
 *   m ← β₁m + (1 − β₁)g          v ← β₂v + (1 − β₂)g²
 *   p ← p − lr·(m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
 *
 * lr and the bias corrections change every step, so they are per-run scalar inputs.
 */
import type { Backend } from '../engine/device.js';
import { add, affine, div, mul, scale, sqr, sqrt, sub } from '../tensor/ops/elementwise.js';
import type { Tensor } from '../tensor/tensor.js';
import { GraphOptimizer, type ParamUpdate } from './base.js';
import { checkNumber } from './validate.js';

export interface AdamWOptions {
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Default 0.01 for AdamW, 0 for Adam. */
  weightDecay?: number;
  /** Which parameters decay; default {@link defaultDecays} (matrices that are not norms or biases). */
  decays?: (t: Tensor) => boolean;
}

export type AdamOptions = AdamWOptions;

abstract class AdamFamily extends GraphOptimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private readonly decoupled: boolean;

  protected constructor(
    who: 'AdamW' | 'Adam',
    backend: Backend,
    params: readonly Tensor[],
    o: AdamWOptions,
    defaultDecay: number,
  ) {
    // checked before super() allocates the state, so a bad value leaks nothing
    const beta1 = checkNumber(who, 'beta1', o.beta1 ?? 0.9, { min: 0, max: 1, maxExclusive: true });
    const beta2 = checkNumber(who, 'beta2', o.beta2 ?? 0.999, { min: 0, max: 1, maxExclusive: true });
    const eps = checkNumber(who, 'eps', o.eps ?? 1e-8, { min: 0 });
    const weightDecay = checkNumber(who, 'weightDecay', o.weightDecay ?? defaultDecay, { min: 0 });
    super(who, backend, params, o.lr, ['exp_avg', 'exp_avg_sq'], o.decays);
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.decoupled = who === 'AdamW';
  }

  protected hyperparameters(): Record<string, number> {
    return { beta1: this.beta1, beta2: this.beta2, eps: this.eps, weight_decay: this.weightDecay };
  }

  protected scalars(t: number, lr: number): Record<string, number> {
    const s: Record<string, number> = {
      lr_corrected: lr / (1 - this.beta1 ** t),
      v_correction: 1 / (1 - this.beta2 ** t),
    };
    if (this.decoupled && this.weightDecay !== 0) s['decay'] = 1 - lr * this.weightDecay;
    return s;
  }

  protected update(u: ParamUpdate): void {
    const { graph: g, param: p } = u;
    const decay = u.decays && this.weightDecay !== 0;
    const grad = decay && !this.decoupled ? add(u.grad, scale(p, this.weightDecay)) : u.grad;
    const m = u.slot('exp_avg');
    const v = u.slot('exp_avg_sq');
    const m2 = add(scale(m, this.beta1), scale(grad, 1 - this.beta1));
    const v2 = add(scale(v, this.beta2), scale(sqr(grad), 1 - this.beta2));
    const denom = affine(sqrt(mul(v2, u.scalar('v_correction'))), 1, this.eps);
    const kept = decay && this.decoupled ? mul(p, u.scalar('decay')) : p;
    g.assign(m, m2);
    g.assign(v, v2);
    g.assign(p, sub(kept, div(mul(m2, u.scalar('lr_corrected')), denom)));
  }
}

/**
 * AdamW with decoupled weight decay, as `torch.optim.AdamW` (defaults β = (0.9, 0.999), ε = 1e-8,
 * weight decay 0.01 on the parameters {@link defaultDecays} selects).
 *
 * @example
 * const opt = new AdamW(backend, [loraA, loraB], { lr: 2e-4 });
 * opt.build(graph, graph.backward(loss));
 * graph.compile();
 * graph.run(); // one update
 */
export class AdamW extends AdamFamily {
  readonly name = 'adamw';
  constructor(backend: Backend, params: readonly Tensor[], o: AdamWOptions) {
    super('AdamW', backend, params, o, 0.01);
  }
}

/**
 * Adam with L2 weight decay added to the gradient, as `torch.optim.Adam` (defaults β = (0.9,
 * 0.999), ε = 1e-8, weight decay 0).
 *
 * @example
 * const opt = new Adam(backend, params, { lr: 1e-3, weightDecay: 1e-4 });
 * opt.build(graph, graph.backward(loss));
 */
export class Adam extends AdamFamily {
  readonly name = 'adam';
  constructor(backend: Backend, params: readonly Tensor[], o: AdamOptions) {
    super('Adam', backend, params, o, 0);
  }
}
