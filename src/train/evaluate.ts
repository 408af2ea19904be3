/**
 * Evaluation: the mean loss and perplexity of a model (with its adapter) over examples, on one
 * forward graph built once. The Trainer evaluates with it, and so does `qtune eval`.
 *
 * @example
 * const ev = Evaluator.build({ model, adapter: hook, computeDType: null, frozen: null,
 *   crossEntropyChunk: 256, batch: 1, seqLen: 512, packed: false });
 * const { loss, perplexity } = ev.evaluate(examples, (b) => batches.collate(b));
 * ev.dispose();
 */
import type { Backend } from '../engine/device.js';
import { ConfigError } from '../errors.js';
import { Graph } from '../tensor/graph.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Collated } from '../data/batches.js';
import type { Example } from '../data/example.js';
import { forwardInputs, forwardOptions, lossSum, type ForwardSetup } from './forward.js';
import { shareOf, type Collectives } from './parallel.js';

export interface Evaluation {
  /** Mean loss over the target tokens. */
  loss: number;
  perplexity: number;
  tokens: number;
}

export class Evaluator {
  private constructor(
    private readonly setup: ForwardSetup,
    private readonly g: Graph,
    private readonly inputs: { ids: Tensor; labels: Tensor; mask: Tensor | null },
    private readonly loss: Tensor,
  ) {}

  /** Builds and allocates the forward graph (no backward). */
  static build(f: ForwardSetup): Evaluator {
    const g = new Graph(f.model.backends);
    try {
      const inputs = forwardInputs(g, f);
      const o = forwardOptions(f, inputs.mask);
      const loss = g.output(g.noGrad(() => lossSum(f, g, inputs.ids, inputs.labels, o)));
      g.compile();
      return new Evaluator(f, g, inputs, loss);
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  /** The summed loss of one collated micro-batch. */
  lossSum(c: Collated): number {
    const { g, inputs } = this;
    g.set(inputs.ids, c.ids);
    g.set(inputs.labels, c.labels);
    if (inputs.mask !== null) g.set(inputs.mask, c.mask!); // packing
    g.run();
    return g.read(this.loss)[0]!;
  }

  /** Mean loss and perplexity over examples ({@link evaluateExamples}) on this graph. */
  evaluate(
    examples: readonly Example[],
    collate: (batch: readonly Example[]) => Collated,
    o: { limit?: number | undefined; comm?: Collectives | null } = {},
  ): Evaluation {
    return evaluateExamples(examples, collate, (c) => this.lossSum(c), { ...o, batch: this.setup.batch });
  }

  /** The graph's compute and input buffers (on one device, or all). */
  bytes(b?: Backend): number {
    const m = b === undefined ? this.g.memory() : this.g.memoryOn(b);
    return m.compute + m.inputs;
  }

  dispose(): void {
    this.g.dispose();
  }
}

/**
 * Mean loss and perplexity over the first `limit` of `examples` (default all), collated by `collate`
 * in micro-batches of `batch` and summed by `lossSum` (a graph's forward). Data parallelism (`comm`):
 * each rank evaluates a contiguous share, and the sums add up.
 */
export function evaluateExamples(
  examples: readonly Example[],
  collate: (batch: readonly Example[]) => Collated,
  lossSum: (c: Collated) => number,
  o: { batch: number; limit?: number | undefined; comm?: Collectives | null },
): Evaluation {
  if (examples.length === 0)
    throw new ConfigError('evaluation needs validation data', { hint: 'give a validation split' });
  const comm = o.comm ?? null;
  const n = Math.min(o.limit ?? examples.length, examples.length);
  const [start, end] = shareOf(n, comm?.rank ?? 0, comm?.size ?? 1);
  const list = examples.slice(start, end);
  let total = 0;
  let tokens = 0;
  for (let i = 0; i < list.length; i += o.batch) {
    const c = collate(list.slice(i, i + o.batch));
    if (c.tokens === 0) continue;
    total += lossSum(c);
    tokens += c.tokens;
  }
  if (comm !== null && comm.size > 1) {
    const sums = Float64Array.of(total, tokens);
    comm.allReduceSum(sums);
    [total, tokens] = [sums[0]!, sums[1]!];
  }
  const loss = total / tokens;
  return { loss, perplexity: Math.exp(loss), tokens };
}
