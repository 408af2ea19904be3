/**
 * Data parallelism as the Trainer sees it: the collectives it calls (any src/dist Communicator
 * provides them; train does not import dist) and how a global batch splits across ranks.
 *
 * The global batch is the config's batch_size × gradient_accumulation_steps examples per optimizer
 * step, whatever the number of ranks (as torchtune and Unsloth count it, not per device as Hugging
 * Face does): N ranks then compute the update one process computes, and a run's settings mean the
 * same on a laptop and on a cluster. Every rank walks the same seeded data order and takes a
 * contiguous share of each global batch; the loss is a sum and the update divides by the step's
 * target tokens, so summing the gradients (and token counts) across ranks is exact. Also here: the
 * gradient all-reduce and the broadcast of rank 0's state.
 */
import { ConfigError } from '../errors.js';
import type { Optimizer } from '../optim/optimizer.js';
import type { StoreGroup } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';

/** The collectives data-parallel training needs; every rank calls each, in the same order. */
export interface Collectives {
  readonly rank: number;
  readonly size: number;
  /** Sums `buf` elementwise over every rank, in place. */
  allReduceSum(buf: Float32Array | Float64Array): void;
  /** Copies `root`'s `buf` into every rank's. */
  broadcast(buf: Float32Array | Float64Array, root: number): void;
}

export interface BatchSplit {
  /** Examples each rank takes per step. */
  perRank: number;
  /** Examples per micro-batch (the graphs' batch dimension): the largest divisor of perRank ≤ batch_size. */
  microBatch: number;
  /** Micro-batches each rank runs per step. */
  microBatches: number;
}

/** How a global batch of batchSize × accumulation examples splits across `ranks`. */
export function splitGlobalBatch(batchSize: number, accumulation: number, ranks: number): BatchSplit {
  const global = batchSize * accumulation;
  if (global % ranks !== 0)
    throw new ConfigError(
      `batch_size × gradient_accumulation_steps = ${batchSize} × ${accumulation} = ${global} example${global === 1 ? '' : 's'} per step, which do not split across ${ranks} ranks`,
      {
        hint: `make it a multiple of ${ranks}, or launch a number of ranks that divides ${global}; the global batch is the same for any number of ranks`,
        details: { batch_size: batchSize, gradient_accumulation_steps: accumulation, ranks },
      },
    );
  const perRank = global / ranks;
  let microBatch = Math.min(batchSize, perRank);
  while (perRank % microBatch !== 0) microBatch--;
  return { perRank, microBatch, microBatches: perRank / microBatch };
}

/** Rank `rank`'s contiguous share [start, end) of `n` items (the first n % size ranks take one more). */
export function shareOf(n: number, rank: number, size: number): [number, number] {
  const base = Math.floor(n / size);
  const extra = n % size;
  const start = rank * base + Math.min(rank, extra);
  return [start, start + base + (rank < extra ? 1 : 0)];
}

/**
 * The step's sum across the ranks: every rank holds the gradients and counts of its share of the
 * global batch; summed, those of the whole batch. The gradient buffers are summed in buckets of whole
 * tensors of at most 64 MiB (a larger tensor goes alone), through one reused host buffer. In a job of
 * one (or none) there is nothing to sum.
 */
export class GradientAllReduce {
  private bucket: Float32Array | null = null;

  constructor(
    private readonly comm: Collectives | null,
    private readonly grads: StoreGroup,
  ) {}

  /**
   * Sums the step's counts (target tokens, loss sum, input tokens) and gradients over the ranks (a
   * rank's overflow makes the summed loss not finite on every rank). Returns the sums, and the time
   * and bytes it took.
   */
  sumStep<C extends { tokens: number; lossSum: number; inputTokens: number }>(
    c: C,
  ): C & { ms: number; bytes: number } {
    if (this.comm === null || this.comm.size === 1) return { ...c, ms: 0, bytes: 0 };
    const t0 = performance.now();
    const totals = Float64Array.of(c.tokens, c.lossSum, c.inputTokens);
    this.comm.allReduceSum(totals);
    const bytes = totals.byteLength + this.gradients();
    const [tokens, lossSum, inputTokens] = [totals[0]!, totals[1]!, totals[2]!];
    return { ...c, tokens, lossSum, inputTokens, ms: performance.now() - t0, bytes };
  }

  /** Sums the gradients over the ranks, in place. Returns the bytes summed. */
  private gradients(): number {
    const comm = this.comm!;
    const cap = 16 * 2 ** 20; // floats
    const tensors = this.grads.tensors;
    const total = tensors.reduce((n, t) => n + t.numel, 0);
    this.bucket ??= new Float32Array(Math.min(cap, total));
    const bucket = this.bucket;
    let pending: Tensor[] = [];
    let fill = 0;
    const flush = (): void => {
      if (pending.length === 0) return;
      const view = bucket.subarray(0, fill);
      let off = 0;
      for (const t of pending) {
        this.grads.read(t, view.subarray(off, off + t.numel));
        off += t.numel;
      }
      comm.allReduceSum(view);
      off = 0;
      for (const t of pending) {
        this.grads.write(t, view.subarray(off, off + t.numel));
        off += t.numel;
      }
      pending = [];
      fill = 0;
    };
    for (const t of tensors) {
      if (t.numel > cap) {
        flush();
        const data = this.grads.read(t);
        comm.allReduceSum(data);
        this.grads.write(t, data);
        continue;
      }
      if (fill + t.numel > cap) flush();
      pending.push(t);
      fill += t.numel;
    }
    flush();
    return total * 4;
  }
}

/**
 * Makes every rank start from rank 0's state: the trainable weights, the optimizer's state and step,
 * and the trainer's `progress` counters (returned as rank 0 has them). LoRA's seeded initialisation
 * is the same everywhere already; this also covers weights loaded from files that differ, and a
 * checkpoint read on one rank while it was being replaced.
 */
export function syncFromRank0<P extends Record<string, number>>(
  comm: Collectives,
  params: readonly Tensor[],
  optimizer: Optimizer,
  progress: P,
): P {
  for (const p of params) {
    const data = p.store!.read(p);
    comm.broadcast(data, 0);
    p.store!.write(p, data);
  }
  const keys = Object.keys(progress); // the same order on every rank
  const numbers = Float64Array.of(...keys.map((k) => progress[k]!), optimizer.step);
  comm.broadcast(numbers, 0);
  const state = optimizer.stateTensors();
  for (const t of state) comm.broadcast(t.data, 0);
  optimizer.loadState(numbers[keys.length]!, state);
  return Object.fromEntries(keys.map((k, i) => [k, numbers[i]!])) as P;
}
