/**
 * SGD with momentum, dampening, Nesterov momentum and L2 weight decay, as `torch.optim.SGD`:
 *
 *   g ← g + wd·p
 *   b ← g on the first step, else μb + (1 − τ)g        (with momentum μ ≠ 0)
 *   g ← g + μb with Nesterov, else b
 *   p ← p − lr·g
 *
 * Whether this is the first step is a per-run input (the factors of b and g), so a compiled graph
 * and a resumed optimizer both take the first-step branch exactly when PyTorch does.
 */
import type { Backend } from '../engine/device.js';
import { ConfigError } from '../errors.js';
import { add, mul, scale, sub } from '../tensor/ops/elementwise.js';
import type { Tensor } from '../tensor/tensor.js';
import { GraphOptimizer, type ParamUpdate } from './base.js';
import { checkBoolean, checkNumber } from './validate.js';

export interface SGDOptions {
  lr: number;
  /** μ; default 0 (plain SGD, no state). */
  momentum?: number;
  /** τ; default 0. */
  dampening?: number;
  /** Default false; needs momentum > 0 and dampening 0. */
  nesterov?: boolean;
  /** L2 penalty added to the gradient; default 0. */
  weightDecay?: number;
  /** Which parameters decay; default {@link defaultDecays}. */
  decays?: (t: Tensor) => boolean;
}

/**
 * Stochastic gradient descent as `torch.optim.SGD`.
 *
 * @example
 * const opt = new SGD(backend, params, { lr: 0.1, momentum: 0.9, nesterov: true });
 * opt.build(graph, graph.backward(loss));
 */
export class SGD extends GraphOptimizer {
  readonly name = 'sgd';
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  readonly weightDecay: number;

  constructor(backend: Backend, params: readonly Tensor[], o: SGDOptions) {
    // checked before super() allocates the state, so a bad value leaks nothing
    const momentum = checkNumber('SGD', 'momentum', o.momentum ?? 0, { min: 0 });
    const dampening = checkNumber('SGD', 'dampening', o.dampening ?? 0, { min: 0, max: 1 });
    const nesterov = checkBoolean('SGD', 'nesterov', o.nesterov ?? false);
    const weightDecay = checkNumber('SGD', 'weightDecay', o.weightDecay ?? 0, { min: 0 });
    checkNesterov('SGD', nesterov, momentum, dampening);
    super('SGD', backend, params, o.lr, momentum === 0 ? [] : ['momentum_buffer'], o.decays);
    this.momentum = momentum;
    this.dampening = dampening;
    this.nesterov = nesterov;
    this.weightDecay = weightDecay;
  }

  protected hyperparameters(): Record<string, number | boolean> {
    return {
      momentum: this.momentum,
      dampening: this.dampening,
      nesterov: this.nesterov,
      weight_decay: this.weightDecay,
    };
  }

  protected scalars(t: number, lr: number): Record<string, number> {
    if (this.momentum === 0) return { lr };
    const first = t === 1;
    return { lr, buf_keep: first ? 0 : this.momentum, grad_keep: first ? 1 : 1 - this.dampening };
  }

  protected update(u: ParamUpdate): void {
    const { graph: g, param: p } = u;
    let d = u.decays && this.weightDecay !== 0 ? add(u.grad, scale(p, this.weightDecay)) : u.grad;
    if (this.momentum !== 0) {
      const b = u.slot('momentum_buffer');
      const b2 = add(mul(b, u.scalar('buf_keep')), mul(d, u.scalar('grad_keep')));
      g.assign(b, b2);
      d = this.nesterov ? add(d, scale(b2, this.momentum)) : b2;
    }
    g.assign(p, sub(p, mul(d, u.scalar('lr'))));
  }
}

/** PyTorch's rule: Nesterov momentum needs momentum > 0 and no dampening. */
export function checkNesterov(where: string, nesterov: boolean, momentum: number, dampening: number): void {
  if (nesterov && (momentum === 0 || dampening !== 0)) {
    throw new ConfigError(
      `${where}.nesterov = true is not allowed with momentum = ${momentum} and dampening = ${dampening}: Nesterov momentum needs momentum > 0 and dampening = 0`,
      {
        hint: 'set momentum > 0 and dampening to 0, or nesterov to false',
        details: { field: 'nesterov', value: true },
      },
    );
  }
}
