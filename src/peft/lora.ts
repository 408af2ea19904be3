/**
 * LoRA and DoRA adapters over a model's linear layers, as PEFT defines them.
 *
 *   LoRA:  y = W·x + s·B·A·dropout(x)                       s = α/r (rsLoRA: α/√r)
 *   DoRA:  y = m ⊙ (W·x + s·B·A·x) / ‖W + s·B·A‖            ‖·‖ per output row, not differentiated
 *
 * A starts Kaiming-uniform (bound 1/√in, PyTorch's kaiming_uniform_(a=√5)), B at zero, so training
 * starts from the base model exactly; DoRA's magnitude m starts at the row norms of W. The adapter
 * wraps a layer through the model's linear hook: the base weight (float or quantized) is never
 * copied or changed. Each adapter lives on the device of the weight it wraps (a split model keeps
 * block i's adapters on block i's device).
 *
 * @example
 * const lora = LoraLayers.create(model, { rank: 8, alpha: 16 });
 * const logits = model.forward(g, ids, { linear: lora.hook() });
 */
import { checkPatternKeys, patternKey } from './lora-weights.js';
import { ConfigError } from '../errors.js';
import { matchesGlob } from '../quant/config.js';
import type { LlamaModel } from '../models/llama.js';
import type { Graph } from '../tensor/graph.js';
import { add, affine, div, mul, scale, sqr, sqrt } from '../tensor/ops/elementwise.js';
import { cast, sum } from '../tensor/ops/layout.js';
import { linear, matmul } from '../tensor/ops/matmul.js';
import { dropoutMask } from '../tensor/ops/nn.js';
import { StoreGroup, type PlacedSpec } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';
import { seededUniform } from '../util/random.js';

/**
 * The short names of a Llama block's linear layers: the default targets and the names error hints
 * offer. Which modules exist comes from the model ({@link LlamaModel.linearModules}).
 */
export const LINEAR_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

export interface LoraOptions {
  rank: number;
  alpha: number;
  /** Dropout on the adapter's input (PEFT's lora_dropout). Default 0. */
  dropout?: number;
  /**
   * Modules to adapt: short names (`q_proj`) or globs over full names (`model.layers.*.mlp.*`).
   * Default: every linear layer of every block.
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

export interface LoraModuleInfo {
  module: string;
  rank: number;
  alpha: number;
  scale: number;
  inFeatures: number;
  outFeatures: number;
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
  readonly modules: ReadonlyMap<string, LoraModuleInfo>;
  readonly options: Required<LoraOptions>;
  /**
   * The micro-step the next run computes: dropout masks derive from it (with the seed), so a resumed
   * run draws the same masks as an uninterrupted one. The trainer sets it.
   */
  step = 0;
  private readonly masks = new WeakMap<Graph, Map<string, Tensor>>();

  private constructor(
    store: StoreGroup,
    modules: Map<string, LoraModuleInfo>,
    options: LoraLayers['options'],
  ) {
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
    const targets = o.targetModules ?? LINEAR_MODULES;
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
    const modules = new Map<string, LoraModuleInfo>();
    for (const module of model.linearModules()) {
      if (!targets.some((t) => matchesModule(module, t))) continue;
      const w = model.weight(`${module}.weight`);
      const rank = pattern(module, o.rankPattern) ?? o.rank;
      const alpha = pattern(module, o.alphaPattern) ?? o.alpha;
      checkPositiveInt(`lora_rank_pattern[${module}]`, rank);
      modules.set(module, {
        module,
        rank,
        alpha,
        scale: options.rsLora ? alpha / Math.sqrt(rank) : alpha / rank,
        inFeatures: w.shape[1]!,
        outFeatures: w.shape[0]!,
      });
    }
    if (modules.size === 0)
      throw new ConfigError(`lora_target_modules: ${JSON.stringify(targets)} matches no linear layer`, {
        hint: `use names among ${LINEAR_MODULES.join(', ')} or globs such as model.layers.*.self_attn.*`,
      });
    const specs: PlacedSpec[] = [];
    for (const m of modules.values()) {
      const backend = model.weight(`${m.module}.weight`).backend;
      specs.push(
        {
          name: `${m.module}.lora_A`,
          shape: [m.rank, m.inFeatures],
          dtype: 'f32',
          requiresGrad: true,
          backend,
        },
        {
          name: `${m.module}.lora_B`,
          shape: [m.outFeatures, m.rank],
          dtype: 'f32',
          requiresGrad: true,
          backend,
        },
      );
      if (options.dora)
        specs.push({
          name: `${m.module}.lora_magnitude`,
          shape: [m.outFeatures],
          dtype: 'f32',
          requiresGrad: true,
          backend,
        });
    }
    const store = StoreGroup.create(specs);
    const layers = new LoraLayers(store, modules, options);
    layers.initialise(model);
    return layers;
  }

