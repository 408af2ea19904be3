/**
 * Persistent transposed copies of frozen weights for `linear`'s input gradient (DESIGN.md §2):
 *
 * - `f32`:  Wᵀ dequantized to f32 — exact, 4 bytes per parameter more;
 * - `same`: Wᵀ stored in W's own type — runs the same kernel as the forward, 1 weight more; for a
 *   quantized W it rounds a second time (relative error ~8e-2 for q4_0, ~8e-3 for q8_0), so the
 *   gradient is no longer exactly that of the forward's weights.
 *
 * Without one, `linear` dequantizes and transposes W inside every step's graph (exact, no memory).
 *
 * @example
 * const copy = attachTransposed(w, 'f32'); // w.transposed is now set
 * ... train ...
 * copy.dispose();
 */
import type { BufferTypePtr } from '../engine/ggml.js';
import { ShapeError, fmtShape } from '../errors.js';
import { checkRowLength } from './host.js';
import { TensorStore } from './store.js';
import type { Tensor } from './tensor.js';

export type TransposedMode = 'f32' | 'same';

/** Creates Wᵀ on W's device, sets `w.transposed`, and returns the store that owns it. */
export function attachTransposed(
  w: Tensor,
  mode: TransposedMode,
  options: { bufferType?: BufferTypePtr } = {},
): TensorStore {
  if (w.kind !== 'stored' || w.rank !== 2) {
    throw new ShapeError(`attachTransposed: ${w.toString()} is not a stored 2-D weight`);
  }
  const [rows, cols] = w.shape as [number, number];
  const dtype = mode === 'f32' ? 'f32' : w.dtype;
  checkRowLength(dtype, [cols, rows], `transposed copy of ${w.name} ${fmtShape(w.shape)}`);
  const src = w.read(); // dequantized when quantized
  const t = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = src[r * cols + c]!;
  const store = TensorStore.create(w.backend, [{ name: `${w.name}.T`, shape: [cols, rows], dtype }], options);
  const wt = store.get(`${w.name}.T`);
  store.write(wt, t);
  w.transposed = wt;
  return store;
}
