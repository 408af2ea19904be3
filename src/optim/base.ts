/**
 * What every graph optimizer shares: the trainable parameters, the state tensors kept per parameter
 * (moment estimates, momentum buffers) in one {@link TensorStore}, the step counter, and the per-step
 * scalars (learning rate, bias corrections) that enter the training graph as inputs set before each
 * run, so one compiled graph serves every step. Each parameter's state lives on that parameter's
 * device (a model split over devices updates each block where it lives).
 */
import type { Backend } from '../engine/device.js';
import { QtuneError, ShapeError, fmtShape } from '../errors.js';
import type { Graph } from '../tensor/graph.js';
import { StoreGroup } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Optimizer, OptimizerName, OptimizerState, OptimizerStateTensor } from './optimizer.js';
import { checkNumber } from './validate.js';

/**
 * The default weight-decay rule: a parameter decays when it is a matrix (rank ≥ 2) and its name
 * does not mention a norm or a bias. LoRA matrices (`...q_proj.lora_A`) decay; RMSNorm weights
 * (`model.layers.0.input_layernorm.weight`) and biases do not.
 *
 * @example
 * defaultDecays(store.get('model.layers.0.self_attn.q_proj.lora_A')); // true
 * defaultDecays(store.get('model.norm.weight')); // false
 */
export function defaultDecays(t: Tensor): boolean {
  return t.rank >= 2 && !/norm|bias/.test(t.name);
}

/** What an optimizer's {@link GraphOptimizer.update} gets for one parameter. */
export interface ParamUpdate {
  graph: Graph;
  param: Tensor;
  grad: Tensor;
  /** Whether weight decay applies to this parameter. */
  decays: boolean;
  /** The stored state tensor `name` of this parameter. */
  slot(name: string): Tensor;
  /** The per-step scalar input `name` ([1], set before every run). */
  scalar(name: string): Tensor;
}

export abstract class GraphOptimizer implements Optimizer {
  abstract readonly name: OptimizerName;
  readonly params: readonly Tensor[];
  /** The learning rate the next update uses; the trainer sets it from the schedule before each step. */
  lr: number;
  readonly decays: (t: Tensor) => boolean;
  private readonly slots: readonly string[];
  private readonly store: StoreGroup | null;
  private t = 0;
  private last = Number.NaN;

  /**
   * `_backend` is where the parameters of the public constructors live; the state goes beside each
   * parameter, which is that device unless the parameters are spread over several.
   */
  protected constructor(
    who: string,
    _backend: Backend,
    params: readonly Tensor[],
    lr: number,
    slots: readonly string[],
    decays: ((t: Tensor) => boolean) | undefined,
  ) {
    for (const p of params) {
      if (p.kind !== 'stored' || !p.requiresGrad) {
        throw new QtuneError('INVALID_ARGUMENT', `${who}: ${p.toString()} is not a trainable stored tensor`);
      }
    }
    if (params.length === 0) throw new QtuneError('INVALID_ARGUMENT', `${who}: no parameters to train`);
    this.params = params;
    this.lr = checkNumber(who, 'lr', lr, { min: 0 });
    this.decays = decays ?? defaultDecays;
    this.slots = slots;
    // state is f32 whatever the parameter's type, as PyTorch keeps it in the parameter's (f32) dtype
    this.store =
      slots.length === 0
        ? null
        : StoreGroup.create(
            params.flatMap((p, i) =>
              slots.map((s) => ({
                name: slotName(i, s),
                shape: p.shape,
                dtype: 'f32' as const,
                backend: p.backend,
              })),
            ),
          );
  }

  /** Updates applied so far (each run of a graph built with {@link build} adds one). */
  get step(): number {
    return this.t;
  }

  /** The learning rate the last applied update used; NaN before the first. */
  get lastLr(): number {
    return this.last;
  }

  /** Hyperparameters for {@link state}. */
  protected abstract hyperparameters(): Record<string, number | boolean>;

  /**
   * The per-step scalars for update number `step` (1-based) at learning rate `lr`; the same keys
   * for every step. Each becomes a [1] input of the graph.
   */
  protected abstract scalars(step: number, lr: number): Record<string, number>;

