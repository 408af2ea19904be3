/**
 * Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as lucidrains'
 * lion-pytorch, with decoupled weight decay:
 *
 *   c ← β₁m + (1 − β₁)g
 *   p ← p·(1 − lr·wd) − lr·sign(c)
 *   m ← β₂m + (1 − β₂)g
 */
import type { Backend } from '../engine/device.js';
import { add, mul, scale, sign, sub } from '../tensor/ops/elementwise.js';
import type { Tensor } from '../tensor/tensor.js';
import { GraphOptimizer, type ParamUpdate } from './base.js';
import { checkNumber } from './validate.js';

export interface LionOptions {
  /** Default 1e-4 (Lion wants a learning rate 3–10× smaller than AdamW's). */
  lr?: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.99. */
  beta2?: number;
  /** Decoupled, as AdamW; default 0. */
  weightDecay?: number;
  /** Which parameters decay; default {@link defaultDecays}. */
  decays?: (t: Tensor) => boolean;
}

/**
 * Lion: the sign of an interpolated momentum as the update.
 *
 * @example
 * const opt = new Lion(backend, params, { lr: 3e-5, weightDecay: 0.1 });
 * opt.build(graph, graph.backward(loss));
 */
export class Lion extends GraphOptimizer {
  readonly name = 'lion';
  readonly beta1: number;
  readonly beta2: number;
  readonly weightDecay: number;

  constructor(backend: Backend, params: readonly Tensor[], o: LionOptions = {}) {
    // checked before super() allocates the state, so a bad value leaks nothing
    const beta1 = checkNumber('Lion', 'beta1', o.beta1 ?? 0.9, { min: 0, max: 1 });
    const beta2 = checkNumber('Lion', 'beta2', o.beta2 ?? 0.99, { min: 0, max: 1 });
    const weightDecay = checkNumber('Lion', 'weightDecay', o.weightDecay ?? 0, { min: 0 });
    super('Lion', backend, params, o.lr ?? 1e-4, ['exp_avg'], o.decays);
    this.beta1 = beta1;
    this.beta2 = beta2;
    this.weightDecay = weightDecay;
  }

  protected hyperparameters(): Record<string, number> {
    return { beta1: this.beta1, beta2: this.beta2, weight_decay: this.weightDecay };
  }

  protected scalars(_t: number, lr: number): Record<string, number> {
    const s: Record<string, number> = { lr };
    if (this.weightDecay !== 0) s['decay'] = 1 - lr * this.weightDecay;
    return s;
  }

  protected update(u: ParamUpdate): void {
    const { graph: g, param: p, grad } = u;
    const m = u.slot('exp_avg');
    const c = add(scale(m, this.beta1), scale(grad, 1 - this.beta1));
    const kept = u.decays && this.weightDecay !== 0 ? mul(p, u.scalar('decay')) : p;
    g.assign(p, sub(kept, mul(sign(c), u.scalar('lr'))));
    g.assign(m, add(scale(m, this.beta2), scale(grad, 1 - this.beta2)));
  }
}
