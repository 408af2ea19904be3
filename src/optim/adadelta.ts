/**
 * Adadelta (Zeiler 2012) as `torch.optim.Adadelta`, with L2 weight decay:
 *
 *   g ← g + wd·p
 *   v ← ρv + (1 − ρ)g²
 *   Δ ← √(u + ε) / √(v + ε) · g
 *   u ← ρu + (1 − ρ)Δ²
 *   p ← p − lr·Δ
 */
import type { Backend } from '../engine/device.js';
import { add, affine, div, mul, scale, sqr, sqrt, sub } from '../tensor/ops/elementwise.js';
import type { Tensor } from '../tensor/tensor.js';
import { GraphOptimizer, type ParamUpdate } from './base.js';
import { checkNumber } from './validate.js';

export interface AdadeltaOptions {
  /** Default 1.0, as PyTorch. */
  lr?: number;
  /** ρ; default 0.9. */
  rho?: number;
  /** Default 1e-6. */
  eps?: number;
  /** L2 penalty added to the gradient; default 0. */
  weightDecay?: number;
  /** Which parameters decay; default {@link defaultDecays}. */
  decays?: (t: Tensor) => boolean;
}

/**
 * Adadelta as `torch.optim.Adadelta`.
 *
 * @example
 * const opt = new Adadelta(backend, params, { rho: 0.95 });
 * opt.build(graph, graph.backward(loss));
 */
export class Adadelta extends GraphOptimizer {
  readonly name = 'adadelta';
  readonly rho: number;
  readonly eps: number;
  readonly weightDecay: number;

  constructor(backend: Backend, params: readonly Tensor[], o: AdadeltaOptions = {}) {
    // checked before super() allocates the state, so a bad value leaks nothing
    const rho = checkNumber('Adadelta', 'rho', o.rho ?? 0.9, { min: 0, max: 1 });
    const eps = checkNumber('Adadelta', 'eps', o.eps ?? 1e-6, { min: 0 });
    const weightDecay = checkNumber('Adadelta', 'weightDecay', o.weightDecay ?? 0, { min: 0 });
    super('Adadelta', backend, params, o.lr ?? 1, ['square_avg', 'acc_delta'], o.decays);
    this.rho = rho;
    this.eps = eps;
    this.weightDecay = weightDecay;
  }

  protected hyperparameters(): Record<string, number> {
    return { rho: this.rho, eps: this.eps, weight_decay: this.weightDecay };
  }

  protected scalars(_t: number, lr: number): Record<string, number> {
    return { lr };
  }

  protected update(u: ParamUpdate): void {
    const { graph: g, param: p } = u;
    const d = u.decays && this.weightDecay !== 0 ? add(u.grad, scale(p, this.weightDecay)) : u.grad;
    const v = u.slot('square_avg');
    const acc = u.slot('acc_delta');
    const v2 = add(scale(v, this.rho), scale(sqr(d), 1 - this.rho));
    const delta = mul(div(sqrt(affine(acc, 1, this.eps)), sqrt(affine(v2, 1, this.eps))), d);
    g.assign(v, v2);
    g.assign(acc, add(scale(acc, this.rho), scale(sqr(delta), 1 - this.rho)));
    g.assign(p, sub(p, mul(delta, u.scalar('lr'))));
  }
}
