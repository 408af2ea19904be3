/**
 * Persistent copies of the frozen weights that `linear` multiplies, made once when training starts
 * instead of inside every step's graph (issue 14's "fewer copies"):
 *
 * - **Wᵀ** for the input gradient dX = dY·W. Without it every step transposes every frozen weight
 *   (the profiler's `wT` rows). A float weight's copy is in the type its matmuls run in; a quantized
 *   weight's is in its compute type (`gradType`: f32, or bf16 where that is faster).
 * - **W in the compute type** of the autocast modes (bf16_autocast, fp16_autocast), replacing the
 *   cast of every f32 weight inside every step.
 *
 * `frozen_weight_copies` chooses: `off` (every copy made in the graph, no extra memory), `on`, or
 * `auto` (the default): on for the float frozen weights when their copies fit in a quarter of the
 * memory the device has free, never for quantized ones, whose point is memory (QLoRA's blocks; its
 * f32 output layer gets one).
 *
 * The copies hold the values the in-graph path computes (the same ggml casts and transposes, run
 * once), so the step's numbers do not change, only where the copies live.
 */
import type { Backend } from '../engine/device.js';
import { isQuantDType, type FloatDType } from '../engine/dtype.js';
import { availableMemory } from '../engine/memory.js';
import { ConfigError } from '../errors.js';
import type { LlamaModel } from '../models/llama.js';
import { llamaWeights } from '../models/llama.js';
import { Graph } from '../tensor/graph.js';
import { dequantize } from '../tensor/ops/matmul.js';
import { cast, contiguous, transpose } from '../tensor/ops/layout.js';
import { TensorStore } from '../tensor/store.js';
import type { Tensor } from '../tensor/tensor.js';

export type FrozenCopies = 'auto' | 'on' | 'off';
export const FROZEN_COPIES: readonly FrozenCopies[] = ['auto', 'on', 'off'];

/** The share of a device's free memory that `auto` lets the copies take. */
const AUTO_SHARE = 0.25;

export interface FrozenOptions {
  mode: FrozenCopies;
  /** The autocast modes' matmul type (f32 weights are cast to it), or null. */
  computeDType: FloatDType | null;
  /** The type a quantized weight's input gradient multiplies in (its Wᵀ copy's type). */
  quantGradType: 'f32' | 'bf16' | 'f16';
}

interface Planned {
  w: Tensor;
  /** Type of the forward's copy of W, or null when the forward reads W itself. */
  forward: FloatDType | null;
  /** Type of Wᵀ. */
  transposed: FloatDType;
}

const BYTES: Record<FloatDType, number> = { f32: 4, f16: 2, bf16: 2 };

export function checkFrozenCopies(v: string): FrozenCopies {
  if (!(FROZEN_COPIES as readonly string[]).includes(v))
    throw new ConfigError(`frozen_weight_copies: ${JSON.stringify(v)} is not one of auto, on, off`, {
      hint: 'auto (the default), on, or off (no extra memory; Wᵀ made inside every step)',
    });
  return v as FrozenCopies;
}

export class FrozenWeights {
  /** Bytes the copies hold, per device. */
  readonly bytes: number;
  /** Why `auto` chose what it chose (for the run's log), or null when the mode was explicit. */
  readonly reason: string | null;
  private readonly stores: TensorStore[];
  private readonly byWeight: Map<Tensor, Tensor>;
  private readonly gradTypes: Tensor[];

  private constructor(
    stores: TensorStore[],
    byWeight: Map<Tensor, Tensor>,
    gradTypes: Tensor[],
    bytes: number,
    reason: string | null,
  ) {
    this.stores = stores;
    this.byWeight = byWeight;
    this.gradTypes = gradTypes;
    this.bytes = bytes;
    this.reason = reason;
  }

