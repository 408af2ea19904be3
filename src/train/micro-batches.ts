/**
 * A step's micro-batches through the accumulate graph: each one collated, given its dropout seed and
 * run, its gradients added into the gradient buffers; the counts summed for the step.
 */
import type { Batches, Collated } from '../data/batches.js';
import type { LoraLayers } from '../peft/lora.js';
import { microBatchError, type MicroBatches, type Settings, type StepCounts } from './options.js';
import type { GraphRun, TrainStep } from './step.js';

/** What accumulating needs of a trainer. */
export interface AccumulateParts {
  graphs: TrainStep;
  batches: Batches;
  lora: LoraLayers | null;
  settings: Settings;
  /** This rank and the job's size (0 and 1 alone). */
  rank: number;
  size: number;
  lossScale: number;
  /** Sequences a micro-batch may hold: the graphs' batch (an objective's pairs or groups run together). */
  rows: number;
  /**
   * The objectives' weighted step: micro-batch k's per-position weights of the token losses
   * (logprobs.ts positionWeights), or undefined for 1 per counted token.
   */
  weightsFor?: (c: Collated, k: number, examples: number) => Float32Array | undefined;
}

/** Runs the accumulate graph over `batches` (yielding each run to the driver); returns the counts. */
export function* accumulateMicroBatches(
  p: AccumulateParts,
  batches: MicroBatches,
  firstMicroStep: number,
): Generator<GraphRun, StepCounts> {
  const [max, batchSize] = [p.rows, p.settings.batchSize];
  let [tokens, lossSum, inputTokens] = [0, 0, 0];
  for (const [k, batch] of batches.entries()) {
    if (batch.length > max) throw microBatchError(batch.length, max, batchSize);
    const c = p.batches.collate(batch);
    if (c.tokens === 0) continue; // nothing to learn from: no gradient, no count
    // dropout masks: one seed per (global micro-batch slot, rank)
    if (p.lora !== null) p.lora.step = (firstMicroStep + k + 1) * p.size + p.rank;
    lossSum += yield* p.graphs.accumulateRuns(c, p.lossScale, p.weightsFor?.(c, k, batch.length));
    [tokens, inputTokens] = [tokens + c.tokens, inputTokens + c.inputTokens];
  }
  return { tokens, lossSum, inputTokens };
}
