/**
 * Data parallelism as the Trainer sees it: the collectives it calls (any src/dist Communicator
 * provides them; train does not import dist) and how a global batch splits across ranks.
 *
 * The global batch is the config's batch_size × gradient_accumulation_steps examples per optimizer
 * step, whatever the number of ranks (as torchtune and Unsloth count it, not per device as Hugging
 * Face does): N ranks then compute the update one process computes, and a run's settings mean the
 * same on a laptop and on a cluster. Every rank walks the same seeded data order and takes a
 * contiguous share of each global batch; the loss is a sum and the update divides by the step's
 * target tokens, so summing the gradients (and token counts) across ranks is exact.
 */
import { ConfigError } from '../errors.js';

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