  /**
   * Plans and makes the copies of `model`'s frozen linear weights (the blocks' projections and the
   * output layer; `trainable` are left alone). Quantized weights without a copy get `quantGradType`
   * as their in-graph input-gradient type.
   */
  static create(model: LlamaModel, trainable: ReadonlySet<Tensor>, o: FrozenOptions): FrozenWeights {
    const planned: Planned[] = [];
    const quantized: Tensor[] = [];
    for (const spec of llamaWeights(model.config)) {
      if (spec.role !== 'linear' && spec.role !== 'lm_head') continue;
      const w = model.weight(spec.name);
      if (trainable.has(w) || w.rank !== 2) continue;
      if (isQuantDType(w.dtype)) {
        quantized.push(w);
        planned.push({ w, forward: null, transposed: o.quantGradType });
      } else {
        const fwd = o.computeDType !== null && w.dtype === 'f32' ? o.computeDType : null;
        planned.push({ w, forward: fwd, transposed: fwd ?? (w.dtype as FloatDType) });
      }
    }
    // the output layer of a tied model is the embedding matrix: frozen unless it trains
    if (model.config.tie_word_embeddings) {
      const e = model.weight('model.embed_tokens.weight');
      if (!trainable.has(e) && !isQuantDType(e.dtype)) {
        const fwd = o.computeDType !== null && e.dtype === 'f32' ? o.computeDType : null;
        planned.push({ w: e, forward: fwd, transposed: fwd ?? (e.dtype as FloatDType) });
      }
    }
    const need = new Map<Backend, number>();
    for (const p of planned) need.set(p.w.backend, (need.get(p.w.backend) ?? 0) + planBytes(p));

    let chosen: Planned[] = [];
    let reason: string | null = null;
    if (o.mode === 'on') chosen = planned;
    else if (o.mode === 'auto') {
      // float weights only: a quantized base's copies would undo the memory it saves
      const float = planned.filter((p) => !isQuantDType(p.w.dtype));
      const fits = [...need.keys()].every((b) => {
        const bytes = float.filter((p) => p.w.backend === b).reduce((s, p) => s + planBytes(p), 0);
        return bytes <= AUTO_SHARE * availableMemory(b);
      });
      const mb = Math.round(float.reduce((s, p) => s + planBytes(p), 0) / 2 ** 20);
      const rest = quantized.length === 0 ? '' : ` (not for the ${quantized.length} quantized ones)`;
      if (float.length === 0)
        reason = 'off: the frozen base is quantized (copies would undo the memory it saves)';
      else if (!fits) reason = `off: the copies (${mb} MB) exceed ${AUTO_SHARE * 100}% of the free memory`;
      else {
        chosen = float;
        reason = `on: ${mb} MB for ${float.length} float weights${rest}`;
      }
    }

    const stores: TensorStore[] = [];
    const byWeight = new Map<Tensor, Tensor>();
    let bytes = 0;
    try {
      for (const p of chosen) {
        const { store, weight } = makeCopies(p);
        stores.push(store);
        byWeight.set(p.w, weight);
        bytes += store.bytes;
      }
    } catch (e) {
      for (const st of stores) st.dispose();
      throw e;
    }
    // quantized weights without a copy multiply their in-graph Wᵀ in the compute type
    const gradTypes = quantized.filter((w) => !byWeight.has(w));
    for (const w of gradTypes) w.gradType = o.quantGradType;
    return new FrozenWeights(stores, byWeight, gradTypes, bytes, reason);
  }

  /** The tensor a linear layer multiplies for frozen weight `w`: its copy (with `transposed` set) or `w`. */
  weightFor(w: Tensor): Tensor {
    return this.byWeight.get(w) ?? w;
  }

  /** How many weights have copies. */
  get count(): number {
    return this.byWeight.size;
  }

  dispose(): void {
    for (const w of this.gradTypes) w.gradType = 'f32';
    // a weight whose forward reads it directly had its own `transposed` set to the copy
    for (const [w, copy] of this.byWeight) if (copy === w) w.transposed = null;
    for (const st of this.stores) st.dispose();
    this.stores.length = 0;
    this.byWeight.clear();
  }
}

function planBytes(p: Planned): number {
  const n = p.w.numel;
  return n * BYTES[p.transposed] + (p.forward === null ? 0 : n * BYTES[p.forward]);
}

/**
 * Makes W's copies on its device with the ops the step's graph would use (so the values are the
 * same): W cast to the forward's type, and Wᵀ (dequantized first when quantized).
 */
function makeCopies(p: Planned): { store: TensorStore; weight: Tensor } {
  const { w } = p;
  const [rows, cols] = w.shape as [number, number];
  const specs = [{ name: `${w.name}.T`, shape: [cols, rows], dtype: p.transposed }];
  if (p.forward !== null)
    specs.push({ name: `${w.name}.${p.forward}`, shape: [rows, cols], dtype: p.forward });
  const store = TensorStore.create(w.backend, specs);
  try {
    const g = new Graph(w.backend);
    try {
      g.noGrad(() => {
        const src = isQuantDType(w.dtype) ? dequantize(g, w) : w;
        const fwd = p.forward === null ? null : cast(src, p.forward);
        const t = contiguous(transpose(fwd ?? src));
        g.assign(store.get(`${w.name}.T`), cast(t, p.transposed));
        if (fwd !== null) g.assign(store.get(`${w.name}.${p.forward!}`), fwd);
      });
      g.compile();
      g.run();
    } finally {
      g.dispose();
    }
  } catch (e) {
    store.dispose();
    throw e;
  }
  const weight = p.forward === null ? w : store.get(`${w.name}.${p.forward}`);
  weight.transposed = store.get(`${w.name}.T`);
  return { store, weight };
}
