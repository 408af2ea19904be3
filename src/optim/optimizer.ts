/**
 * The optimizer interface the trainer uses, and {@link createOptimizer}, which builds one from a
 * config with PyTorch's option names and defaults.
 *
 * @example
 * const opt = createOptimizer(backend, lora.tensors, { name: 'adamw', lr: 2e-4, weight_decay: 0.01 });
 * opt.build(graph, graph.backward(loss));
 * graph.compile();
 * for (let k = 0; k < steps; k++) {
 *   opt.lr = schedule.lrAt(opt.step);
 *   graph.run();
 * }
 */
import type { Backend } from '../engine/device.js';
import { ConfigError } from '../errors.js';
import type { Graph } from '../tensor/graph.js';
import type { Tensor } from '../tensor/tensor.js';
import { Adadelta } from './adadelta.js';
import { Adam, AdamW } from './adamw.js';
import { Lion } from './lion.js';
import { SGD, checkNesterov } from './sgd.js';
import { checkBoolean, checkChoice, checkKnownFields, checkNumber } from './validate.js';

export { defaultDecays } from './base.js';

/** The optimizers {@link createOptimizer} knows (for the CLI's choices). */
export const OPTIMIZER_NAMES = ['adamw', 'adam', 'sgd', 'adadelta', 'lion'] as const;
export type OptimizerName = (typeof OPTIMIZER_NAMES)[number];

/** One state tensor of an optimizer, as saved in a checkpoint. */
export interface OptimizerStateTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** The step counter, the learning rate and the hyperparameters, for a checkpoint. */
export type OptimizerState = {
  readonly name: OptimizerName;
  readonly step: number;
  readonly lr: number;
} & Readonly<Record<string, string | number | boolean>>;

export interface Optimizer {
  readonly name: OptimizerName;
  readonly params: readonly Tensor[];
  /** The learning rate of the next update; the trainer sets it from the schedule before each step. */
  lr: number;
  /** Updates applied so far. */
  readonly step: number;
  /** The learning rate the last applied update used (NaN before the first). */
  readonly lastLr: number;
  /** Whether weight decay applies to a parameter. */
  decays(t: Tensor): boolean;
  /** Adds the update of every parameter to `g`; each run of `g` applies one update. */
  build(g: Graph, grads: Map<Tensor, Tensor>): void;
  /** Bytes of the state tensors on the device. */
  readonly stateBytes: number;
  /** Bytes of the state tensors on one device (parameters spread over devices keep theirs beside them). */
  stateBytesOn(backend: Backend): number;
  /** Copies of every state tensor (moments, momentum buffers), for a checkpoint. */
  stateTensors(): OptimizerStateTensor[];
  state(): OptimizerState;
  /** Restores a checkpoint: `step` and the tensors {@link stateTensors} returned. */
  loadState(step: number, tensors: readonly OptimizerStateTensor[]): void;
  dispose(): void;
}

/** An optimizer config with PyTorch's option names; options a given optimizer lacks are rejected. */
export interface OptimizerConfig {
  name: OptimizerName;
  /** Defaults: adamw/adam/sgd 1e-3, adadelta 1.0, lion 1e-4. */
  lr?: number;
  /** Defaults: adamw 0.01, the others 0. Decoupled for adamw and lion, L2 for adam, sgd, adadelta. */
  weight_decay?: number;
  /** adamw/adam (default [0.9, 0.999]) and lion (default [0.9, 0.99]). */
  betas?: [number, number];
  /** adamw/adam (default 1e-8) and adadelta (default 1e-6). */
  eps?: number;
  /** sgd; default 0. */
  momentum?: number;
  /** sgd; default false. */
  nesterov?: boolean;
  /** sgd; default 0. */
  dampening?: number;
  /** adadelta; default 0.9. */
  rho?: number;
  /** Which parameters decay; default {@link defaultDecays}. */
  decays?: (t: Tensor) => boolean;
}

