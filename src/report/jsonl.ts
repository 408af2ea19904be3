/**
 * metrics.jsonl: one JSON object per log record, appended (one write per line) as the run goes, so a
 * crash leaves complete lines. Keys are snake_case; fields a record lacks are left out; a value that
 * is not finite (a NaN loss) is written as null.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import path from 'node:path';
import type { LogRecord, TrainResult } from '../train/trainer.js';
import type { RunLogger } from './logger.js';

export const METRICS_FILE = 'metrics.jsonl';

/** One metrics.jsonl row. */
export interface MetricsRow {
  kind: LogRecord['kind'];
  step: number;
  epoch: number;
  /** Wall-clock time, seconds since the Unix epoch. */
  time: number;
  loss?: number | null;
  lr?: number | null;
  grad_norm?: number | null;
  tokens?: number;
  /** Target tokens (loss tokens) per second. */
  tokens_per_s?: number | null;
  /** Input tokens (every position holding a sample, padding aside) per second. */
  input_tokens_per_s?: number | null;
  loss_scale?: number;
  perplexity?: number | null;
  path?: string;
  message?: string;
  /** Samples (evalPrompts', GRPO's): the prompt as given, and the generated text. */
  prompt?: string;
  completion?: string;
  memory?: { engine_bytes: number; rss_bytes: number; peak_rss_bytes: number };
  /** Data-parallel runs: ranks, and each step's gradient all-reduce time and bytes. */
  world_size?: number;
  allreduce_ms?: number;
  allreduce_bytes?: number;
  /** `sample` rows of GRPO: the completion's reward. */
  reward?: number | null;
  /** GRPO's step metrics without a slash in their TRL names (docs/objectives.md). */
  reward_std?: number | null;
  kl?: number | null;
  completion_length?: number | null;
  clip_ratio?: number | null;
  frac_reward_zero_std?: number | null;
  /** The objective's metrics under their TRL names (`rewards/chosen`...: docs/objectives.md). */
  [metric: `${string}/${string}`]: number | null;
}

const num = (v: number): number | null => (Number.isFinite(v) ? v : null);

export function metricsRow(r: LogRecord, time = Date.now() / 1000): MetricsRow {
  // a sample: { kind: 'sample', step, epoch, prompt, completion, (reward,) time }
  if (r.kind === 'sample')
    return {
      kind: r.kind,
      step: r.step,
      epoch: r.epoch,
      prompt: r.prompt ?? '',
      completion: r.completion ?? '',
      ...(r.reward === undefined ? {} : { reward: num(r.reward) }), // GRPO's
      time,
    };
  const row: MetricsRow = { kind: r.kind, step: r.step, epoch: r.epoch, time };
  if (r.loss !== undefined) row.loss = num(r.loss);
  if (r.lr !== undefined) row.lr = num(r.lr);
  if (r.gradNorm !== undefined) row.grad_norm = num(r.gradNorm);
  if (r.tokens !== undefined) row.tokens = r.tokens;
  if (r.tokensPerS !== undefined) row.tokens_per_s = num(r.tokensPerS);
  if (r.inputTokensPerS !== undefined) row.input_tokens_per_s = num(r.inputTokensPerS);
  if (r.lossScale !== undefined) row.loss_scale = r.lossScale;
  if (r.perplexity !== undefined) row.perplexity = num(r.perplexity);
  if (r.path !== undefined) row.path = r.path;
  if (r.message !== undefined) row.message = r.message;
  if (r.memory !== undefined)
    row.memory = {
      engine_bytes: r.memory.engineBytes,
      rss_bytes: r.memory.rssBytes,
      peak_rss_bytes: r.memory.peakRssBytes,
    };
  if (r.worldSize !== undefined) row.world_size = r.worldSize;
  if (r.allreduceMs !== undefined) row.allreduce_ms = r.allreduceMs;
  if (r.allreduceBytes !== undefined) row.allreduce_bytes = r.allreduceBytes;
  // an objective's metrics at the top level of the row, under TRL's names (as TRL's log history)
  for (const [k, v] of Object.entries(r.metrics ?? {}))
    (row as unknown as Record<string, unknown>)[k] = num(v);
  return row;
}

export class MetricsJsonl implements RunLogger {
  readonly file: string;
  private fd: number | null;

  /** Appends to `<outputDir>/metrics.jsonl` (a resumed run continues the same file). */
  constructor(outputDir: string) {
    mkdirSync(outputDir, { recursive: true });
    this.file = path.join(outputDir, METRICS_FILE);
    this.fd = openSync(this.file, 'a');
  }

  log(r: LogRecord): void {
    if (this.fd === null) return;
    const line = Buffer.from(JSON.stringify(metricsRow(r)) + '\n', 'utf8');
    let done = 0;
    while (done < line.length) done += writeSync(this.fd, line, done, line.length - done);
  }

  close(_result?: TrainResult): void {
    if (this.fd === null) return;
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = null;
  }
}
