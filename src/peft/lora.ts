/**
 * LoRA and DoRA adapters over a model's linear layers, as PEFT defines them, for training: one
 * {@link LoraLinear} per targeted layer (the product, DoRA and dropout are written there), created
 * and initialised as PEFT does, applied through the model's linear hook, with per-module rank and
 * alpha (PEFT's rank_pattern/alpha_pattern) and seeded dropout masks.
 *
 * A starts Kaiming-uniform, B at zero, so training starts from the base model exactly; DoRA's
 * magnitude m starts at the row norms of W. The base weight (float or quantized) is never copied or
 * changed. Each adapter lives on the device of the weight it wraps (a split model keeps block i's
 * adapters on block i's device).
 *
 * @example
 * const lora = LoraLayers.create(model, { rank: 8, alpha: 16 });
 * const logits = model.forward(g, ids, { linear: lora.hook() });
 */
import { ConfigError } from '../errors.js';
import type { LinearHook, LlamaModel } from '../models/llama.js';
import { matchesGlob } from '../quant/config.js';
import type { Graph } from '../tensor/graph.js';
import { dropoutMask } from '../tensor/ops/nn.js';
import { StoreGroup, type PlacedSpec } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';
import { seededUniform } from '../util/random.js';
import { LoraLinear, type LoraShape } from './lora-linear.js';
import {
  checkPatternKeys,
  loraScale,
  patternKey,
  shortModuleName,
  type LoraAdapterData,
  type LoraModule,
} from './lora-weights.js';

/**
 * The short names of a Llama block's linear layers. Which modules a model has, and so the default
 * targets, come from the model ({@link LlamaModel.linearModules}): Phi-3's are `qkv_proj`, `o_proj`,
 * `gate_up_proj` and `down_proj`.
 */
export const LINEAR_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

export interface LoraOptions {
  rank: number;
  alpha: number;
  /** Dropout on the adapter's input (PEFT's lora_dropout). Default 0. */
  dropout?: number;
  /**
   * Modules to adapt: short names (`q_proj`) or globs over full names (`model.layers.*.mlp.*`).
   * Default (or `['all-linear']`, PEFT's name): every linear layer of every block.
   */
  targetModules?: readonly string[];
  /**
   * Per-module rank (PEFT's rank_pattern): keys are regular expressions over the end of a module's
   * full name (`q_proj`, `layers\\.0\\..*`, `^model.layers.1.mlp.down_proj` for exactly that
   * module); the first matching key in the record's order wins, as in PEFT ({@link patternKey}).
   */
  rankPattern?: Readonly<Record<string, number>>;
  /** Per-module alpha (PEFT's alpha_pattern), chosen as rankPattern's keys are. */
  alphaPattern?: Readonly<Record<string, number>>;
  /** Scale by α/√r instead of α/r (Kalajdzievski 2023). */
  rsLora?: boolean;
  /** Weight-decomposed LoRA (Liu et al. 2024). */
  dora?: boolean;
  /** Seed of A's initialisation and of the dropout masks. */
  seed?: number;
}

/** Whether `module` (a full name such as `model.layers.0.self_attn.q_proj`) matches a target. */
export function matchesModule(module: string, target: string): boolean {
  if (/[*?[]/.test(target)) return matchesGlob(module, target);
  return module === target || module.endsWith(`.${target}`);
}

/** The value of the pattern key PEFT picks for `module` ({@link patternKey}: the first that matches). */
function pattern(module: string, patterns: Readonly<Record<string, number>> | undefined): number | undefined {
  if (patterns === undefined) return undefined;
  const key = patternKey(Object.keys(patterns), module);
  return key === undefined ? undefined : patterns[key];
}

function checkPositiveInt(field: string, v: unknown): void {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1)
    throw new ConfigError(`${field}: ${JSON.stringify(v)} must be a positive integer`, {
      hint: `set ${field} to a rank such as 8 or 16`,
    });
}

export class LoraLayers {
  readonly store: StoreGroup;
  /** The adapted layers by module name, in the model's order. */
  readonly modules: ReadonlyMap<string, LoraLinear>;
  readonly options: Required<LoraOptions>;
  /**
   * The micro-step the next run computes: dropout masks derive from it (with the seed), so a resumed
   * run draws the same masks as an uninterrupted one. The trainer sets it.
   */
  step = 0;
  private readonly masks = new WeakMap<Graph, Map<string, Tensor>>();

  private constructor(store: StoreGroup, modules: Map<string, LoraLinear>, options: LoraLayers['options']) {
    this.store = store;
    this.modules = modules;
    this.options = options;
  }

