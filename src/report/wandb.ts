/**
 * `log_to: wandb`: the run's scalars streamed to Weights & Biases while it trains (see
 * wandb-client.ts for the HTTP API and wandb-worker.ts for why a worker thread sends them).
 * Loaded only when asked for. Settings from the environment as the W&B SDKs read them:
 * WANDB_API_KEY (or a netrc entry for the API host), WANDB_BASE_URL, WANDB_ENTITY, WANDB_PROJECT,
 * WANDB_NAME, WANDB_RUN_ID.
 */
import { Worker } from 'node:worker_threads';
import { ConfigError } from '../errors.js';
import type { LogRecord, TrainResult } from '../train/trainer.js';
import type { RunLogger } from './logger.js';
import { recordScalars } from './scalars.js';
import { DEFAULT_BASE_URL, findWandbApiKey, newRunId, type WandbRunSettings } from './wandb-client.js';
import type { FromWorker, ToWorker, WorkerSettings } from './wandb-worker.js';

export interface WandbLoggerOptions {
  project?: string | undefined;
  runName?: string | undefined;
  runConfig?: Record<string, unknown> | undefined;
  /** Where warnings go (default: stderr). */
  warn?: (message: string) => void;
  /** How often queued rows are sent (default 2000 ms). */
  flushIntervalMs?: number;
  /** How long to wait for the run to be created before training starts anyway (default 20 s). */
  initTimeoutMs?: number;
  /** How long close() waits for the last rows to go out (default 60 s). */
  closeTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** The settings of a W&B run from options and the environment; a ConfigError without an API key. */
export function wandbSettings(o: WandbLoggerOptions = {}): WandbRunSettings {
  const env = o.env ?? process.env;
  const baseUrl = env['WANDB_BASE_URL'] || DEFAULT_BASE_URL;
  const host = (() => {
    try {
      return new URL(baseUrl).hostname;
    } catch {
      throw new ConfigError(`WANDB_BASE_URL: ${JSON.stringify(baseUrl)} is not a URL`, {
        hint: 'unset it for wandb.ai, or set it to your W&B server, e.g. https://wandb.example.com',
      });
    }
  })();
  const apiKey = findWandbApiKey(baseUrl, env);
  if (apiKey === null)
    throw new ConfigError(`log_to: wandb needs WANDB_API_KEY (or a ~/.netrc entry for ${host})`, {
      hint: 'export WANDB_API_KEY=<key from https://wandb.ai/authorize>, or drop wandb from log_to',
    });
  return {
    baseUrl,
    apiKey,
    entity: env['WANDB_ENTITY'] || undefined,
    project: o.project ?? (env['WANDB_PROJECT'] || 'qtune'),
    runId: env['WANDB_RUN_ID'] || newRunId(),
    displayName: o.runName ?? (env['WANDB_NAME'] || undefined),
    config: o.runConfig,
  };
}

/** One W&B history row of a record: the shared scalar tags and _step. */
export function historyRow(r: LogRecord): Record<string, unknown> {
  const row: Record<string, unknown> = { _step: r.step };
  for (const s of recordScalars(r)) row[s.tag] = s.value;
  return row;
}

export class WandbLogger implements RunLogger {
  private pending: Record<string, unknown> | null = null;
  private readonly t0 = Date.now();
  private closed = false;
  private doneWaiter: ((m: FromWorker & { type: 'done' }) => void) | null = null;
  /** The run's page, once created. */
  url: string | null = null;

  private constructor(
    private readonly worker: Worker,
    private readonly warn: (message: string) => void,
    private readonly closeTimeoutMs: number,
  ) {}

  /** Starts the sender and waits (up to initTimeoutMs) for the run to be created. */
  static async create(o: WandbLoggerOptions = {}): Promise<WandbLogger> {
    const run = wandbSettings(o);
    const warn = o.warn ?? ((m: string) => process.stderr.write(`${m}\n`));
    const settings: WorkerSettings = { run, flushMs: o.flushIntervalMs ?? 2000, maxQueue: 100_000 };
    const worker = new Worker(new URL('./wandb-worker.js', import.meta.url), { workerData: settings });
    const logger = new WandbLogger(worker, warn, o.closeTimeoutMs ?? 60_000);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        warn(
          `wandb: warning: the run was not created within ${o.initTimeoutMs ?? 20_000} ms; training goes on`,
        );
        resolve();
      }, o.initTimeoutMs ?? 20_000);
      worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') {
          logger.url = m.url;
          warn(`wandb: run ${m.url}`);
        } else if (m.type === 'warning' || m.type === 'init-failed') {
          warn(`wandb: warning: ${m.message}`);
        } else {
          logger.doneWaiter?.(m);
          return;
        }
        clearTimeout(timer);
        resolve();
      });
      worker.on('error', (e) => {
        warn(`wandb: warning: the sender stopped: ${e.message}`);
        clearTimeout(timer);
        resolve();
      });
    });
    // the sender does not keep the process alive by itself; close() holds it until the rows are out
    worker.unref();
    return logger;
  }

  private send(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  log(r: LogRecord): void {
    if (this.closed || r.kind === 'checkpoint' || r.kind === 'resume' || r.kind === 'sample') return;
    const row = historyRow(r);
    // records of one step (the step, then its evaluation) make one history row
    if (this.pending !== null && this.pending['_step'] !== r.step) this.commit();
    this.pending = { ...(this.pending ?? {}), ...row };
  }

  private commit(): void {
    if (this.pending === null) return;
    const now = Date.now();
    this.send({
      type: 'row',
      row: { ...this.pending, _runtime: (now - this.t0) / 1000, _timestamp: now / 1000 },
    });
    this.pending = null;
  }

  /** Sends the last rows and marks the run finished (exit code 0 with a result, 1 without). */
  async close(result?: TrainResult): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.commit();
    this.worker.ref();
    const done = new Promise<(FromWorker & { type: 'done' }) | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), this.closeTimeoutMs);
      this.doneWaiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      this.worker.once('exit', () => {
        clearTimeout(timer);
        resolve(null);
      });
    });
    this.send({ type: 'finish', exitcode: result === undefined ? 1 : 0 });
    const m = await done;
    if (m === null) this.warn('wandb: warning: gave up waiting for the last rows to be sent');
    else if (m.unsent > 0) this.warn(`wandb: warning: ${m.unsent} rows could not be sent`);
    await this.worker.terminate();
  }
}
