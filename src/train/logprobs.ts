/**
 * Per-token log-probs of the label tokens, and the per-token weights of a weighted step: what every
 * preference and RL objective is made of (docs/objectives.md). An objective's loss L is a function
 * of the label tokens' log-probs, so its gradient is Σₜ (∂L/∂log pₜ)·∇log pₜ: the accumulate graph
 * computes it when its cross-entropy (CEₜ = −log pₜ) takes the weights wₜ = −∂L/∂log pₜ instead of 1.
 *
 * The log-probs come from a forward-only graph per sequence length (the step's forward, its loss's
 * per-token terms read back): the policy (with its adapters and the dropout masks of the micro-batch
 * the weighted step will run, so the gradient is that of the same function), or the reference: the
 * same model with the adapters off (LoRA, QLoRA, DoRA: no copy of the weights), or for full
 * fine-tuning a frozen host copy of the starting weights swapped in for the pass.
 *
 * @example
 * const lp = trainer.tokenLogProbs(examples); // Float64Array per example, one per counted label
 * const ref = trainer.tokenLogProbs(examples, { adapters: false });
 */
import { ConfigError, ShapeError } from '../errors.js';
import { Graph } from '../tensor/graph.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Collated } from '../data/batches.js';
import type { Example } from '../data/example.js';
import type { LoraLayers } from '../peft/lora.js';
import { forwardInputs, forwardOptions, lossSum, type ForwardSetup } from './forward.js';
import type { WeightedMicroBatch, WeightedStepOptions } from './objective.js';
import { microBatchError, type MicroBatches, type StepCounts } from './options.js';
import type { Collectives } from './parallel.js';
import type { TrainStep } from './step.js';

/** {@link LogProbs.tokenLogProbs}'s options. */
export interface TokenLogProbOptions {
  /** false: the reference model (the adapters off, or full fine-tuning's starting weights). Default true. */
  adapters?: boolean;
  /**
   * The index of the next weighted step's micro-batch these examples are (their dropout masks): the
   * examples then fill one micro-batch. Default: the examples split into micro-batches of the graph's
   * rows, the j-th taking micro-batch j's masks.
   */
  microBatch?: number;
}

/** A weighted step's micro-batches' weights, with its options (the Trainer's). */
export interface Weighted extends WeightedStepOptions {
  weights: Float32Array[][];
}

/** What the log-prob graphs read from the trainer. */
export interface LogProbSetup {
  graphs: TrainStep;
  collate: (batch: readonly Example[]) => Collated;
  /** Sequences per graph run (the graphs' batch). */
  rows: number;
  lora: LoraLayers | null;
  /** The trainable tensors (full fine-tuning's reference swaps their starting values in). */
  params: readonly Tensor[];
  /** The job's examples per micro-batch (for messages). */
  settings: { batchSize: number };
  /** Where the trainer stands: micro-batches and optimizer steps run, and its ranks. */
  at: () => { microStep: number; steps: number; comm: Collectives | null };
}

interface LogProbGraph {
  g: Graph;
  ids: Tensor;
  labels: Tensor;
  mask: Tensor | null;
  tokens: Tensor[];
}

export class LogProbs {
  private readonly graphs = new Map<string, LogProbGraph>();
  /** Full fine-tuning: the starting weights, as bytes (the reference model). */
  private reference: Uint8Array[] | null = null;

  constructor(private readonly s: LogProbSetup) {}

  /** Sequences per graph run. */
  get rows(): number {
    return this.s.rows;
  }

  /** Keeps full fine-tuning's starting weights for the reference (before the first update). */
  keepReference(): void {
    if (this.s.lora !== null || this.reference !== null) return;
    if (this.s.at().steps > 0)
      throw new ConfigError('the reference model of full fine-tuning is its starting weights', {
        hint: 'ask for reference log-probs (or set an objective) before the first step',
      });
    this.reference = this.s.params.map((p) => p.store!.readBytes(p).slice());
  }

  /** Per example, the log-prob of each counted label token, in order (float64 of the f32 pass). */
  tokenLogProbs(examples: readonly Example[], o: TokenLogProbOptions = {}): Float64Array[] {
    const adapters = o.adapters ?? true;
    const { rows } = this.s;
    if (o.microBatch !== undefined && examples.length > rows)
      throw new ConfigError(`tokenLogProbs: ${examples.length} examples exceed a micro-batch of ${rows}`);
    if (!adapters) this.keepReference();
    const out: Float64Array[] = [];
    const run = () => {
      for (let i = 0, k = o.microBatch ?? 0; i < examples.length; i += rows, k++) {
        const c = this.s.collate(examples.slice(i, i + rows));
        const lora = this.s.lora;
        if (adapters && lora !== null) lora.step = this.dropoutStep(k);
        const ce = this.perPosition(c, adapters);
        out.push(...countedLogProbs(c, ce, Math.min(rows, examples.length - i)));
      }
    };
    if (adapters || this.reference === null) run();
    else this.withReference(run);
    return out;
  }

  /**
   * Runs the accumulate graph over `batches` (of at most {@link rows} sequences each): their
   * gradients, of the token losses × `lossScale` (× `weights`, per counted label token, when given),
   * are added into the gradient buffers. Returns the counted tokens, the loss sum, the input tokens.
   */
  accumulate(batches: MicroBatches, lossScale: number, weights?: Float32Array[][]): StepCounts {
    const { rows: max, settings, lora } = this.s;
    let [tokens, lossSum, inputTokens] = [0, 0, 0];
    batches.forEach((batch, k) => {
      if (batch.length > max) throw microBatchError(batch.length, max, settings.batchSize);
      const c = this.s.collate(batch);
      if (c.tokens === 0) return; // nothing to learn from: no gradient, no count
      if (lora !== null) lora.step = this.dropoutStep(k);
      const w = this.positionWeights(c, weights?.[k], batch.length);
      lossSum += this.s.graphs.accumulate(c, lossScale, w);
      [tokens, inputTokens] = [tokens + c.tokens, inputTokens + c.inputTokens];
    });
    return { tokens, lossSum, inputTokens };
  }

