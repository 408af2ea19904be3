/**
 * What an entry of the op table (src/tensor/ops/table.ts) is: an op, its gradient rule in a line,
 * and its gradient checks, each built from qtune's ops and compared with a float64 {@link Reference}
 * that the test runner supplies (tests/helpers/ref.ts), so this layer never imports the tests.
 */
import type { Backend } from '../../engine/device.js';
import type { Graph } from '../graph.js';
import type { Tensor } from '../tensor.js';

/** A float64 array of the reference, row-major, outermost dimension first. */
export interface RefArr {
  shape: number[];
  data: Float64Array;
}

/** The float64 math the checks compare with (PyTorch semantics); tests/helpers/ref.ts implements it. */
export interface Reference {
  arr(shape: number[], data?: ArrayLike<number>): RefArr;
  map(a: RefArr, f: (x: number) => number): RefArr;
  add(a: RefArr, b: RefArr): RefArr;
  sub(a: RefArr, b: RefArr): RefArr;
  mul(a: RefArr, b: RefArr): RefArr;
  div(a: RefArr, b: RefArr): RefArr;
  expand(a: RefArr, shape: number[]): RefArr;
  sum(a: RefArr, axis?: number, keepDim?: boolean): RefArr;
  reshape(a: RefArr, shape: number[]): RefArr;
  permute(a: RefArr, dims: number[]): RefArr;
  transpose(a: RefArr, d0?: number, d1?: number): RefArr;
  slice(a: RefArr, axis: number, start: number, end: number): RefArr;
  concat(a: RefArr, b: RefArr, axis: number): RefArr;
  matmul(a: RefArr, b: RefArr): RefArr;
  linear(x: RefArr, w: RefArr): RefArr;
  embedding(table: RefArr, ids: number[], idsShape: number[]): RefArr;
  rmsNorm(x: RefArr, eps: number): RefArr;
  rope(
    x: RefArr,
    positions: number[],
    o: { mode: 'normal' | 'neox'; base: number; factors?: number[] },
  ): RefArr;
  softmax(x: RefArr, o?: { scale?: number; causal?: boolean; mask?: RefArr }): RefArr;
  silu(x: RefArr): RefArr;
  swiglu(gate: RefArr, up: RefArr): RefArr;
  gelu(x: RefArr): RefArr;
  crossEntropy(logits: RefArr, labels: number[]): RefArr;
}

/** The op's forward in float64, from the reference and the case's inputs. */
export type RefFn = (R: Reference, x: RefArr[]) => RefArr;

/** What a case is built with, besides its inputs. */
export interface CheckContext {
  g: Graph;
  backend: Backend;
  /** Stored tensors the case creates besides its trainable inputs (freed after the case). */
  store(t: Tensor): Tensor;
  /** `n` values N(0, scale²) from the checks' generator seeded with `seed` (the data of a frozen weight). */
  normals(n: number, seed: number, scale: number): Float32Array;
  /**
   * A frozen weight's copy in the CPU repack buffer (made by src/train/frozen.ts, a layer above this
   * one, so the runner supplies it), kept like {@link store}; null where the device has none.
   */
  repacked(w: Tensor): Tensor | null;
}

/** One gradient check of an op. */
export interface GradCheck {
  /** The test's name (unique across the table). */
  name: string;
  /** Seed of the inputs and of the projection R. */
  seed: number;
  /** Shapes of the f32 inputs, trainable unless listed in `frozen`. */
  inputs: number[][];
  frozen?: number[];
  /** Inputs drawn from [0.5, 2) instead of N(0, 1) (sqrt, log, divisors). */
  positive?: number[];
  build(x: Tensor[], c: CheckContext): { out: Tensor; feed?: (g: Graph) => void; ref?: RefFn };
  /** The float64 forward, unless `build` returns one (it depends on what it built). */
  ref?: RefFn;
  /** Tolerances on max|error| / max|reference|; defaults 1e-4 forward, 1e-3 gradient. */
  fwdTol?: number;
  gradTol?: number;
}

export interface OpEntry {
  name: string;
  forward: (...args: never[]) => Tensor;
  /** The gradient rule in one line. */
  gradient: string;
  checks: GradCheck[];
}

/** A case of one op on inputs of `shapes`: `op(...x)` against `ref`. */
export function simple(
  name: string,
  seed: number,
  shapes: number[][],
  op: (x: Tensor[]) => Tensor,
  ref: RefFn,
): GradCheck {
  return { name, seed, inputs: shapes, build: (x) => ({ out: op(x) }), ref };
}
