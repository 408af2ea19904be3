/**
 * Float64 references of the optimizers, written from the published algorithm boxes (PyTorch's
 * torch.optim documentation for AdamW, Adam, SGD and Adadelta; Chen et al. 2023 / lion-pytorch for
 * Lion), one element at a time; and of the learning-rate schedules (Hugging Face transformers'
 * optimization.py). Nothing here calls qtune.
 */
import type { ScheduleConfig } from '../../src/optim/schedule.js';

export interface RefHyper {
  lr?: number;
  weight_decay?: number;
  betas?: [number, number];
  eps?: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  rho?: number;
}

/** The state of one parameter: its values and named buffers, all float64. */
export interface RefParam {
  p: Float64Array;
  buf: Record<string, Float64Array>;
}

export function refParam(values: ArrayLike<number>): RefParam {
  return { p: Float64Array.from(values), buf: {} };
}

function buffer(s: RefParam, name: string): Float64Array {
  s.buf[name] ??= new Float64Array(s.p.length);
  return s.buf[name];
}

/**
 * Applies update number `t` (1-based) with learning rate `lr` to `s`, given the gradient `grad`
 * at the current values; `decays` says whether weight decay applies to this parameter.
 */
export function refStep(
  name: string,
  h: RefHyper,
  s: RefParam,
  grad: Float64Array,
  t: number,
  lr: number,
  decays: boolean,
): void {
  const wd = decays ? (h.weight_decay ?? (name === 'adamw' ? 0.01 : 0)) : 0;
  const n = s.p.length;
  switch (name) {
    case 'adamw':
    case 'adam': {
      const [b1, b2] = h.betas ?? [0.9, 0.999];
      const eps = h.eps ?? 1e-8;
      const m = buffer(s, 'm');
      const v = buffer(s, 'v');
      for (let i = 0; i < n; i++) {
        let g = grad[i]!;
        if (name === 'adamw') s.p[i] = s.p[i]! * (1 - lr * wd);
        else g += wd * s.p[i]!;
        m[i] = b1 * m[i]! + (1 - b1) * g;
        v[i] = b2 * v[i]! + (1 - b2) * g * g;
        const mh = m[i]! / (1 - b1 ** t);
        const vh = v[i]! / (1 - b2 ** t);
        s.p[i] = s.p[i]! - (lr * mh) / (Math.sqrt(vh) + eps);
      }
      return;
    }
    case 'sgd': {
      const mu = h.momentum ?? 0;
      const tau = h.dampening ?? 0;
      const b = buffer(s, 'b');
      for (let i = 0; i < n; i++) {
        let g = grad[i]! + wd * s.p[i]!;
        if (mu !== 0) {
          b[i] = t === 1 ? g : mu * b[i]! + (1 - tau) * g;
          g = h.nesterov === true ? g + mu * b[i]! : b[i]!;
        }
        s.p[i] = s.p[i]! - lr * g;
      }
      return;
    }
    case 'adadelta': {
      const rho = h.rho ?? 0.9;
      const eps = h.eps ?? 1e-6;
      const v = buffer(s, 'square_avg');
      const u = buffer(s, 'acc_delta');
      for (let i = 0; i < n; i++) {
        const g = grad[i]! + wd * s.p[i]!;
        v[i] = rho * v[i]! + (1 - rho) * g * g;
        const delta = (Math.sqrt(u[i]! + eps) / Math.sqrt(v[i]! + eps)) * g;
        u[i] = rho * u[i]! + (1 - rho) * delta * delta;
        s.p[i] = s.p[i]! - lr * delta;
      }
      return;
    }
    case 'lion': {
      const [b1, b2] = h.betas ?? [0.9, 0.99];
      const m = buffer(s, 'm');
      for (let i = 0; i < n; i++) {
        const g = grad[i]!;
        const c = b1 * m[i]! + (1 - b1) * g;
        s.p[i] = s.p[i]! * (1 - lr * wd) - lr * Math.sign(c);
        m[i] = b2 * m[i]! + (1 - b2) * g;
      }
      return;
    }
    default:
      throw new Error(`reference: unknown optimizer ${name}`);
  }
}

/** HF's lr_lambda for each schedule (the warmup branch first, as every HF lambda has it). */
export function hfLambda(c: ScheduleConfig, W: number, k: number): number {
  const T = c.total_steps;
  if (k < W) return k / Math.max(1, W);
  const progress = (k - W) / Math.max(1, T - W);
  switch (c.name) {
    case 'constant':
      return 1;
    case 'linear':
      return Math.max(0, (T - k) / Math.max(1, T - W));
    case 'cosine': {
      const r = c.min_lr_ratio ?? 0;
      const factor = 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress));
      return Math.max(0, factor * (1 - r) + r);
    }
    case 'cosine_with_restarts':
      if (progress >= 1) return 0;
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * (((c.num_cycles ?? 1) * progress) % 1))));
    case 'polynomial': {
      const lrEnd = c.lr_end ?? 1e-7;
      if (k > T) return lrEnd / c.lr;
      const pct = 1 - (k - W) / (T - W);
      return ((c.lr - lrEnd) * pct ** (c.power ?? 1) + lrEnd) / c.lr;
    }
    case 'exponential':
      return c.gamma! ** (k - W);
  }
}
