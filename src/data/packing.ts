/**
 * Packing: several samples concatenated into one sequence of `contextLength` positions, so short
 * samples do not waste a whole padded sequence each. Each position carries the id of its sample
 * (`segments`); the Trainer turns them into a block-diagonal causal attention mask
 * ({@link packedAttentionMask}), so no token attends to another sample. Positions run on across
 * samples and need not restart: RoPE makes attention scores depend only on the distance between
 * query and key, and keys of other samples are masked out.
 */
import type { Example } from './example.js';
import { IGNORE, samplePositions, type Sample } from './tokenize.js';

/** The segment id of padding positions (they see only padding). */
export const PAD_SEGMENT = -1;

/**
 * Packs samples, in order, into examples of `contextLength` positions: a sample goes into the current
 * sequence when it fits, else the sequence is padded and a new one started (first fit, order kept).
 * A sample longer than the context is truncated to it, as without packing.
 */
export function packSamples(samples: readonly Sample[], contextLength: number, pad: number): Example[] {
  const out: Example[] = [];
  let cur: { ids: Int32Array; labels: Int32Array; segments: Int32Array; used: number; count: number } | null =
    null;
  const close = (): void => {
    if (cur !== null)
      out.push({ ids: cur.ids, labels: cur.labels, segments: cur.segments, length: cur.used });
    cur = null;
  };
  for (const s of samples) {
    const p = samplePositions(s, contextLength);
    if (p.ids.length === 0) continue;
    if (cur !== null && cur.used + p.ids.length > contextLength) close();
    cur ??= {
      ids: new Int32Array(contextLength).fill(pad),
      labels: new Int32Array(contextLength).fill(IGNORE),
      segments: new Int32Array(contextLength).fill(PAD_SEGMENT),
      used: 0,
      count: 0,
    };
    cur.ids.set(p.ids, cur.used);
    cur.labels.set(p.labels, cur.used);
    cur.segments.fill(cur.count, cur.used, cur.used + p.ids.length);
    cur.used += p.ids.length;
    cur.count++;
  }
  close();
  return out;
}

/**
 * The additive attention mask `[B, 1, T, T]` of a batch: 0 where query i and key j ≤ i are in the
 * same segment, -Infinity elsewhere. A sequence without segments is one segment (plain causal).
 * Rows of `batch` past the examples given (a short last batch) are one segment too.
 */
export function packedAttentionMask(
  segments: readonly (Int32Array | undefined)[],
  batch: number,
  T: number,
): Float32Array {
  const mask = new Float32Array(batch * T * T).fill(-Infinity);
  for (let b = 0; b < batch; b++) {
    const seg = segments[b];
    for (let i = 0; i < T; i++) {
      const row = (b * T + i) * T;
      for (let j = 0; j <= i; j++) if (seg === undefined || seg[i] === seg[j]) mask[row + j] = 0;
    }
  }
  return mask;
}
