/**
 * Batches: the order the training examples are seen in, the micro-batches of each step, and
 * collation into the graphs' inputs.
 *
 * The order is a seeded shuffle per epoch, the same on every run and every rank; a step takes the
 * next batchSize × accumulation examples of it (wrapping into the next epoch), and with N ranks each
 * takes its contiguous share. The position (epoch, cursor) is all a checkpoint needs to resume the
 * order exactly.
 *
 * Padding (`padding`): `longest` (dynamic padding, the default of the Trainer) cuts each micro-batch
 * to the bucket of its longest example, the smallest power of two ≥ 64 positions that holds it (at
 * most the context length), so a short batch runs a short graph; `max_length` pads every micro-batch
 * to the context length. `groupByLength` orders each epoch as Hugging Face's LengthGroupedSampler
 * does: the seeded shuffle, then each run of 50 global batches sorted longest first, so the examples
 * of a micro-batch have similar lengths and little padding.
 *
 * @example
 * const batches = new Batches(data, { batchSize: 4, accumulation: 2, microBatchSize: 4, seed: 42, vocabSize: 32000 });
 * for (const micro of batches.next()) graph.set(ids, batches.collate(micro).ids);
 */
import { ConfigError, TokenRangeError } from '../errors.js';
import { seededUniform } from '../util/random.js';
import type { Example, TrainData } from './example.js';
import { packedAttentionMask } from './packing.js';

/** Dynamic padding (`longest`, to each micro-batch's bucket) or to the context length (`max_length`). */
export type Padding = 'longest' | 'max_length';
export const PADDINGS: readonly Padding[] = ['longest', 'max_length'];

/** The shortest bucket of dynamic padding, in positions. */
export const MIN_BUCKET = 64;
/** Global batches per length-sorted run of `groupByLength` (Hugging Face's megabatch_mult). */
const MEGABATCH = 50;

export interface BatchOptions {
  /** Examples per micro-batch of the whole job. */
  batchSize: number;
  /** Micro-batches per optimizer step. */
  accumulation: number;
  /** Examples per micro-batch on this rank (batchSize, or less when a global batch splits across ranks). */
  microBatchSize: number;
  seed: number;
  /** Ids and labels must lie below it. */
  vocabSize: number;
  /** Data parallelism: this rank and the number of ranks (default 0 of 1). */
  rank?: number;
  size?: number;
  /** Default `max_length` (the Trainer's default is `longest`). */
  padding?: Padding;
  /** Sort each run of 50 global batches by length, longest first. Default false. */
  groupByLength?: boolean;
  /**
   * Sequences a collated micro-batch holds (default microBatchSize): more for the paired objectives,
   * whose micro-batch of examples runs as its chosen and rejected sequences in one batch.
   */
  collateRows?: number;
}

/** A micro-batch as the graphs take it. */
export interface Collated {
  /** Positions per sequence: the bucket of the batch's longest example, or the context length. */
  seqLen: number;
  /** `[microBatchSize, seqLen]` token ids (0 after the batch's last example). */
  ids: Int32Array;
  /** `[microBatchSize, seqLen]` targets, -100 where no loss is taken. */
  labels: Int32Array;
  /** Target tokens (labels other than -100). */
  tokens: number;
  /** Positions that hold samples (the examples' lengths): the tokens the model reads, padding aside. */
  inputTokens: number;
  /** Sequence packing: the block-diagonal causal mask `[B, 1, T, T]`; null without packed examples. */
  mask: Float32Array | null;
}

/** Where the order stands: the epoch and the position in its order. */
export interface BatchPosition {
  epoch: number;
  cursor: number;
}

export class Batches {
  /** Tokens per example: every example of both splits has this many. */
  readonly seqLen: number;
  /** Sequence packing: some example carries segments, so the graphs take an attention mask input. */
  readonly packed: boolean;
  /** The bucket of the longest example of both splits: the longest graph a step runs. */
  readonly maxSeqLen: number;
  private readonly train: readonly Example[];
  private epoch = 0;
  private cursor = 0;
  private order: number[];

  /** Checks every example of `data` (lengths, ids and labels in range) before anything is allocated. */
  constructor(
    data: TrainData,
    private readonly o: BatchOptions,
  ) {
    if (data.train.length === 0)
      throw new ConfigError('dataset: the training split is empty', { hint: 'give at least one example' });
    this.train = data.train;
    this.seqLen = data.train[0]!.ids.length;
    checkExamples('train', data.train, this.seqLen, o.vocabSize);
    checkExamples('validation', data.validation ?? [], this.seqLen, o.vocabSize);
    const all = [...data.train, ...(data.validation ?? [])];
    this.packed = all.some((e) => e.segments !== undefined);
    this.maxSeqLen = this.bucket(Math.max(...all.map(exampleLength)));
    this.order = this.epochOrder(0);
  }

  get position(): BatchPosition {
    return { epoch: this.epoch, cursor: this.cursor };
  }

  /** Moves to a position (a checkpoint's, or rank 0's). */
  set position(p: BatchPosition) {
    if (p.epoch !== this.epoch) this.order = this.epochOrder(p.epoch);
    this.epoch = p.epoch;
    this.cursor = p.cursor;
  }

  /** Epochs done, as a fraction (for logs). */
  get epochFloat(): number {
    return this.epoch + this.cursor / this.train.length;
  }

