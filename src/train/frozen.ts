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
import type { BufferTypePtr } from '../engine/ggml.js';
import { withEngineLog } from '../engine/library.js';
import { isQuantDType, type FloatDType } from '../engine/dtype.js';
import { availableMemory } from '../engine/memory.js';
import { ConfigError } from '../errors.js';
import type { LlamaModel } from '../models/llama.js';
import { llamaWeights } from '../models/llama.js';
import { Graph } from '../tensor/graph.js';
import { dequantize, linear } from '../tensor/ops/matmul.js';
import { cast, contiguous, transpose } from '../tensor/ops/layout.js';
import { tensorBytes } from '../tensor/host.js';
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
  /**
   * Whether a quantized weight's forward may read a repacked copy (the CPU's CPU_REPACK buffer, ~2x
   * faster 4-bit products) unless copies are off: not for DoRA, whose norms read the weight itself.
   */
  repack: boolean;
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
  /** Bytes the copies hold, on every device together. */
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
    const repacks: { w: Tensor; buft: BufferTypePtr }[] = [];
    for (const spec of llamaWeights(model.config)) {
      if (spec.role !== 'linear' && spec.role !== 'lm_head') continue;
      const w = model.weight(spec.name);
      if (trainable.has(w) || w.rank !== 2) continue;
      if (isQuantDType(w.dtype)) {
        quantized.push(w);
        planned.push({ w, forward: null, transposed: o.quantGradType });
        const buft = o.repack && o.mode !== 'off' ? repackBuffer(w) : null;
        if (buft !== null) repacks.push({ w, buft });
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
      if (planned.length === 0) reason = 'off: nothing is frozen';
      else if (!fits) reason = `off: the copies (${mb} MB) exceed ${AUTO_SHARE * 100}% of the free memory`;
      else {
        chosen = float;
        reason =
          float.length === 0
            ? 'off: the frozen base is quantized (copies would undo the memory it saves)'
            : `on: ${mb} MB for ${float.length} float weights${rest}`;
      }
    }
    // a quantized weight's repacked forward copy costs one more 4-bit weight: made unless off
    if (reason !== null && repacks.length > 0) {
      const mb = Math.round(repacks.reduce((n, r) => n + tensorBytes(r.w.dtype, r.w.shape), 0) / 2 ** 20);
      reason += `; ${repacks.length} quantized weights repacked for the forward (${mb} MB)`;
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
      for (const { w, buft } of repacks) {
        const { store, weight } = makeRepacked(w, buft);
        stores.push(store);
        byWeight.set(w, weight);
        bytes += store.bytes;
      }
    } catch (e) {
      for (const st of stores) st.dispose();
      throw e;
    }
    // quantized weights without a copy multiply their in-graph Wᵀ in the compute type
    const gradTypes = quantized.filter((w) => w.transposed === null);
    for (const w of gradTypes) w.gradType = o.quantGradType;
    return new FrozenWeights(stores, byWeight, gradTypes, bytes, reason);
  }

  /** Bytes of the copies on `backend`. */
  bytesOn(backend: Backend): number {
    return this.stores.filter((st) => st.backend === backend).reduce((n, st) => n + st.bytes, 0);
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
    // a weight whose forward reads it (or a repacked copy) had its own `transposed` set
    for (const w of this.byWeight.keys()) w.transposed = null;
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

/** The CPU's repack buffer when ggml repacks `w` for mul_mat on this CPU (type, shape, features), else null. */
function repackBuffer(w: Tensor): BufferTypePtr | null {
  if (!w.backend.isCpu || w.rank !== 2) return null;
  const buft = w.backend.extraBufferTypes().find((b) => b.name.includes('REPACK'));
  if (buft === undefined) return null;
  // ggml decides per tensor whether it repacks, and writing one it does not into that buffer aborts:
  // ask the CPU device about a product over an unwritten tensor there first
  const probe = TensorStore.create(w.backend, [{ name: 'probe', shape: [...w.shape], dtype: w.dtype }], {
    bufferType: buft.ptr,
  });
  const g = new Graph(w.backend);
  try {
    const x = g.input([8, w.shape[1]!]);
    const y = g.build(() => linear(x, probe.get('probe')));
    return w.backend.supportsOp(y.ptr) ? buft.ptr : null;
  } finally {
    g.dispose();
    probe.dispose();
  }
}

/**
 * A copy of quantized weight `w` in the CPU's repack buffer, for faster forward products, when ggml
 * repacks it on this CPU; null otherwise. Its data cannot be read back: `linear`'s input gradient
 * reads `w` through the copy's `plain`. The caller disposes the store.
 */
export function repackedCopy(w: Tensor): { store: TensorStore; weight: Tensor } | null {
  const buft = isQuantDType(w.dtype) ? repackBuffer(w) : null;
  return buft === null ? null : makeRepacked(w, buft);
}

/** W's bytes in the repack buffer (ggml rearranges them as they are written). */
function makeRepacked(w: Tensor, buft: BufferTypePtr): { store: TensorStore; weight: Tensor } {
  const name = `${w.name}.repacked`;
  const store = TensorStore.create(w.backend, [{ name, shape: [...w.shape], dtype: w.dtype }], {
    bufferType: buft,
  });
  try {
    const bytes = w.store!.readBytes(w);
    withEngineLog(() => store.write(store.get(name), bytes)); // ggml logs every repacked tensor
  } catch (e) {
    store.dispose();
    throw e;
  }
  const weight = store.get(name);
  weight.plain = w; // the input gradient reads w (and w's transposed copy, if any)
  return { store, weight };
}
