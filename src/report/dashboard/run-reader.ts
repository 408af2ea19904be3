/**
 * What the dashboard shows of a run, read from its output folder as the run writes it: the rows of
 * metrics.jsonl (read on from where the last look stopped; a line still being written waits for its
 * newline), the resolved config, the checkpoint-N folders, the device placement (train.log's
 * `placement:` lines, or the device of its summary line) and whether a run holds the folder's lock.
 *
 * @example
 * const reader = new RunReader('out');
 * const { records, reset } = reader.poll(); // the rows written since the last poll
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { METRICS_FILE } from '../jsonl.js';

/** A metrics.jsonl row as read back: at least its kind and step (see MetricsRow for the fields). */
export type RunRecord = Record<string, unknown> & { kind: string; step: number };

export interface CheckpointInfo {
  name: string;
  step: number;
  /** Last change, ms since the Unix epoch. */
  mtimeMs: number;
}

/** The parts of a run besides its records; sent again whenever one of them changes. */
export interface RunInfo {
  outputDir: string;
  /** The resolved config as YAML, or null before the run has written qtune_config.yaml. */
  config: string | null;
  checkpoints: CheckpointInfo[];
  /** One line per group of decoder blocks and its device, or the run's device. */
  placement: string[];
  /** Whether a `qtune train` holds the folder (its .qtune-lock exists). */
  running: boolean;
}

/** What the train command knows before the folder says it (the config, the placement). */
export interface RunInfoOverride {
  config?: string;
  placement?: string[];
}

const CONFIG_FILE = 'qtune_config.yaml';
const LOG_FILE = 'train.log';
const LOCK_FILE = '.qtune-lock';
const CHECKPOINT = /^checkpoint-(\d+)$/;

/** Whether `dir` holds (or is about to hold) a qtune train run. */
export function holdsRun(dir: string): boolean {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return false;
  return readdirSync(dir).some(
    (f) => f === METRICS_FILE || f === LOCK_FILE || f === CONFIG_FILE || CHECKPOINT.test(f),
  );
}

function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** train.log's placement lines, else the device its `trained N steps (lora on CPU)` line names. */
export function placementFromLog(log: string): string[] {
  const lines = log.split('\n');
  const placed = lines.filter((l) => l.startsWith('placement: ')).map((l) => l.slice(11));
  if (placed.length > 0) return placed;
  for (const l of lines.reverse()) {
    const m = /^trained \d+ steps \(\S+ on ([^)]+?)(?: × \d+ ranks)?\)/.exec(l);
    if (m !== null) return [`${m[1]!}: the whole model`];
  }
  return [];
}

export class RunReader {
  readonly records: RunRecord[] = [];
  private offset = 0;
  private partial = '';
  private ino = -1;
  private override: RunInfoOverride = {};

  constructor(readonly outputDir: string) {}

  setOverride(o: RunInfoOverride): void {
    this.override = { ...this.override, ...o };
  }

  /**
   * Reads the rows added to metrics.jsonl since the last call. `reset` is true when the file was
   * replaced or cut shorter (overwrite_output_dir): the records start over.
   */
  poll(): { records: RunRecord[]; reset: boolean } {
    const file = path.join(this.outputDir, METRICS_FILE);
    let size: number;
    let ino: number;
    try {
      const st = statSync(file);
      size = st.size;
      ino = st.ino;
    } catch {
      size = 0;
      ino = -1;
    }
    let reset = false;
    if (ino !== this.ino || size < this.offset) {
      reset = this.offset > 0 || this.records.length > 0;
      this.records.length = 0;
      this.offset = 0;
      this.partial = '';
      this.ino = ino;
    }
    if (size <= this.offset) return { records: [], reset };
    const buf = Buffer.alloc(size - this.offset);
    const fd = openSync(file, 'r');
    let got = 0;
    try {
      while (got < buf.length) {
        const n = readSync(fd, buf, got, buf.length - got, this.offset + got);
        if (n === 0) break;
        got += n;
      }
    } finally {
      closeSync(fd);
    }
    this.offset += got;
    const parts = (this.partial + buf.subarray(0, got).toString('utf8')).split('\n');
    this.partial = parts.pop()!;
    const fresh: RunRecord[] = [];
    for (const line of parts) {
      if (line.trim() === '') continue;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch {
        continue; // a line a crash cut short (the next run appends after it)
      }
      if (row === null || typeof row !== 'object' || Array.isArray(row)) continue;
      const r = row as Record<string, unknown>;
      if (typeof r['kind'] !== 'string' || typeof r['step'] !== 'number') continue;
      fresh.push(r as RunRecord);
    }
    this.records.push(...fresh);
    return { records: fresh, reset };
  }

  info(): RunInfo {
    const dir = this.outputDir;
    const names = existsSync(dir) ? readdirSync(dir) : [];
    const checkpoints: CheckpointInfo[] = [];
    for (const name of names) {
      const m = CHECKPOINT.exec(name);
      if (m === null) continue;
      try {
        checkpoints.push({ name, step: Number(m[1]), mtimeMs: statSync(path.join(dir, name)).mtimeMs });
      } catch {
        // removed between the listing and the look (the checkpoint limit)
      }
    }
    checkpoints.sort((a, b) => a.step - b.step);
    const config = readText(path.join(dir, CONFIG_FILE)) ?? this.override.config ?? null;
    const placement = this.override.placement ?? placementFromLog(readText(path.join(dir, LOG_FILE)) ?? '');
    return {
      outputDir: dir,
      config,
      checkpoints,
      placement,
      running: names.includes(LOCK_FILE),
    };
  }
}