  /** Adds the update of one parameter (and of its state) to the graph with `graph.assign`. */
  protected abstract update(u: ParamUpdate): void;

  /**
   * Adds the update of every parameter to `g`, given their gradients (from `g.backward`). Each run
   * of `g` then applies one update with the current {@link lr}.
   */
  build(g: Graph, grads: Map<Tensor, Tensor>): void {
    g.label('optim', () => this.buildUpdates(g, grads));
  }

  private buildUpdates(g: Graph, grads: Map<Tensor, Tensor>): void {
    g.noGrad(() => {
      const inputs = new Map<string, Tensor>();
      for (const key of Object.keys(this.scalars(1, this.lr))) {
        inputs.set(key, g.input([1], 'f32', `${this.name}_${key}`));
      }
      g.beforeRun(() => {
        checkNumber(this.name, 'lr', this.lr, { min: 0 });
        const values = this.scalars(this.t + 1, this.lr);
        for (const [key, x] of inputs) g.set(x, Float32Array.of(values[key]!));
        this.t++;
        this.last = this.lr;
      });
      this.params.forEach((param, i) => {
        const grad = grads.get(param);
        if (grad === undefined) {
          throw new QtuneError('GRAPH', `${this.name}: no gradient for ${param.toString()}`, {
            hint: 'pass the map returned by graph.backward(loss) for a loss that depends on every parameter',
          });
        }
        this.update({
          graph: g,
          param,
          grad,
          decays: this.decays(param),
          slot: (s) => this.store!.get(slotName(i, s)),
          scalar: (key) => inputs.get(key)!,
        });
      });
    });
  }

  /** Every state tensor, named `state.<param index>.<slot>` as PyTorch's state_dict numbers them. */
  /** Bytes of the state tensors on the device. */
  get stateBytes(): number {
    return this.store?.bytes ?? 0;
  }

  stateBytesOn(backend: Backend): number {
    return this.store?.bytesOn(backend) ?? 0;
  }

  stateTensors(): OptimizerStateTensor[] {
    const store = this.store;
    if (store === null) return [];
    return store.tensors.map((t) => ({ name: t.name, shape: [...t.shape], data: t.store!.read(t) }));
  }

  state(): OptimizerState {
    return { name: this.name, step: this.t, lr: this.lr, ...this.hyperparameters() };
  }

  /** Restores the step counter and every state tensor saved by {@link stateTensors} (exact resume). */
  loadState(step: number, tensors: readonly OptimizerStateTensor[]): void {
    if (!Number.isInteger(step) || step < 0) {
      throw new QtuneError('INVALID_ARGUMENT', `${this.name}.loadState: step ${step} is not an integer ≥ 0`);
    }
    const expected = this.store?.tensors ?? [];
    const given = new Map(tensors.map((t) => [t.name, t]));
    for (const name of given.keys()) {
      if (!expected.some((t) => t.name === name)) {
        throw new QtuneError(
          'INVALID_ARGUMENT',
          `${this.name}.loadState: unexpected state tensor "${name}"`,
          {
            hint: `expected ${expected.map((t) => t.name).join(', ') || 'none'}; was the state saved by another optimizer or parameter list?`,
          },
        );
      }
    }
    for (const t of expected) {
      const s = given.get(t.name);
      if (s === undefined) {
        throw new QtuneError(
          'INVALID_ARGUMENT',
          `${this.name}.loadState: state tensor "${t.name}" is missing`,
        );
      }
      if (s.shape.length !== t.shape.length || s.shape.some((d, k) => d !== t.shape[k])) {
        throw new ShapeError(
          `${this.name}.loadState: "${t.name}" has shape ${fmtShape(s.shape)}, the parameter ${fmtShape(t.shape)}`,
        );
      }
    }
    for (const t of expected) t.store!.write(t, given.get(t.name)!.data);
    this.t = step;
    this.last = Number.NaN;
  }

  /** The names of the state slots kept per parameter (e.g. `exp_avg`, `exp_avg_sq`). */
  get slotNames(): readonly string[] {
    return this.slots;
  }

  dispose(): void {
    this.store?.dispose();
  }
}

function slotName(i: number, slot: string): string {
  return `state.${i}.${slot}`;
}