  /** The accumulate parts' weightsFor of a weighted step `w` (none for `null`: 1 per counted token). */
  weightsFor(w: Weighted | null): {
    weightsFor?: (c: Collated, k: number, n: number) => Float32Array | undefined;
  } {
    return w === null ? {} : { weightsFor: (c, k, n) => this.positionWeights(c, w.weights[k], n) };
  }

  /** The LoRA dropout seed (lora.step) of the next step's micro-batch k: one per (global slot, rank). */
  dropoutStep(k: number): number {
    const { microStep, comm } = this.s.at();
    return (microStep + k + 1) * (comm?.size ?? 1) + (comm?.rank ?? 0);
  }

  /** The accumulate graph's weight input for `c`: `weights[b][j]` at example b's j-th counted label. */
  positionWeights(
    c: Collated,
    weights: readonly Float32Array[] | undefined,
    examples: number,
  ): Float32Array | undefined {
    if (weights === undefined) return undefined;
    if (weights.length !== examples)
      throw new ShapeError(`weightedStep: ${weights.length} weight arrays for ${examples} examples`);
    const T = c.seqLen;
    const w = new Float32Array(c.labels.length);
    for (let b = 0; b < examples; b++) {
      const wb = weights[b]!;
      let j = 0;
      for (let t = b * T; t < (b + 1) * T; t++) if (c.labels[t] !== -100) w[t] = wb[j++] ?? NaN;
      if (j !== wb.length)
        throw new ShapeError(
          `weightedStep: example ${b} has ${j} counted label tokens but ${wb.length} weights`,
          { hint: 'give one weight per counted label token, in the order tokenLogProbs returns' },
        );
    }
    return w;
  }

  /** The graphs' compute and input bytes. */
  bytes(): number {
    let n = 0;
    for (const { g } of this.graphs.values()) n += g.memory().compute + g.memory().inputs;
    return n;
  }

  dispose(): void {
    for (const { g } of this.graphs.values()) g.dispose();
    this.graphs.clear();
  }

  /** −log p of each position's label (0 where ignored), `[rows × seqLen]`. */
  private perPosition(c: Collated, adapters: boolean): Float32Array {
    const key = `${c.seqLen}:${adapters}`;
    let lg = this.graphs.get(key);
    if (lg === undefined) {
      const f = this.s.graphs.forwardAt(c.seqLen);
      lg = buildLogProbGraph(adapters ? f : { ...f, adapter: undefined });
      this.graphs.set(key, lg);
    }
    lg.g.set(lg.ids, c.ids);
    lg.g.set(lg.labels, c.labels);
    if (lg.mask !== null) lg.g.set(lg.mask, c.mask!);
    lg.g.run();
    const out = new Float32Array(c.labels.length);
    let off = 0;
    for (const t of lg.tokens) {
      const part = lg.g.read(t);
      out.set(part, off);
      off += part.length;
    }
    return out;
  }

  /** Runs `fn` with full fine-tuning's starting weights in place of the current ones. */
  private withReference(fn: () => void): void {
    const { params } = this.s;
    const current = params.map((p) => p.store!.readBytes(p).slice());
    params.forEach((p, i) => p.store!.write(p, this.reference![i]!));
    try {
      fn();
    } finally {
      params.forEach((p, i) => p.store!.write(p, current[i]!));
    }
  }
}

/** {@link Trainer.weightedStep}'s micro-batches and options as the Trainer's step takes them (checked). */
export function weightedArgs(
  microBatches: readonly WeightedMicroBatch[],
  o: WeightedStepOptions,
): [Example[][], Weighted] {
  if (!(o.count > 0 && Number.isFinite(o.count)))
    throw new ConfigError(`weightedStep: count ${o.count} is not a positive number`, {
      hint: 'divide by the objective count of the step: its pairs, examples or tokens',
    });
  return [microBatches.map((m) => m.examples), { ...o, weights: microBatches.map((m) => m.weights) }];
}

/** The forward graph of `f` whose outputs are the per-token losses (reduction sum: −log p). */
function buildLogProbGraph(f: ForwardSetup): LogProbGraph {
  const g = new Graph(f.model.backends);
  try {
    const { ids, labels, mask } = forwardInputs(g, f);
    const o = forwardOptions(f, mask);
    const taps = { weights: [] as Tensor[], tokenLosses: [] as Tensor[] };
    g.noGrad(() => lossSum(f, g, ids, labels, o, undefined, taps));
    const tokens = taps.tokenLosses.map((t) => g.output(t));
    g.compile();
    return { g, ids, labels, mask, tokens };
  } catch (e) {
    g.dispose();
    throw e;
  }
}

/** The first `n` examples' counted labels' log-probs, −CE, from `ce` per position of `c`. */
export function countedLogProbs(c: Collated, ce: Float32Array, n: number): Float64Array[] {
  const T = c.seqLen;
  const out: Float64Array[] = [];
  for (let b = 0; b < n; b++) {
    const v: number[] = [];
    for (let t = b * T; t < (b + 1) * T; t++) if (c.labels[t] !== -100) v.push(-ce[t]!);
    out.push(Float64Array.from(v));
  }
  return out;
}
