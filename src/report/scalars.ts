/** The scalars of a log record, under the tags TensorBoard and W&B share. */
import type { LogRecord } from '../train/trainer.js';

export interface Scalar {
  tag: string;
  value: number;
}

const MIB = 1024 * 1024;

/**
 * step: train/loss, train/lr, train/grad_norm, train/tokens_per_s (loss tokens),
 * train/input_tokens_per_s (every token read, padding aside), train/epoch (and train/loss_scale
 * with fp16 loss scaling, dist/allreduce_ms in data-parallel runs), memory/engine_mib,
 * memory/rss_mib, memory/peak_rss_mib, and the objective's metrics as train/<name> (TRL's
 * train/rewards/chosen...); skip: the same
 * plus train/skipped = 1; eval: eval/loss, eval/perplexity; checkpoint: none. Non-finite values are
 * left out.
 */
export function recordScalars(r: LogRecord): Scalar[] {
  const out: Scalar[] = [];
  const add = (tag: string, v: number | undefined): void => {
    if (v !== undefined && Number.isFinite(v)) out.push({ tag, value: v });
  };
  if (r.kind === 'step' || r.kind === 'skip') {
    add('train/loss', r.loss);
    add('train/lr', r.lr);
    add('train/grad_norm', r.gradNorm);
    add('train/tokens_per_s', r.tokensPerS);
    add('train/input_tokens_per_s', r.inputTokensPerS);
    add('train/epoch', r.epoch);
    add('train/loss_scale', r.lossScale);
    if (r.kind === 'skip') add('train/skipped', 1);
    add('dist/allreduce_ms', r.allreduceMs);
    for (const [k, v] of Object.entries(r.metrics ?? {})) add(`train/${k}`, v);
    if (r.memory !== undefined) {
      add('memory/engine_mib', r.memory.engineBytes / MIB);
      add('memory/rss_mib', r.memory.rssBytes / MIB);
      add('memory/peak_rss_mib', r.memory.peakRssBytes / MIB);
    }
  } else if (r.kind === 'eval') {
    add('eval/loss', r.loss);
    add('eval/perplexity', r.perplexity);
  }
  return out;
}
