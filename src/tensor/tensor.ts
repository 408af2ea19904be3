/**
 * A tensor is a handle on a ggml tensor plus what TypeScript needs to reason about it: its shape
 * (outermost first), its element type, and where it lives.
 *
 * - `stored` tensors own data in a backend buffer that outlives graphs: weights, LoRA adapters,
 *   optimizer state. They belong to a {@link TensorStore}.
 * - `input` tensors are graph leaves whose data the caller sets before each run (tokens, labels).
 * - `node` tensors are results of ops inside one {@link Graph}; they exist for that graph only.
 */
import type { Backend } from '../engine/device.js';
import type { DType } from '../engine/dtype.js';
import type { TensorPtr } from '../engine/ggml.js';
import { fmtShape } from '../errors.js';
import type { Graph } from './graph.js';
import { numel, type Shape } from './shape.js';
import type { TensorStore } from './store.js';

export type TensorKind = 'stored' | 'input' | 'node';

export class Tensor {
  readonly ptr: TensorPtr;
  readonly shape: Shape;
  readonly dtype: DType;
  readonly kind: TensorKind;
  /** The graph of an `input` or `node` tensor; null for stored tensors. */
  readonly graph: Graph | null;
  /** The store of a `stored` tensor; null otherwise. */
  readonly store: TensorStore | null;
  /** Whether gradients flow to this tensor (trainable weights, and every op result that depends on one). */
  readonly requiresGrad: boolean;
  readonly name: string;
  /**
   * A persistent transposed copy of a frozen weight (`[in, out]` for a `[out, in]` weight), used by
   * `linear`'s input gradient instead of transposing inside every step (DESIGN.md §2, option b/c).
   */
  transposed: Tensor | null = null;
  /**
   * The type `linear`'s input gradient multiplies in when Wᵀ is made inside the step's graph (no
   * {@link transposed} copy): `f32` (exact; the default), or `bf16`/`f16`, a compute type as
   * bitsandbytes' `bnb_4bit_compute_dtype` — W (dequantized) and dY rounded to it, f32 sums.
   */
  gradType: 'f32' | 'bf16' | 'f16' = 'f32';
  /**
   * For a copy of a frozen weight in a buffer whose data cannot be read back (the CPU's repacked
   * layout for faster quantized forward products): the weight in its plain buffer, which `linear`'s
   * input gradient reads instead.
   */
  plain: Tensor | null = null;

  /** @internal created by stores, graphs and ops */
  constructor(init: {
    ptr: TensorPtr;
    shape: Shape;
    dtype: DType;
    kind: TensorKind;
    graph?: Graph | null;
    store?: TensorStore | null;
    requiresGrad?: boolean;
    name?: string;
  }) {
    this.ptr = init.ptr;
    this.shape = Object.freeze([...init.shape]);
    this.dtype = init.dtype;
    this.kind = init.kind;
    this.graph = init.graph ?? null;
    this.store = init.store ?? null;
    this.requiresGrad = init.requiresGrad ?? false;
    this.name = init.name ?? '';
  }

  get rank(): number {
    return this.shape.length;
  }

  get numel(): number {
    return numel(this.shape);
  }

  /** Whether the store or graph that owns this tensor is still alive (not disposed). */
  get alive(): boolean {
    return this.store !== null ? this.store.alive : this.graph!.alive;
  }

  /** The backend whose memory holds (or will hold) this tensor. */
  get backend(): Backend {
    if (this.store !== null) return this.store.backend;
    return this.graph!.backend;
  }

  /** Reads a stored tensor, or an input/output of a computed graph, as f32 values. */
  read(): Float32Array {
    if (this.store !== null) return this.store.read(this);
    return this.graph!.read(this);
  }

  toString(): string {
    return `Tensor(${this.name || this.kind}, ${fmtShape(this.shape)}, ${this.dtype})`;
  }
}
