/**
 * Watching and steering a run from the library: the Trainer's events ({@link TrainerEvents}), its
 * pause, resume and stop ({@link RunControl}), and the two drivers of its loop. The loop is one
 * generator (trainer.ts) that yields each graph to compute ({@link GraphRun}) and `undefined` at each
 * step boundary: {@link driveBlocking} computes the graphs at once (train(): the event loop waits, as
 * fast as a plain loop), {@link driveAsync} computes them on a worker thread through koffi's async
 * calls (trainAsync(): timers, requests and signals are served while a step computes) and waits at a
 * step boundary while the run is paused.
 */
import { EventEmitter } from 'node:events';
import { ConfigError } from '../errors.js';
import { blockingObjectiveError } from './objective.js';
import type { LogRecord, StepResult, TrainResult } from './options.js';
import type { GraphRun } from './step.js';

/** A generation of an evaluation prompt (`evalPrompts`), logged as `kind: 'sample'`. */
export interface SampleRecord {
  kind: 'sample';
  step: number;
  epoch: number;
  prompt: string;
  completion: string;
}

/**
 * The Trainer's events and what each listener is given: `step` (a step's log record, kind `step` or
 * `skip`), `eval`, `checkpoint` and `sample` (their log records), `log` (every log record, resume
 * notes included, in the order they happen), `end` (the run's result) and `error` (the error that
 * ended a run; the run's promise rejects with it too, and without an `error` listener it is not
 * emitted, so that Node's EventEmitter does not throw it a second time).
 */
export interface TrainerEvents {
  step: [record: LogRecord];
  eval: [record: LogRecord];
  sample: [record: SampleRecord];
  checkpoint: [record: LogRecord];
  log: [record: LogRecord];
  end: [result: TrainResult];
  error: [error: Error];
}

/**
 * What the loop yields: a graph to compute, an objective's step that completes asynchronously (GRPO:
 * its reward functions; the loop is resumed with its result), or `undefined` at a step boundary.
 */
export type LoopItem = GraphRun | Promise<StepResult> | undefined;

/** The training loop as the drivers run it: resumed with an awaited step's result. */
export type Loop<T> = Generator<LoopItem, T, StepResult | undefined>;

/** How the loop's graphs are computed: at once, or on a worker thread. */
export interface GraphDriver {
  execute(r: GraphRun): void;
  executeAsync(r: GraphRun): Promise<void>;
}

/** {@link Trainer.stop}'s options. */
export interface StopOptions {
  /**
   * Write checkpoint-N of the step reached into outputDir (default true when the trainer has an
   * outputDir; true without one is refused).
   */
  save?: boolean;
}

/** Pause, resume and stop requests, taken at the next step boundary. */
export class RunControl {
  private paused: { promise: Promise<void>; release: () => void } | null = null;
  private stopRequest: { save: boolean } | null = null;
  /** The kind of run going on: null between runs. */
  private running: 'blocking' | 'async' | null = null;
  private computing = false;

  constructor(private readonly outputDir: string | undefined) {}

  get isPaused(): boolean {
    return this.paused !== null;
  }

  /** A step's graph is computing on a worker thread (what the event loop sees of a step going on). */
  get inStep(): boolean {
    return this.computing;
  }

  /** The stop asked for since the run began, or null. */
  get stopping(): { save: boolean } | null {
    return this.stopRequest;
  }

  pause(): void {
    if (this.running === 'blocking')
      throw new ConfigError('pause(): train() runs to its end without yielding; it cannot pause', {
        hint: 'run it with trainAsync() to pause and resume it',
      });
    if (this.paused !== null) return;
    let release = (): void => {};
    const promise = new Promise<void>((resolve) => (release = resolve));
    this.paused = { promise, release };
  }

  resume(): void {
    const p = this.paused;
    this.paused = null;
    p?.release();
  }

  stop(o: StopOptions = {}): void {
    const save = o.save ?? this.outputDir !== undefined;
    if (save && this.outputDir === undefined)
      throw new ConfigError('stop({ save: true }): the trainer has no outputDir to write a checkpoint into', {
        hint: 'give the trainer an outputDir, or stop with { save: false }',
      });
    this.stopRequest = { save };
    this.resume(); // a paused run wakes to stop
  }

  /** Runs `loop` to its end here, computing each graph at once (train()). */
  driveBlocking<T>(loop: Loop<T>, graphs: GraphDriver): T {
    this.begin('blocking');
    try {
      for (;;) {
        const r = loop.next();
        if (r.done === true) return r.value;
        if (r.value instanceof Promise) throw blockingObjectiveError(); // (train() refuses it first)
        if (r.value !== undefined) graphs.execute(r.value);
      }
    } finally {
      this.end();
    }
  }