  /** Adapter tensors for every targeted linear layer of `model`, initialised as PEFT does. */
  static create(model: LlamaModel, o: LoraOptions): LoraLayers {
    checkPositiveInt('lora_rank', o.rank);
    if (!(typeof o.alpha === 'number' && o.alpha > 0 && Number.isFinite(o.alpha)))
      throw new ConfigError(`lora_alpha: ${JSON.stringify(o.alpha)} must be a positive number`, {
        hint: 'lora_alpha is usually twice the rank',
      });
    const dropout = o.dropout ?? 0;
    if (!(dropout >= 0 && dropout < 1))
      throw new ConfigError(`lora_dropout: ${dropout} must be in [0, 1)`, { hint: 'use 0 to 0.1' });
    const shortNames = [...new Set(model.linearModules().map((m) => m.slice(m.lastIndexOf('.') + 1)))];
    const targets =
      o.targetModules === undefined || o.targetModules.includes('all-linear') ? shortNames : o.targetModules;
    checkPatternKeys('lora_rank_pattern', o.rankPattern ?? {});
    checkPatternKeys('lora_alpha_pattern', o.alphaPattern ?? {});
    const options = {
      rank: o.rank,
      alpha: o.alpha,
      dropout,
      targetModules: [...targets],
      rsLora: o.rsLora ?? false,
      dora: o.dora ?? false,
      seed: o.seed ?? 0,
      rankPattern: o.rankPattern ?? {},
      alphaPattern: o.alphaPattern ?? {},
    };
    const shapes = new Map<string, LoraShape>();
    for (const module of model.linearModules()) {
      if (!targets.some((t) => matchesModule(module, t))) continue;
      const w = model.weight(`${module}.weight`);
      const rank = pattern(module, o.rankPattern) ?? o.rank;
      const alpha = pattern(module, o.alphaPattern) ?? o.alpha;
      checkPositiveInt(`lora_rank_pattern[${module}]`, rank);
      shapes.set(module, { rank, alpha, inFeatures: w.shape[1]!, outFeatures: w.shape[0]! });
    }
    if (shapes.size === 0)
      throw new ConfigError(`lora_target_modules: ${JSON.stringify(targets)} matches no linear layer`, {
        hint: `use names among ${shortNames.join(', ')} or globs such as model.layers.*.self_attn.*`,
      });
    const kind = { dora: options.dora, trainable: true };
    const specs: PlacedSpec[] = [];
    for (const [module, shape] of shapes)
      specs.push(...LoraLinear.specs(module, shape, model.weight(`${module}.weight`).backend, kind));
    const store = StoreGroup.create(specs);
    const modules = new Map<string, LoraLinear>();
    for (const [module, shape] of shapes)
      modules.set(module, LoraLinear.fromStore(store, module, shape, loraScale(shape, options.rsLora), kind));
    const rand = seededUniform(options.seed);
    for (const m of modules.values()) m.initialise(rand, model.weight(`${m.module}.weight`));
    return new LoraLayers(store, modules, options);
  }

  /** The trainable tensors. */
  params(): Tensor[] {
    return this.store.tensors;
  }

  /** The hook that applies the adapters in `LlamaModel.forward`, with dropout when it is on. */
  hook(): LinearHook {
    return (module, x, w) => {
      const m = this.modules.get(module);
      if (m === undefined) return null;
      if (this.options.dropout === 0) return m.apply(x, w);
      return m.apply(x, w, { dropoutMask: this.mask(x.graph!, module, x.shape) });
    };
  }

  /** The hook without dropout: the adapters as inference applies them (samples during training). */
  inferenceHook(): LinearHook {
    return (module, x, w) => this.modules.get(module)?.apply(x, w) ?? null;
  }

  /** One dropout mask per module and graph (a recomputed checkpoint segment reuses it). */
  private mask(g: Graph, module: string, shape: readonly number[]): Tensor {
    let perGraph = this.masks.get(g);
    if (perGraph === undefined) {
      perGraph = new Map();
      this.masks.set(g, perGraph);
    }
    let mask = perGraph.get(module);
    if (mask === undefined) {
      const input = g.input(shape, 'f32', `lora_dropout_mask.${module}`);
      const stream = [...this.modules.keys()].indexOf(module);
      const n = shape.reduce((x, y) => x * y, 1);
      g.beforeRun(() =>
        g.set(input, dropoutMask(this.options.seed, stream, this.step, n, this.options.dropout)),
      );
      perGraph.set(module, input);
      mask = input;
    }
    return mask;
  }

  /** Host copies of every module's tensors (A `[r, in]`, B `[out, r]`, DoRA magnitude `[out]`), with the module. */
  toHost(): Map<string, LoraModule & { info: LoraLinear }> {
    const out = new Map<string, LoraModule & { info: LoraLinear }>();
    for (const m of this.modules.values()) out.set(m.module, { ...m.toHost(), info: m });
    return out;
  }

  /**
   * The adapter on the host, in the form the PEFT and GGUF writers take; `baseModel` is the base's Hub
   * id or path.
   *
   * @example
   * savePeftAdapter('runs/lora-1', lora.adapterData('TinyLlama/TinyLlama-1.1B-Chat-v1.0'));
   */
  adapterData(baseModel: string): LoraAdapterData {
    const modules = new Map<string, LoraModule>();
    for (const m of this.modules.values()) modules.set(m.module, m.toHost());
    return {
      baseModel,
      rsLora: this.options.rsLora,
      dora: this.options.dora,
      dropout: this.options.dropout,
      targetModules: [...new Set([...modules.keys()].map(shortModuleName))],
      modules,
    };
  }

  dispose(): void {
    this.store.dispose();
  }
}
