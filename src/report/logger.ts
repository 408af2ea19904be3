/**
 * Seeing a run: consumers of the Trainer's log records. createRunLoggers() combines console progress,
 * metrics.jsonl (always), TensorBoard event files and Weights & Biases (as log_to asks) and, at
 * close, the loss-curve picture (loss.svg, loss.png).
 *
 * @example
 * const run = await createRunLoggers({ outputDir: 'out', logTo: ['tensorboard'], totalSteps: 100 });
 * const trainer = await Trainer.create(model, data, { ..., onLog: (r) => run.log(r) });
 * await run.close(trainer.train());
 */
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { LogRecord, TrainResult } from '../train/trainer.js';
import { renderLossPng, renderLossSvg, type LossPoint } from './chart.js';
import { ConsoleProgress, type TextSink } from './console.js';
import { MetricsJsonl } from './jsonl.js';
import { recordScalars } from './scalars.js';
import { TensorBoardWriter } from './tensorboard.js';

export interface RunLogger {
  log(record: LogRecord): void;
  /** Flushes and finishes; `result` is the finished run's (without one, the run is taken as failed). */
  close(result?: TrainResult): Promise<void> | void;
}

export type LogTarget = 'tensorboard' | 'wandb';
export const LOG_TARGETS: readonly LogTarget[] = ['tensorboard', 'wandb'];

export interface RunLoggersConfig {
  outputDir: string;
  logTo: readonly LogTarget[];
  totalSteps: number;
  /** Redraw one progress line in place (default: whether stderr is a terminal). */
  tty?: boolean;
  /** Where progress and warnings go (default process.stderr); `false`: no console progress. */
  stream?: TextSink | false;
  /** W&B project (default WANDB_PROJECT, else "qtune"). */
  project?: string;
  /** W&B run name (default WANDB_NAME, else the server's). */
  runName?: string;
  /** The run's settings, stored as the W&B run's config. */
  runConfig?: Record<string, unknown>;
  /** Folder of the TensorBoard event files (default `<outputDir>/runs`). */
  tensorboardDir?: string;
  /** Plain (non-terminal) progress: a line every N steps (default a twentieth of the run). */
  everySteps?: number;
  /** W&B: how often queued rows are sent, in ms (default 2000). */
  wandbFlushIntervalMs?: number;
}

/**
 * TensorBoard event files in a folder (default `<outputDir>/runs`): the scalars, and each sample
 * as a text under `samples/K` (K: the prompt's place among the step's samples, from 0).
 */
export class TensorBoardLogger implements RunLogger {
  readonly writer: TensorBoardWriter;
  private samples = { step: -1, count: 0 };

  constructor(logDir: string) {
    this.writer = new TensorBoardWriter(logDir);
  }

  log(r: LogRecord): void {
    if (r.kind !== 'sample') {
      this.writer.addScalars(r.step, recordScalars(r));
      return;
    }
    if (this.samples.step !== r.step) this.samples = { step: r.step, count: 0 };
    const text = `**prompt:** ${r.prompt ?? ''}\n\n**completion:** ${r.completion ?? ''}`;
    this.writer.addText(r.step, `samples/${this.samples.count++}`, text);
  }

  close(): void {
    this.writer.close();
  }
}

/** Collects the losses and writes loss.svg and loss.png (atomically) at close. */
export class LossChartLogger implements RunLogger {
  readonly train: LossPoint[] = [];
  readonly validation: LossPoint[] = [];

  constructor(readonly outputDir: string) {}

  log(r: LogRecord): void {
    if (r.loss === undefined || !Number.isFinite(r.loss)) return;
    if (r.kind === 'step') this.train.push({ step: r.step, loss: r.loss });
    else if (r.kind === 'eval') this.validation.push({ step: r.step, loss: r.loss });
  }

  close(): void {
    if (this.train.length === 0 && this.validation.length === 0) return;
    const series = { train: this.train, validation: this.validation };
    writeFileAtomic(path.join(this.outputDir, 'loss.svg'), [renderLossSvg(series, { title: 'loss' })]);
    writeFileAtomic(path.join(this.outputDir, 'loss.png'), [renderLossPng(series)]);
  }
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/**
 * Several loggers as one. A logger that throws is reported once on the warning stream and left out
 * from then on: seeing the run never stops the training.
 */
export class CombinedLogger implements RunLogger {
  private readonly broken = new Set<RunLogger>();

  constructor(
    readonly loggers: readonly RunLogger[],
    private readonly warn: (message: string) => void = (m) => process.stderr.write(`${m}\n`),
  ) {}

  log(r: LogRecord): void {
    for (const l of this.loggers) {
      if (this.broken.has(l)) continue;
      try {
        l.log(r);
      } catch (e) {
        this.broken.add(l);
        this.warn(`warning: ${l.constructor.name} stopped: ${errText(e)}`);
      }
    }
  }

  async close(result?: TrainResult): Promise<void> {
    for (const l of this.loggers) {
      try {
        await l.close(result);
      } catch (e) {
        this.warn(`warning: ${l.constructor.name} could not finish: ${errText(e)}`);
      }
    }
  }
}

/**
 * The loggers a run's config asks for: console progress (unless stream is false), metrics.jsonl,
 * TensorBoard and W&B per logTo, the loss chart. W&B's code is loaded only when asked for; without
 * an API key it throws a ConfigError before anything is created.
 */
export async function createRunLoggers(config: RunLoggersConfig): Promise<CombinedLogger> {
  for (const t of config.logTo)
    if (!LOG_TARGETS.includes(t))
      throw new ConfigError(`log_to: ${JSON.stringify(t)} is not a logging target`, {
        hint: `use any of ${LOG_TARGETS.join(', ')}`,
      });
  const stream = config.stream === undefined ? process.stderr : config.stream;
  const warn = (m: string): void => {
    (stream === false ? process.stderr : stream).write(`${m}\n`);
  };
  const loggers: RunLogger[] = [];
  // W&B first: it is the one that can refuse (no key) before any file is created
  if (config.logTo.includes('wandb')) {
    const { WandbLogger } = await import('./wandb.js');
    loggers.push(
      await WandbLogger.create({
        project: config.project,
        runName: config.runName,
        runConfig: config.runConfig,
        warn,
        ...(config.wandbFlushIntervalMs === undefined
          ? {}
          : { flushIntervalMs: config.wandbFlushIntervalMs }),
      }),
    );
  }
  if (stream !== false)
    loggers.unshift(
      new ConsoleProgress({
        totalSteps: config.totalSteps,
        stream,
        tty: config.tty ?? (stream === process.stderr && process.stderr.isTTY),
        ...(config.everySteps === undefined ? {} : { everySteps: config.everySteps }),
      }),
    );
  loggers.push(new MetricsJsonl(config.outputDir));
  if (config.logTo.includes('tensorboard'))
    loggers.push(new TensorBoardLogger(config.tensorboardDir ?? path.join(config.outputDir, 'runs')));
  loggers.push(new LossChartLogger(config.outputDir));
  return new CombinedLogger(loggers, warn);
}
