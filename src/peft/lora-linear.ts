/**
 * One adapted linear layer, as PEFT's `lora.Linear` (and mlx-lm's `LoRALinear`): the only place the
 * LoRA product is written, for training, for inference and for merging.
 *
 *   LoRA:  y = W·x + s·B·A·dropout(x)                       s = α/r (rsLoRA: α/√r)
 *   DoRA:  y = m ⊙ (W·x + s·B·A·x) / ‖W + s·B·A‖            ‖·‖ per output row, not differentiated
 *
 * {@link LoraLinear.apply} builds that product in a graph over the base weight `W` (float or
 * quantized, never copied or changed); {@link LoraLinear.fuse} (and {@link fuseLora} on host data)
 * gives the one weight that computes the same, `W + s·B·A` or DoRA's `m ⊙ V / ‖V‖`. DoRA's row
 * norm has one definition in the graph (trainable `m`: the norm follows B and A) and one on the
 * host ({@link rowNorms}: the initial magnitude, the row scale inference computes once, the merge).
 *
 * @example
 * const q = 'model.layers.0.self_attn.q_proj';
 * const shape = { rank: 8, alpha: 16, inFeatures: 64, outFeatures: 64 };
 * const placement = { dora: false, trainable: true };
 * const store = StoreGroup.create(LoraLinear.specs(q, shape, backend, placement));
 * const lin = LoraLinear.fromStore(store, q, shape, loraScale(shape, false), placement);
 * const y = lin.apply(x, model.weight(`${q}.weight`)); // (..., out)
 * const merged = lin.fuse(model.weight(`${q}.weight`).read()); // (out, in): y = x·mergedᵀ
 */
import type { Backend } from '../engine/device.js';
import type { Graph } from '../tensor/graph.js';
import { add, affine, div, mul, scale, sqr, sqrt } from '../tensor/ops/elementwise.js';
import { cast, sum } from '../tensor/ops/layout.js';
import { linear, matmul } from '../tensor/ops/matmul.js';
import type { PlacedSpec, StoreGroup } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LoraModule } from './lora-weights.js';

/** The sizes of one adapted module: A is `[rank, inFeatures]`, B `[outFeatures, rank]`. */
export type LoraShape = Pick<LoraModule, 'rank' | 'alpha' | 'inFeatures' | 'outFeatures'>;

/**
 * How a module's tensors live in a store: `trainable` (`<module>.lora_A`, `.lora_B` and, with `dora`,
 * the magnitude `.lora_magnitude`, whose norm the graph computes), or fixed for inference (DoRA's row
 * scale `m/‖W + s·B·A‖` as `.dora_scale`, computed once).
 */
type Placement = { dora: boolean; trainable: boolean };

export class LoraLinear {
  /** The module it adapts, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly module: string;
  readonly rank: number;
  readonly alpha: number;
  /** The factor of B·A: α/r, or α/√r with rsLoRA ({@link loraScale}). */
  readonly scale: number;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** `[rank, in]` (torch layout of `lora_A.weight`). */
  readonly A: Tensor;
  /** `[out, rank]` (torch layout of `lora_B.weight`). */
  readonly B: Tensor;
  /** DoRA's trainable magnitude m `[out]`; null for LoRA and for a fixed {@link rowScale}. */
  readonly magnitude: Tensor | null;
  /** DoRA's fixed `m / ‖W + s·B·A‖` `[out]` (inference); null otherwise. */
  readonly rowScale: Tensor | null;

  constructor(
    module: string,
    shape: LoraShape,
    scale: number,
    t: { A: Tensor; B: Tensor; magnitude?: Tensor; rowScale?: Tensor },
  ) {
    this.module = module;
    this.rank = shape.rank;
    this.alpha = shape.alpha;
    this.scale = scale;
    this.inFeatures = shape.inFeatures;
    this.outFeatures = shape.outFeatures;
    this.A = t.A;
    this.B = t.B;
    this.magnitude = t.magnitude ?? null;
    this.rowScale = t.rowScale ?? null;
  }