  /**
   * Runs `loop` to its end without blocking the event loop (trainAsync()): each graph computes on a
   * worker thread, and at each step boundary the event loop runs (timers, I/O, a signal handler and
   * what it defers with setImmediate) and a paused run waits for resume() or stop().
   */
  async driveAsync<T>(loop: Loop<T>, graphs: GraphDriver, offThread = true): Promise<T> {
    this.begin('async');
    try {
      await this.whilePaused(); // paused before the run: no step until resumed
      let step: StepResult | undefined;
      for (;;) {
        const r = loop.next(step);
        step = undefined;
        if (r.done === true) return r.value;
        if (r.value instanceof Promise) {
          step = await r.value; // a rejection ends the run (the loop's finally blocks have nothing to undo)
          continue;
        }
        if (r.value !== undefined && !offThread) {
          graphs.execute(r.value); // on this thread: the event loop runs at step boundaries only
          continue;
        }
        if (r.value !== undefined) {
          this.computing = true;
          await graphs.executeAsync(r.value).finally(() => (this.computing = false));
          continue;
        }
        // setImmediate, not a resolved promise: timers and I/O callbacks run before the next step;
        // twice, so that what a handler (a SIGINT's, in the poll phase) defers with setImmediate runs too
        await new Promise((resolve) => setImmediate(resolve));
        await new Promise((resolve) => setImmediate(resolve));
        await this.whilePaused();
      }
    } finally {
      this.end();
    }
  }

  private async whilePaused(): Promise<void> {
    for (let p = this.paused; p !== null; p = this.paused) await p.promise;
  }

  private begin(kind: 'blocking' | 'async'): void {
    if (this.running !== null)
      throw new ConfigError('train: this trainer is already running', {
        hint: 'await the run going on (or stop() it) before starting another',
      });
    if (kind === 'blocking' && this.paused !== null)
      throw new ConfigError('train(): the trainer is paused, and train() cannot wait for resume()', {
        hint: 'resume() it first, or run it with trainAsync()',
      });
    this.running = kind;
  }

  /** A run ended: a stop asked for is done (the trainer can train on), a pause is kept. */
  private end(): void {
    this.running = null;
    this.stopRequest = null;
  }
}

/**
 * What the Trainer is beside training: an EventEmitter of {@link TrainerEvents} with pause(),
 * resume() and stop() (its base class, so that trainer.ts holds the loop alone).
 *
 * @example
 * trainer.on('step', (r) => console.log(r.step, r.loss));
 * const run = trainer.trainAsync();
 * trainer.pause(); // at the next step boundary
 * trainer.resume();
 * trainer.stop({ save: true }); // checkpoint-N of the step reached, in outputDir
 * const result = await run; // result.aborted
 */
export class SteerableRun extends EventEmitter<TrainerEvents> {
  /** Receives every log record (initially the options' onLog; set it to attach loggers later). */
  onLog: ((record: LogRecord) => void) | undefined;
  protected readonly control: RunControl;

  constructor(outputDir: string | undefined) {
    super();
    this.control = new RunControl(outputDir);
  }

  /**
   * Holds a {@link Trainer.trainAsync} run at the next step boundary (the step going on finishes),
   * until {@link resume} or {@link stop}. Refused during train(), which never yields.
   */
  pause(): void {
    this.control.pause();
  }

  /**
   * A trainAsync step is going on (its graphs compute on a worker thread): a stop asked for now ends
   * the run after that step, one past the steps taken so far.
   */
  get stepInProgress(): boolean {
    return this.control.inStep;
  }

  /** Lets a paused run go on: the next step is the one an unpaused run would have taken. */
  resume(): void {
    this.control.resume();
  }

  /**
   * Ends the run at the next step boundary (a paused one at once): its result says `aborted`, and
   * with `save` (the default when there is an outputDir) checkpoint-N of the step reached is written
   * into outputDir, to resume from.
   */
  stop(o: StopOptions = {}): void {
    this.control.stop(o);
  }

  /**
   * Sends a log record, stamped with `epoch`, to {@link onLog}, then emits it as `log` and as its
   * kind's event (`step` for a skipped step too).
   */
  protected emitRecord(r: Omit<LogRecord, 'epoch'>, epoch: number): void {
    const { kind, step, ...rest } = r;
    const record: LogRecord = { kind, step, epoch, ...rest };
    this.onLog?.(record);
    this.emit('log', record);
    if (record.kind === 'sample') this.emit('sample', record as SampleRecord);
    else if (record.kind !== 'resume') this.emit(record.kind === 'skip' ? 'step' : record.kind, record);
  }

  /** Drives the loop here ({@link RunControl.driveBlocking}); emits `end`, or `error` and throws. */
  protected runBlocking(loop: Loop<TrainResult>, graphs: GraphDriver): TrainResult {
    try {
      return this.ended(this.control.driveBlocking(loop, graphs));
    } catch (e) {
      throw this.failed(e);
    }
  }

  /** Drives the loop without blocking ({@link RunControl.driveAsync}); emits `end`, or `error` and rejects. */
  protected async runAsync(
    loop: Loop<TrainResult>,
    graphs: GraphDriver,
    offThread = true,
  ): Promise<TrainResult> {
    try {
      return this.ended(await this.control.driveAsync(loop, graphs, offThread));
    } catch (e) {
      throw this.failed(e);
    }
  }

  private ended(r: TrainResult): TrainResult {
    this.emit('end', r);
    return r;
  }

  /** Emits `error` (with a listener only: EventEmitter throws an unheard one) and returns the error. */
  private failed(e: unknown): unknown {
    if (e instanceof Error && this.listenerCount('error') > 0) this.emit('error', e);
    return e;
  }
}
