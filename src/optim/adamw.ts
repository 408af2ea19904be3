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
 * lr and the bias corrections change every step, so they are per-run scalar inputs. AdamW runs as
 * ggml's fused `opt_step_adamw` (one in-place pass per parameter) where the device has it, else as
 * the graph ops above; Adam always as graph ops.
 */
import type { Backend } from '../engine/device.js';
import type { Graph } from '../tensor/graph.js';
import { ggml } from '../tensor/ops/common.js';
import { add, affine, div, mul, scale, sqr, sqrt, sub } from '../tensor/ops/elementwise.js';
import { contiguous } from '../tensor/ops/layout.js';
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
  private readonly fusedInputs = new WeakMap<Graph, Map<boolean, Tensor>>();

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
    if (this.decoupled && this.fusedUpdate(u)) return;
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

  /**
   * AdamW as ggml's fused `opt_step_adamw`: one pass over the parameter, its gradient and both
   * moments, in place, instead of ~10 elementwise ops each reading and writing the whole tensor
   * (full fine-tuning's update: 0.99 s of a 4.9 s step at the small shape). The same formula:
   * m, v as above, p ← p·(1 − lr·wd) − lr·(m·c₁)/(√(v·c₂) + ε), c = 1/(1 − βᵗ). False where the
   * device has no such kernel (the graph ops then run).
   */
  private fusedUpdate(u: ParamUpdate): boolean {
    const { graph: g, param: p } = u;
    if (p.dtype !== 'f32' || u.grad.dtype !== 'f32') return false;
    const decay = u.decays && this.weightDecay !== 0;
    const params = this.fusedParams(g, decay);
    const api = ggml();
    const grad = contiguous(u.grad);
    const m = u.slot('exp_avg');
    const v = u.slot('exp_avg_sq');
    api.set_param(p.ptr);
    const step = g.node(
      (ctx) => api.opt_step_adamw(ctx, p.ptr, grad.ptr, m.ptr, v.ptr, params.ptr),
      p.shape,
      'f32',
      false,
      'opt_step_adamw',
    );
    if (!p.backend.supportsOp(step.ptr)) return false;
    g.effect(step);
    return true;
  }

  /** The 7 values `opt_step_adamw` reads, one graph input per decay group, set before every run. */
  private fusedParams(g: Graph, decay: boolean): Tensor {
    let perGraph = this.fusedInputs.get(g);
    if (perGraph === undefined) {
      perGraph = new Map();
      this.fusedInputs.set(g, perGraph);
    }
    let input = perGraph.get(decay);
    if (input === undefined) {
      const x = g.input([7], 'f32', `adamw_params${decay ? '_decay' : ''}`);
      // runs after the base class's callback, which counted this update and took its lr
      g.beforeRun(() => {
        const t = this.step;
        const lr = this.lastLr;
        g.set(
          x,
          Float32Array.of(
            lr,
            this.beta1,
            this.beta2,
            this.eps,
            decay ? this.weightDecay : 0,
            1 / (1 - this.beta1 ** t),
            1 / (1 - this.beta2 ** t),
          ),
        );
      });
      perGraph.set(decay, x);
      input = x;
    }
    return input;
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