  /** The specs of `module`'s tensors for a store on `backend` (see {@link Placement}). */
  static specs(module: string, shape: LoraShape, backend: Backend, o: Placement): PlacedSpec[] {
    const requiresGrad = o.trainable;
    const specs: PlacedSpec[] = [
      {
        name: `${module}.lora_A`,
        shape: [shape.rank, shape.inFeatures],
        dtype: 'f32',
        requiresGrad,
        backend,
      },
      {
        name: `${module}.lora_B`,
        shape: [shape.outFeatures, shape.rank],
        dtype: 'f32',
        requiresGrad,
        backend,
      },
    ];
    if (o.dora)
      specs.push({
        name: `${module}.${o.trainable ? 'lora_magnitude' : 'dora_scale'}`,
        shape: [shape.outFeatures],
        dtype: 'f32',
        requiresGrad,
        backend,
      });
    return specs;
  }

  /** The module over the tensors {@link specs} named in `store`. */
  static fromStore(
    store: StoreGroup,
    module: string,
    shape: LoraShape,
    scale: number,
    o: Placement,
  ): LoraLinear {
    const A = store.get(`${module}.lora_A`);
    const B = store.get(`${module}.lora_B`);
    if (!o.dora) return new LoraLinear(module, shape, scale, { A, B });
    if (o.trainable)
      return new LoraLinear(module, shape, scale, { A, B, magnitude: store.get(`${module}.lora_magnitude`) });
    return new LoraLinear(module, shape, scale, { A, B, rowScale: store.get(`${module}.dora_scale`) });
  }

  /**
   * `W·x` with the adapter, built in `x`'s graph; `w` is the base weight `[out, in]`. With a dropout
   * mask (same shape as x) the adapter sees `x ⊙ mask`; DoRA's magnitude term then takes the base
   * product of the dropped-out input too, as PEFT computes it with lora_dropout.
   */
  apply(x: Tensor, w: Tensor, o: { dropoutMask?: Tensor } = {}): Tensor {
    const g = x.graph!;
    const xd = o.dropoutMask === undefined ? x : mul(x, o.dropoutMask);
    const delta = g.label('lora', () => scale(linear(linear(xd, this.A), this.B), this.scale)); // (..., out)
    const base = linear(x, w); // (..., out)
    const ratio = this.doraRatio(g, w); // (out)
    if (ratio === null) return add(base, delta);
    if (o.dropoutMask === undefined) return mul(add(base, delta), ratio);
    // PEFT with lora_dropout: y = W·x + (r − 1)·W·x̃ + r·s·B·A·x̃, x̃ = x ⊙ mask, r = m/‖W + s·B·A‖
    const baseDropped = linear(xd, w);
    return add(base, add(mul(baseDropped, affine(ratio, 1, -1)), mul(delta, ratio)));
  }

  /** DoRA's `m / ‖W + s·B·A‖` `[out]`: the fixed row scale, or the norm in the graph as a constant (DoRA §4.3, as PEFT). */
  private doraRatio(g: Graph, w: Tensor): Tensor | null {
    if (this.rowScale !== null) return this.rowScale;
    if (this.magnitude === null) return null;
    const norm = g.noGrad(() => {
      const ba = matmul(this.B, this.A); // (out, in)
      return sqrt(sum(sqr(add(cast(w, 'f32'), scale(ba, this.scale))), 1)); // (out)
    });
    return div(this.magnitude, norm);
  }

  /**
   * Initialises a trainable module as PEFT does, from the base weight `w` it wraps: A Kaiming-uniform
   * (bound 1/√in, PyTorch's kaiming_uniform_(a=√5)) drawn from `rand`, B left at zero (so training
   * starts from the base model exactly), DoRA's magnitude the row norms of W (dequantized).
   */
  initialise(rand: () => number, w: Tensor): void {
    const bound = 1 / Math.sqrt(this.inFeatures);
    write(
      this.A,
      Float32Array.from({ length: this.rank * this.inFeatures }, () => (2 * rand() - 1) * bound),
    );
    if (this.magnitude !== null)
      write(this.magnitude, Float32Array.from(rowNorms(w.read(), this.inFeatures)));
  }

