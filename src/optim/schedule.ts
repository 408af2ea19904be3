/**
 * Learning-rate schedules as Hugging Face transformers' `get_scheduler` defines them
 * (transformers/optimization.py): the learning rate of update k (0-based) is lr·λ(k), with a linear
 * warmup λ(k) = k / max(1, warmup) for k < warmup, then:
 *
 *   constant              1
 *   linear                max(0, (T − k) / max(1, T − W))
 *   cosine                r + (1 − r)·½(1 + cos(π·p)),  p = (k − W) / max(1, T − W), r = min_lr_ratio
 *   cosine_with_restarts  0 when p ≥ 1, else ½(1 + cos(π·((n·p) mod 1))),  n = num_cycles
 *   polynomial            ((lr − lr_end)·(1 − (k − W)/(T − W))^power + lr_end) / lr; lr_end / lr after T
 *   exponential           γ^(k − W)
 *
 * where T = total_steps and W = the warmup steps (`warmup_steps`, or ⌈T·warmup_ratio⌉ as HF's
 * TrainingArguments computes it).
 *
 * @example
 * const s = createSchedule({ name: 'cosine', lr: 2e-4, total_steps: 1000, warmup_ratio: 0.03 });
 * s.lrAt(0); // 0 (warmup starts from 0, as HF)
 * s.lrAt(30); // 2e-4
 */
import { ConfigError, QtuneError } from '../errors.js';
import { checkChoice, checkKnownFields, checkNumber } from './validate.js';

/** The schedules {@link createSchedule} knows (for the CLI's choices). */
export const SCHEDULE_NAMES = [
  'constant',
  'linear',
  'cosine',
  'cosine_with_restarts',
  'polynomial',
  'exponential',
] as const;
export type ScheduleName = (typeof SCHEDULE_NAMES)[number];

export interface ScheduleConfig {
  name: ScheduleName;
  /** The peak learning rate (reached at the end of warmup). */
  lr: number;
  /** Updates in the whole run. */
  total_steps: number;
  /** Warmup length in updates; give this or `warmup_ratio`, not both. Default 0. */
  warmup_steps?: number;
  /** Warmup as a fraction of total_steps (rounded up). */
  warmup_ratio?: number;
  /** cosine: the floor as a fraction of lr; default 0. */
  min_lr_ratio?: number;
  /** cosine_with_restarts: hard restarts; default 1. */
  num_cycles?: number;
  /** polynomial: default 1 (linear decay to lr_end). */
  power?: number;
  /** polynomial: the final learning rate; default 1e-7, must be below lr. */
  lr_end?: number;
  /** exponential: the factor per update after warmup, in (0, 1]. */
  gamma?: number;
}

export interface Schedule {
  readonly name: ScheduleName;
  readonly lr: number;
  readonly totalSteps: number;
  /** The warmup length in updates (from warmup_steps or warmup_ratio). */
  readonly warmupSteps: number;
  /** The learning rate of update `step` (0-based: the update about to be applied). */
  lrAt(step: number): number;
}

const OPTIONS: Record<ScheduleName, readonly string[]> = {
  constant: [],
  linear: [],
  cosine: ['min_lr_ratio'],
  cosine_with_restarts: ['num_cycles'],
  polynomial: ['power', 'lr_end'],
  exponential: ['gamma'],
};
const COMMON = ['name', 'lr', 'total_steps', 'warmup_steps', 'warmup_ratio'];

/**
 * Builds a schedule, checking every field.
 *
 * @throws ConfigError naming the field, its value and what is allowed.
 * @example
 * const s = createSchedule({ name: 'linear', lr: 1e-3, total_steps: 100, warmup_steps: 10 });
 * s.lrAt(5); // 5e-4
 * s.lrAt(55); // 5e-4
 */
export function createSchedule(config: ScheduleConfig): Schedule {
  const where = 'schedule';
  const name = checkChoice(where, 'name', config.name, SCHEDULE_NAMES);
  checkKnownFields(where, config, [...COMMON, ...OPTIONS[name]], `the ${name} schedule`);
  const lr = checkNumber(where, 'lr', config.lr, { min: 0, minExclusive: true });
  const total = checkNumber(where, 'total_steps', config.total_steps, { int: true, min: 1 });
  if (config.warmup_steps !== undefined && config.warmup_ratio !== undefined) {
    throw new ConfigError(
      `${where}.warmup_steps = ${config.warmup_steps} and ${where}.warmup_ratio = ${config.warmup_ratio} are both set: give one of them`,
      { hint: 'remove warmup_steps or warmup_ratio', details: { field: 'warmup_steps, warmup_ratio' } },
    );
  }
  let warmup = 0;
  if (config.warmup_steps !== undefined) {
    warmup = checkNumber(where, 'warmup_steps', config.warmup_steps, { int: true, min: 0, max: total });
  } else if (config.warmup_ratio !== undefined) {
    // HF's TrainingArguments.get_warmup_steps: math.ceil(num_training_steps * warmup_ratio)
    warmup = Math.ceil(total * checkNumber(where, 'warmup_ratio', config.warmup_ratio, { min: 0, max: 1 }));
  }
  const W = warmup;
  const span = Math.max(1, total - W);
  let decay: (k: number) => number;
  switch (name) {
    case 'constant':
      decay = () => 1;
      break;
    case 'linear':
      decay = (k) => Math.max(0, (total - k) / span);
      break;
    case 'cosine': {
      const r = checkNumber(where, 'min_lr_ratio', config.min_lr_ratio ?? 0, { min: 0, max: 1 });
      decay = (k) => {
        const p = (k - W) / span;
        // HF's num_cycles = 0.5: half a cosine period from lr down to the floor
        return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * p)) * (1 - r) + r);
      };
      break;
    }
    case 'cosine_with_restarts': {
      const n = checkNumber(where, 'num_cycles', config.num_cycles ?? 1, { int: true, min: 1 });
      decay = (k) => {
        const p = (k - W) / span;
        if (p >= 1) return 0;
        return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * ((n * p) % 1))));
      };
      break;
    }
    case 'polynomial': {
      const power = checkNumber(where, 'power', config.power ?? 1, { min: 0, minExclusive: true });
      const lrEnd = checkNumber(where, 'lr_end', config.lr_end ?? 1e-7, { min: 0 });
      if (!(lrEnd < lr)) {
        throw new ConfigError(`${where}.lr_end = ${lrEnd} is not allowed: it must be below lr (${lr})`, {
          hint: `set lr_end below ${lr}`,
          details: { field: 'lr_end', value: lrEnd },
        });
      }
      decay = (k) => {
        if (k > total) return lrEnd / lr;
        // HF divides by (T − W) unguarded; max(1, ·) only differs where HF would divide by zero
        const remaining = 1 - (k - W) / span;
        return ((lr - lrEnd) * remaining ** power + lrEnd) / lr;
      };
      break;
    }
    case 'exponential': {
      const gamma = checkNumber(where, 'gamma', config.gamma, { min: 0, minExclusive: true, max: 1 });
      decay = (k) => gamma ** (k - W);
      break;
    }
  }
  return {
    name,
    lr,
    totalSteps: total,
    warmupSteps: W,
    lrAt(step: number): number {
      if (!Number.isInteger(step) || step < 0) {
        throw new QtuneError('INVALID_ARGUMENT', `lrAt: step ${step} is not an integer ≥ 0`);
      }
      return lr * (step < W ? step / Math.max(1, W) : decay(step));
    },
  };
}