  private initialise(model: LlamaModel): void {
    const rand = seededUniform(this.options.seed);
    for (const m of this.modules.values()) {
      const bound = 1 / Math.sqrt(m.inFeatures);
      this.write(
        `${m.module}.lora_A`,
        Float32Array.from({ length: m.rank * m.inFeatures }, () => (2 * rand() - 1) * bound),
      );
      if (this.options.dora) {
        const w = model.weight(`${m.module}.weight`);
        const values = w.store!.read(w); // (out, in), dequantized
        const norms = new Float32Array(m.outFeatures);
        for (let o = 0; o < m.outFeatures; o++) {
          let s = 0;
          for (let i = 0; i < m.inFeatures; i++) s += values[o * m.inFeatures + i]! ** 2;
          norms[o] = Math.sqrt(s);
        }
        this.write(`${m.module}.lora_magnitude`, norms);
      }
    }
  }

  private write(name: string, data: Float32Array): void {
    const t = this.store.get(name);
    t.store!.write(t, data);
  }

  private read(name: string): Float32Array {
    const t = this.store.get(name);
    return t.store!.read(t);
  }

  /** The trainable tensors. */
  params(): Tensor[] {
    return this.store.tensors;
  }

  /** The hook that applies the adapters in `LlamaModel.forward`. */
  hook(): (module: string, x: Tensor, w: Tensor) => Tensor | null {
    return (module, x, w) => {
      const m = this.modules.get(module);
      if (m === undefined) return null;
      const g = x.graph!;
      const a = this.store.get(`${module}.lora_A`);
      const b = this.store.get(`${module}.lora_B`);
      const xd = this.options.dropout > 0 ? mul(x, this.mask(g, module, x.shape)) : x;
      const delta = g.label('lora', () => scale(linear(linear(xd, a), b), m.scale)); // (..., out)
      const base = linear(x, w);
      if (!this.options.dora) return add(base, delta);
      // DoRA: ‖W + s·B·A‖ per output row, treated as a constant (DoRA §4.3, as PEFT)
      const norm = g.noGrad(() => {
        const wf = cast(w, 'f32');
        const ba = matmul(b, a); // (out, in)
        return sqrt(sum(sqr(add(wf, scale(ba, m.scale))), 1)); // (out)
      });
      const ratio = div(this.store.get(`${module}.lora_magnitude`), norm); // (out)
      if (this.options.dropout === 0) return mul(add(base, delta), ratio);
      // with dropout PEFT computes the magnitude's base term from the dropped-out input
      const baseDropped = linear(xd, w);
      return add(base, add(mul(baseDropped, affine(ratio, 1, -1)), mul(delta, ratio)));
    };
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

  /** Host copies of every module's tensors (A `[r, in]`, B `[out, r]`, DoRA magnitude `[out]`). */
  toHost(): Map<
    string,
    { info: LoraModuleInfo; A: Float32Array; B: Float32Array; magnitude?: Float32Array }
  > {
    const out = new Map<
      string,
      { info: LoraModuleInfo; A: Float32Array; B: Float32Array; magnitude?: Float32Array }
    >();
    for (const m of this.modules.values()) {
      const entry = {
        info: m,
        A: this.read(`${m.module}.lora_A`),
        B: this.read(`${m.module}.lora_B`),
      };
      out.set(
        m.module,
        this.options.dora ? { ...entry, magnitude: this.read(`${m.module}.lora_magnitude`) } : entry,
      );
    }
    return out;
  }

  dispose(): void {
    this.store.dispose();
  }
}