  /** Host copies of A, B and DoRA's magnitude, in the form the adapter files take. */
  toHost(): LoraModule {
    const m: LoraModule = {
      rank: this.rank,
      alpha: this.alpha,
      inFeatures: this.inFeatures,
      outFeatures: this.outFeatures,
      A: this.A.read(),
      B: this.B.read(),
    };
    if (this.magnitude !== null) m.magnitude = this.magnitude.read();
    return m;
  }

  /**
   * The weight `[out, in]` that computes what {@link apply} computes (without dropout), from the base
   * weight's f32 values `w`: `W + s·B·A`, DoRA `m ⊙ V / ‖V‖` (or the fixed row scale ⊙ V).
   */
  fuse(w: Float32Array): Float32Array {
    const host = this.toHost();
    if (this.rowScale === null) return fuseLora(w, host, this.scale, this.magnitude !== null);
    const v = loraWeight(w, host, this.scale);
    scaleRows(v, this.rowScale.read(), this.inFeatures);
    return v;
  }
}

function write(t: Tensor, values: Float32Array): void {
  t.store!.write(t, values);
}

/** The norm of each row of `v` `[out, in]` (PEFT's weight_norm over dim 1), accumulated in f64. */
export function rowNorms(v: Float32Array, nIn: number): Float64Array {
  const nOut = v.length / nIn;
  const out = new Float64Array(nOut);
  for (let o = 0; o < nOut; o++) {
    let ss = 0;
    for (let i = o * nIn; i < (o + 1) * nIn; i++) ss += v[i]! * v[i]!;
    out[o] = Math.sqrt(ss);
  }
  return out;
}

/** `W + s·B·A` as f32 `[out, in]`, accumulated in f64 per row. */
export function loraWeight(w: Float32Array, m: LoraModule, s: number): Float32Array {
  const { rank: r, inFeatures: nIn, outFeatures: nOut, A, B } = m;
  const out = new Float32Array(nOut * nIn);
  const row = new Float64Array(nIn);
  for (let o = 0; o < nOut; o++) {
    for (let i = 0; i < nIn; i++) row[i] = 0;
    for (let k = 0; k < r; k++) {
      const b = B[o * r + k]!;
      if (b === 0) continue;
      const base = k * nIn;
      for (let i = 0; i < nIn; i++) row[i]! += b * A[base + i]!;
    }
    const wo = o * nIn;
    for (let i = 0; i < nIn; i++) out[wo + i] = w[wo + i]! + s * row[i]!;
  }
  return out;
}

/** DoRA's `m / ‖V‖` for each output row of `V` `[out, in]` (0 for a zero row). */
export function doraRowScale(v: Float32Array, magnitude: Float32Array, nIn: number): Float32Array {
  const norms = rowNorms(v, nIn);
  return Float32Array.from(magnitude, (m, o) => (norms[o] === 0 ? 0 : m / norms[o]!));
}

/** Multiplies each row of `v` `[out, in]` by `f[row]`, in place. */
function scaleRows(v: Float32Array, f: Float32Array, nIn: number): void {
  for (let o = 0; o < f.length; o++) {
    const k = f[o]!;
    for (let i = o * nIn; i < (o + 1) * nIn; i++) v[i] = v[i]! * k;
  }
}

/**
 * The merged weight of a module from host data (PEFT's merge_and_unload): `W + s·B·A`, or with
 * `dora` `m ⊙ V / ‖V‖` for `V = W + s·B·A`, each row's norm over dim 1.
 */
export function fuseLora(w: Float32Array, m: LoraModule, s: number, dora: boolean): Float32Array {
  const v = loraWeight(w, m, s); // (out, in)
  if (dora) scaleRows(v, doraRowScale(v, m.magnitude!, m.inFeatures), m.inFeatures);
  return v;
}
