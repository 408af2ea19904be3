/**
 * output_dir/train.log: what `qtune train` prints during the run (its stdout lines, the progress in
 * plain form: a line every logging_steps, each evaluation and checkpoint, and the error line of a
 * failed run). Lines are kept in memory and the file rewritten atomically at each checkpoint and at
 * the end, so a killed run leaves a whole log up to its last checkpoint. A resumed run appends.
 *
 * @example
 * const log = new TrainLog('out', { append: false });
 * log.line('trained 2 steps');
 * log.flush();
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import type { TextSink } from '../report/console.js';

export const LOG_FILE = 'train.log';

export class TrainLog {
  readonly file: string;
  private readonly earlier: string;
  private readonly lines: string[] = [];
  private partial = '';
  /** Whether output_dir exists for this run yet (nothing is written before). */
  private open = false;

  constructor(dir: string, o: { append: boolean }) {
    this.file = path.join(dir, LOG_FILE);
    this.earlier = o.append && existsSync(this.file) ? readFileSync(this.file, 'utf8') : '';
    this.lines.push(`# qtune train, ${o.append ? 'resumed' : 'started'} ${new Date().toISOString()}`);
  }

  /** One printed line (or several, split at newlines). */
  line(s: string): void {
    this.lines.push(...s.split('\n'));
  }

  /** A stream for ConsoleProgress (plain mode): whole lines go to the log. */
  readonly sink: TextSink = {
    write: (s: string) => {
      const parts = (this.partial + s).split('\n');
      this.partial = parts.pop()!;
      this.lines.push(...parts);
      return true;
    },
  };

  /** From here on the log may be written (output_dir is made). */
  start(): void {
    this.open = true;
    this.flush();
  }

  flush(): void {
    if (!this.open) return;
    const tail = this.partial === '' ? [] : [this.partial];
    writeFileAtomic(this.file, [this.earlier, [...this.lines, ...tail].join('\n') + '\n']);
  }
}