  /**
   * This rank's micro-batches of the next global batch: all of it alone; with N ranks, the rank's
   * contiguous share of it (every rank walks the same order).
   */
  next(): Example[][] {
    const global = this.nextExamples(this.o.batchSize * this.o.accumulation);
    const size = this.o.size ?? 1;
    const rank = this.o.rank ?? 0;
    const per = global.length / size;
    const mine = global.slice(rank * per, (rank + 1) * per);
    const out: Example[][] = [];
    for (let i = 0; i < mine.length; i += this.o.microBatchSize)
      out.push(mine.slice(i, i + this.o.microBatchSize));
    return out;
  }

  /**
   * Collation: a micro-batch's examples as the graphs' inputs (ids, labels padded with -100 to the
   * micro-batch size, the counted tokens, and the packed sequences' attention mask). "Packing" in
   * qtune means only sequence packing (data/packing.ts).
   */
  collate(batch: readonly Example[], seqLen?: number): Collated {
    const T = seqLen ?? this.bucket(Math.max(0, ...batch.map(exampleLength)));
    const B = this.o.collateRows ?? this.o.microBatchSize;
    const ids = new Int32Array(B * T);
    const labels = new Int32Array(B * T).fill(-100);
    let inputTokens = 0;
    batch.forEach((e, b) => {
      ids.set(e.ids.subarray(0, T), b * T);
      labels.set(e.labels.subarray(0, T), b * T);
      inputTokens += Math.min(T, exampleLength(e));
    });
    let tokens = 0;
    for (const l of labels) if (l !== -100) tokens++;
    const mask = this.packed
      ? packedAttentionMask(
          batch.map((e) => e.segments),
          B,
          T,
        )
      : null;
    return { seqLen: T, ids, labels, tokens, inputTokens, mask };
  }

  /**
   * The positions a micro-batch whose longest example holds `n` runs on: with dynamic padding the
   * smallest power of two ≥ {@link MIN_BUCKET} that holds it, at most the context length; else the
   * context length.
   */
  bucket(n: number): number {
    if ((this.o.padding ?? 'max_length') === 'max_length') return this.seqLen;
    let b = MIN_BUCKET;
    while (b < n) b *= 2;
    return Math.min(b, this.seqLen);
  }

  /** The order of the training examples in `epoch`: a seeded shuffle, the same on every run. */
  private epochOrder(epoch: number): number[] {
    const n = this.train.length;
    const order = Array.from({ length: n }, (_, i) => i);
    const rand = seededUniform((this.o.seed * 1000003 + epoch) >>> 0);
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    if (this.o.groupByLength !== true) return order;
    // runs of 50 global batches, each sorted longest first (a stable sort: ties keep the shuffle)
    const run = MEGABATCH * this.o.batchSize * this.o.accumulation;
    const length = (i: number) => exampleLength(this.train[i]!);
    const grouped: number[] = [];
    for (let i = 0; i < n; i += run)
      grouped.push(...order.slice(i, i + run).sort((a, b) => length(b) - length(a)));
    return grouped;
  }

  /** The next `n` training examples of the order (the data wraps into the next epoch). */
  private nextExamples(n: number): Example[] {
    const out: Example[] = [];
    while (out.length < n) {
      if (this.cursor >= this.order.length) {
        this.epoch++;
        this.cursor = 0;
        this.order = this.epochOrder(this.epoch);
      }
      out.push(this.train[this.order[this.cursor++]!]!);
    }
    return out;
  }
}

/** The positions of an example that hold its sample (all of them unless it says). */
export function exampleLength(e: Example): number {
  return e.length ?? e.ids.length;
}

/**
 * Every example has `seqLen` ids and labels (and segments, when packed), and ids and labels with a
 * row in the embeddings (or a class of the loss): found here, before anything is allocated, rather
 * than when the step that holds them is set.
 */
function checkExamples(split: string, list: readonly Example[], seqLen: number, vocab: number): void {
  list.forEach((e, i) => {
    if (
      e.ids.length !== seqLen ||
      e.labels.length !== seqLen ||
      (e.segments !== undefined && e.segments.length !== seqLen)
    )
      throw new ConfigError(
        `dataset: ${split} example ${i} has ${e.ids.length} ids, ${e.labels.length} labels${e.segments === undefined ? '' : ` and ${e.segments.length} segments`}; every example needs ${seqLen}`,
        { hint: 'pad or truncate every example to the context length' },
      );
    if (e.length !== undefined && !(Number.isInteger(e.length) && e.length >= 0 && e.length <= seqLen))
      throw new ConfigError(`dataset: ${split} example ${i} has length ${e.length}, not 0 to ${seqLen}`, {
        hint: 'length counts the positions that hold the sample; leave it out for all of them',
      });
    const bad = e.ids.findIndex((id) => !(id >= 0 && id < vocab));
    if (bad >= 0)
      throw new TokenRangeError(
        `dataset: ${split} example ${i}`,
        { id: e.ids[bad]!, position: bad, vocabSize: vocab },
        { hint: 'pad with an id below vocab_size (such as the EOS), or resize the embeddings' },
      );
    const badLabel = e.labels.findIndex((l) => l !== -100 && !(l >= 0 && l < vocab));
    if (badLabel >= 0)
      throw new TokenRangeError(
        `dataset: ${split} example ${i}, labels`,
        { id: e.labels[badLabel]!, position: badLabel, vocabSize: vocab },
        { hint: 'labels are token ids below vocab_size, or -100 to ignore a position' },
      );
  });
}