const OPTIONS: Record<OptimizerName, readonly string[]> = {
  adamw: ['name', 'lr', 'weight_decay', 'betas', 'eps', 'decays'],
  adam: ['name', 'lr', 'weight_decay', 'betas', 'eps', 'decays'],
  sgd: ['name', 'lr', 'weight_decay', 'momentum', 'nesterov', 'dampening', 'decays'],
  adadelta: ['name', 'lr', 'weight_decay', 'rho', 'eps', 'decays'],
  lion: ['name', 'lr', 'weight_decay', 'betas', 'decays'],
};

/**
 * Builds the optimizer `config.name` over `params`, checking every option first.
 *
 * @throws ConfigError naming the field, its value and what is allowed.
 * @example
 * const opt = createOptimizer(backend, params, { name: 'sgd', lr: 0.1, momentum: 0.9, nesterov: true });
 */
export function createOptimizer(
  backend: Backend,
  params: readonly Tensor[],
  config: OptimizerConfig,
): Optimizer {
  const where = 'optimizer';
  const name = checkChoice(where, 'name', config.name, OPTIMIZER_NAMES);
  checkKnownFields(where, config, OPTIONS[name], name);
  const num = (field: keyof OptimizerConfig, def: number, rule: Parameters<typeof checkNumber>[3]) =>
    checkNumber(where, field, config[field] ?? def, rule);
  const decays = config.decays;
  if (decays !== undefined && typeof decays !== 'function') {
    throw new ConfigError(`${where}.decays is not allowed: it must be a function (tensor) => boolean`, {
      details: { field: 'decays' },
    });
  }
  const betas = (def: [number, number], max: number, maxExclusive: boolean): [number, number] => {
    const b = config.betas ?? def;
    if (!Array.isArray(b) || b.length !== 2) {
      throw new ConfigError(
        `${where}.betas = ${JSON.stringify(b)} is not allowed: it must be [beta1, beta2]`,
        {
          hint: `set betas to two numbers, e.g. [${def.join(', ')}]`,
          details: { field: 'betas', value: b },
        },
      );
    }
    const rule = { min: 0, max, maxExclusive };
    return [checkNumber(where, 'betas[0]', b[0], rule), checkNumber(where, 'betas[1]', b[1], rule)];
  };
  const lr = (def: number) => num('lr', def, { min: 0 });
  const wd = (def: number) => num('weight_decay', def, { min: 0 });
  const opt = decays === undefined ? {} : { decays };
  switch (name) {
    case 'adamw':
    case 'adam': {
      const [beta1, beta2] = betas([0.9, 0.999], 1, true);
      const o = { ...opt, lr: lr(1e-3), beta1, beta2, eps: num('eps', 1e-8, { min: 0 }) };
      return name === 'adamw'
        ? new AdamW(backend, params, { ...o, weightDecay: wd(0.01) })
        : new Adam(backend, params, { ...o, weightDecay: wd(0) });
    }
    case 'sgd': {
      const momentum = num('momentum', 0, { min: 0 });
      const dampening = num('dampening', 0, { min: 0, max: 1 });
      const nesterov = checkBoolean(where, 'nesterov', config.nesterov ?? false);
      checkNesterov(where, nesterov, momentum, dampening);
      return new SGD(backend, params, {
        ...opt,
        lr: lr(1e-3),
        momentum,
        dampening,
        nesterov,
        weightDecay: wd(0),
      });
    }
    case 'adadelta':
      return new Adadelta(backend, params, {
        ...opt,
        lr: lr(1),
        rho: num('rho', 0.9, { min: 0, max: 1 }),
        eps: num('eps', 1e-6, { min: 0 }),
        weightDecay: wd(0),
      });
    case 'lion': {
      const [beta1, beta2] = betas([0.9, 0.99], 1, false);
      return new Lion(backend, params, { ...opt, lr: lr(1e-4), beta1, beta2, weightDecay: wd(0) });
    }
  }
}
