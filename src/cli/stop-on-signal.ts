/**
 * Ctrl-C during `qtune train`. The first SIGINT or SIGTERM aborts the run's AbortSignal: the trainer
 * finishes the step it is in, writes checkpoint-N of that step, and the command prints how to resume
 * and exits with 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process those signals ended.
 * Once the trainer has seen the abort, the handlers are removed, so a second signal ends the process
 * at once (the default action), even in the middle of writing the checkpoint: checkpoints are written
 * into a temporary folder and renamed, so the last whole one stays and the next run removes the
 * half-written one. `qtune train` computes the graphs on the main thread (trainAsync with
 * offThread: false: the worker hops cost 33 % of a small step, BENCHMARKS.md), so signals are
 * handled at the next step boundary; two signals within one step are both seen there.
 */
import os from 'node:os';

export type StopSignal = 'SIGINT' | 'SIGTERM';
const SIGNALS: readonly StopSignal[] = ['SIGINT', 'SIGTERM'];

export interface SignalStop {
  readonly signal: AbortSignal;
  /** The signal that stopped the run, or null. */
  readonly received: StopSignal | null;
  /** Removes the handlers (at the end of the run). */
  dispose(): void;
}

/** The exit code of a run `signal` stopped: 128 + its number (130, 143). */
export function signalExitCode(signal: StopSignal): number {
  return 128 + os.constants.signals[signal];
}

/**
 * Aborts the returned signal on the first SIGINT or SIGTERM, after printing `notice(signal)` on
 * stderr; `early(signal)` is printed before an immediate exit on a second one.
 */
export function stopOnSignal(o: {
  notice: (signal: StopSignal) => string;
  early: (signal: StopSignal) => string;
}): SignalStop {
  const controller = new AbortController();
  let received: StopSignal | null = null;
  let removed = false;
  const remove = (): void => {
    if (removed) return;
    removed = true;
    for (const s of SIGNALS) process.removeListener(s, onSignal);
  };
  function onSignal(signal: StopSignal): void {
    if (received !== null) {
      // a second signal queued behind the first (both came during one step)
      process.stderr.write(`${o.early(signal)}\n`);
      process.exit(signalExitCode(signal));
    }
    received = signal;
    process.stderr.write(`${o.notice(signal)}\n`);
    controller.abort();
    // removed once the signals queued with this one are handled, before the trainer writes the
    // checkpoint (Trainer.trainAsync yields twice between steps for that): from then on a signal
    // takes its default action, which ends the process at once
    setImmediate(remove);
  }
  for (const s of SIGNALS) process.on(s, onSignal);
  return {
    signal: controller.signal,
    get received() {
      return received;
    },
    dispose: remove,
  };
}

/** `value` quoted for a POSIX shell when it needs it. */
export function shellQuote(value: string): string {
  return /^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

/**
 * The `qtune train` command line that resumes from `checkpoint`: the flags the run was given
 * (`argv`, after `train`), without any resume_from_checkpoint of its own, then
 * `--resume_from_checkpoint checkpoint`.
 */
export function resumeCommand(argv: readonly string[], checkpoint: string): string {
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const name = (eq < 0 ? arg.slice(2) : arg.slice(2, eq)).replace(/-/g, '_');
    if (arg.startsWith('--') && name === 'resume_from_checkpoint') {
      // as readFlags reads it: `--name value` unless the next one is a flag
      if (eq < 0 && i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) i++;
      continue;
    }
    kept.push(arg);
  }
  return ['qtune', 'train', ...kept, '--resume_from_checkpoint', checkpoint].map(shellQuote).join(' ');
}
