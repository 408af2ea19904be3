/**
 * A fingerprint of the training data, which checkpoints record so that a resume on other data is
 * noticed: sha256 over the training examples as the trainer receives them (each example's token ids,
 * labels and packed segments, over the positions that hold its sample: padding is left out), taken
 * as a set (the digests of the examples, sorted). So it changes when the examples change: the data
 * file's records, the dataset format, the chat template, the tokenizer, `max_samples`, packing, the
 * validation split, or a `context_length` that cuts or packs them differently; it does not change
 * with the order (the seed's shuffle), the padding, or the file's name.
 *
 * @example
 * const fp = dataFingerprint(data.train, 'data/style.jsonl');
 * fp.fingerprint; // 'sha256:3f1c…' (64 hex digits)
 */
import { createHash } from 'node:crypto';
import type { Example } from './example.js';

export interface DataFingerprint {
  /** `sha256:` and 64 hex digits. */
  fingerprint: string;
  /** Training examples (after packing). */
  examples: number;
  /** Where they came from (the dataset file or Hub id), when known: for messages only. */
  source?: string;
}

function bytes(a: Int32Array, n: number): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, Math.min(n, a.length) * 4);
}

function exampleDigest(e: Example): string {
  const n = e.length ?? e.ids.length;
  const h = createHash('sha256').update(`${n}\n`).update(bytes(e.ids, n)).update(bytes(e.labels, n));
  if (e.segments !== undefined) h.update('segments').update(bytes(e.segments, n));
  return h.digest('hex');
}

/** The fingerprint of `examples` (see the file's comment for what it covers). */
export function dataFingerprint(examples: readonly Example[], source?: string): DataFingerprint {
  const h = createHash('sha256');
  for (const d of examples.map(exampleDigest).sort()) h.update(d);
  return {
    fingerprint: `sha256:${h.digest('hex')}`,
    examples: examples.length,
    ...(source === undefined ? {} : { source }),
  };
}

/** `data/style.jsonl (40 examples, sha256 3f1c0a9b2e7d)`: a fingerprint for a message. */
export function describeData(d: DataFingerprint): string {
  const hex = d.fingerprint.replace(/^sha256:/, '').slice(0, 12);
  return `${d.source === undefined ? '' : `${d.source} `}(${d.examples} examples, sha256 ${hex})`;
}
