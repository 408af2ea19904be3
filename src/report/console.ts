/**
 * Progress on the console. In a terminal: one line redrawn in place (step/total, a bar, loss, lr,
 * tokens/s, ETA), with evaluations, skipped steps and checkpoints printed above it. Elsewhere (CI
 * logs, files): plain lines, one every `everySteps` steps or `everySeconds` seconds, and always the
 * first and last step, evaluations, skipped steps and checkpoints.
 */
import type { LogRecord, TrainResult } from '../train/trainer.js';
import type { RunLogger } from './logger.js';

/** Where progress goes: process.stderr, or any object with write(). */
export interface TextSink {
  write(s: string): unknown;
  columns?: number | undefined;
}

export interface ConsoleProgressOptions {
  totalSteps: number;
  stream?: TextSink;
  /** Redraw one line in place (default: whether the stream is a terminal). */
  tty?: boolean;
  /** Plain mode: a line every N steps (default: a twentieth of the run, at least 1). */
  everySteps?: number;
  /** Plain mode: and at least every this many seconds (default 10). */
  everySeconds?: number;
  /** Terminal mode: redraw at most this often, in ms (default 100). */
  redrawMs?: number;
  /** Clock in ms (default performance.now). */
  now?: () => number;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  return `${h}h${String(m % 60).padStart(2, '0')}m`;
}

const fmtLoss = (v: number | undefined): string => (v === undefined ? '?' : v.toFixed(4));
const fmtLr = (v: number | undefined): string => (v === undefined ? '?' : v.toExponential(2));
const fmtRate = (v: number | undefined): string =>
  v === undefined || !Number.isFinite(v) ? '?' : Math.round(v).toLocaleString('en-US');

export class ConsoleProgress implements RunLogger {
  private readonly stream: TextSink;
  private readonly tty: boolean;
  private readonly total: number;
  private readonly everySteps: number;
  private readonly everySeconds: number;
  private readonly redrawMs: number;
  private readonly now: () => number;
  private readonly start: number;
  private lastStep: LogRecord | null = null;
  private lastPrint = -Infinity;
  private lastPrintedStep = 0;
  private barShown = false;

  constructor(o: ConsoleProgressOptions) {
    this.stream = o.stream ?? process.stderr;
    this.tty = o.tty ?? (o.stream === undefined ? process.stderr.isTTY : false);
    this.total = Math.max(1, o.totalSteps);
    this.everySteps = o.everySteps ?? Math.max(1, Math.round(this.total / 20));
    this.everySeconds = o.everySeconds ?? 10;
    this.redrawMs = o.redrawMs ?? 100;
    this.now = o.now ?? (() => performance.now());
    this.start = this.now();
  }

  /** Seconds left at the pace so far. */
  private eta(step: number): number {
    const elapsed = (this.now() - this.start) / 1000;
    return step > 0 ? (elapsed / step) * (this.total - step) : NaN;
  }

  /** The progress line of a step record. */
  progressLine(r: LogRecord, width = 100): string {
    const pct = Math.min(1, r.step / this.total);
    const head = `${String(r.step).padStart(String(this.total).length)}/${this.total}`;
    const tail =
      ` loss ${fmtLoss(r.loss)}  lr ${fmtLr(r.lr)}  ${fmtRate(r.tokensPerS)} tok/s` +
      `  ETA ${formatDuration(this.eta(r.step))}`;
    const barWidth = Math.max(0, Math.min(30, width - head.length - tail.length - 4));
    if (barWidth < 5) return (head + tail).slice(0, Math.max(10, width - 1));
    const filled = Math.round(pct * barWidth);
    return `${head} [${'█'.repeat(filled)}${'░'.repeat(barWidth - filled)}]${tail}`;
  }

  private plainStep(r: LogRecord): string {
    const parts = [
      `step ${r.step}/${this.total}`,
      `epoch ${r.epoch.toFixed(2)}`,
      `loss ${fmtLoss(r.loss)}`,
      `lr ${fmtLr(r.lr)}`,
    ];
    if (r.gradNorm !== undefined) parts.push(`grad_norm ${r.gradNorm.toFixed(3)}`);
    parts.push(`${fmtRate(r.tokensPerS)} tok/s`, `ETA ${formatDuration(this.eta(r.step))}`);
    return parts.join('  ');
  }

  /** The one-line message of an evaluation, skip or checkpoint. */
  static eventLine(r: LogRecord): string {
    switch (r.kind) {
      case 'eval':
        return `eval  step ${r.step}  loss ${fmtLoss(r.loss)}  perplexity ${r.perplexity?.toFixed(3) ?? '?'}`;
      case 'skip':
        return `skip  step ${r.step}  ${r.message ?? 'update skipped'}`;
      case 'checkpoint':
        return `saved step ${r.step}  ${r.path ?? ''}`.trimEnd();
      case 'resume':
        return `resume: ${r.message ?? ''}`;
      case 'sample':
        return `sample step ${r.step}  ${JSON.stringify(r.prompt ?? '')} -> ${JSON.stringify(r.completion ?? '')}`;
      case 'step':
        return `step ${r.step}`;
    }
  }

  log(r: LogRecord): void {
    if (r.kind === 'sample' && r.reward !== undefined) return; // GRPO's completions: metrics.jsonl holds them
    if (this.tty) this.logTty(r);
    else this.logPlain(r);
  }

  private logTty(r: LogRecord): void {
    const width = this.stream.columns ?? 100;
    if (r.kind === 'step' || r.kind === 'skip') this.lastStep = r;
    if (r.kind !== 'step') {
      // a permanent line above the bar
      this.stream.write(`\r\x1b[2K${ConsoleProgress.eventLine(r)}\n`);
      this.barShown = false;
    }
    const t = this.now();
    const last = r.step >= this.total;
    if (this.lastStep !== null && (!this.barShown || last || t - this.lastPrint >= this.redrawMs)) {
      this.stream.write(`\r\x1b[2K${this.progressLine(this.lastStep, width)}`);
      this.barShown = true;
      this.lastPrint = t;
    }
  }

  private logPlain(r: LogRecord): void {
    if (r.kind !== 'step') {
      this.stream.write(`${ConsoleProgress.eventLine(r)}\n`);
      return;
    }
    const t = this.now();
    const due =
      r.step === 1 ||
      r.step >= this.total ||
      r.step - this.lastPrintedStep >= this.everySteps ||
      t - this.lastPrint >= this.everySeconds * 1000;
    if (!due) return;
    this.stream.write(`${this.plainStep(r)}\n`);
    this.lastPrint = t;
    this.lastPrintedStep = r.step;
  }

  close(result?: TrainResult): void {
    if (this.tty && this.barShown) this.stream.write('\n');
    this.barShown = false;
    if (result !== undefined) {
      const last = result.losses.at(-1);
      const ev = result.evals.at(-1);
      this.stream.write(
        `done: ${result.steps} steps in ${formatDuration(result.seconds)}, ` +
          `${fmtRate(result.tokensPerS)} tok/s, final loss ${fmtLoss(last)}` +
          (ev === undefined ? '' : `, validation loss ${fmtLoss(ev.loss)}`) +
          '\n',
      );
    }
  }
}
