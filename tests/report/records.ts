/** Log records shaped like the Trainer's, and a text sink that collects what is written to it. */
import type { LogRecord, TrainResult } from '../../src/train/trainer.js';

export class TextCollector {
  text = '';
  columns: number | undefined;
  constructor(columns?: number) {
    this.columns = columns;
  }
  write(s: string): boolean {
    this.text += s;
    return true;
  }
}

export const MIB = 1024 * 1024;

/** `steps` step records (step 3 skipped), an evaluation every `evalEvery` steps, a final checkpoint. */
export function runRecords(steps = 10, evalEvery = 5): LogRecord[] {
  const out: LogRecord[] = [];
  for (let s = 1; s <= steps; s++) {
    out.push({
      kind: s === 3 ? 'skip' : 'step',
      step: s,
      epoch: s / steps,
      loss: 3 - 0.2 * s,
      lr: 1e-3 * (1 - s / (2 * steps)),
      gradNorm: 1 + s / 10,
      tokens: 64,
      tokensPerS: 1000 + s,
      ...(s === 3 ? { message: 'gradients overflowed; update skipped, loss scale now 32768' } : {}),
      memory: { engineBytes: 10 * MIB * s, rssBytes: 100 * MIB, peakRssBytes: 120 * MIB },
    });
    if (s % evalEvery === 0)
      out.push({
        kind: 'eval',
        step: s,
        epoch: s / steps,
        loss: 2.9 - 0.15 * s,
        perplexity: Math.exp(2.9 - 0.15 * s),
      });
  }
  out.push({ kind: 'checkpoint', step: steps, epoch: 1, path: '/tmp/out/checkpoint-10' });
  return out;
}

export function resultOf(records: readonly LogRecord[]): TrainResult {
  const phase = { engineBytes: 1, rssBytes: 1 };
  return {
    steps: Math.max(...records.map((r) => r.step)),
    losses: records.filter((r) => r.kind === 'step' || r.kind === 'skip').map((r) => r.loss!),
    evals: records
      .filter((r) => r.kind === 'eval')
      .map((r) => ({ step: r.step, loss: r.loss!, perplexity: r.perplexity! })),
    memory: {
      load: phase,
      forward: phase,
      backward: phase,
      optimizer: phase,
      peakRssBytes: 1,
      parts: { weights: 0, trainable: 0, gradients: 0, optimizerState: 0, activations: 0 },
      devices: [],
    },
    tokensPerS: 1000,
    seconds: 12,
    aborted: false,
  };
}
