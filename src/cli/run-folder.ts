/**
 * One run per output folder. `qtune train` takes `output_dir/.qtune-lock` (pid, host and start time,
 * created with O_EXCL) before it writes anything, so a second run into the same folder fails with one
 * line naming the first; a lock whose process is gone is taken over. A folder that already holds a
 * run (checkpoint-N, metrics.jsonl or an adapter) is refused unless the run resumes or
 * `overwrite_output_dir: true` clears what qtune wrote there (and only that).
 */
import {
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  rmdirSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, fileSystemError } from '../errors.js';
import { makeFolder } from '../io/folders.js';

export const LOCK_FILE = '.qtune-lock';
/** The resolved config `qtune train` writes into output_dir (every option, defaults included). */
export const RUN_CONFIG_FILE = 'qtune_config.yaml';

/** What qtune train writes into output_dir: what `overwrite_output_dir` removes. */
const RUN_FILES = [
  'metrics.jsonl',
  'loss.png',
  'loss.svg',
  'train.log',
  'qtune_config.yaml',
  'trainer_state.json',
  'adapter_model.safetensors',
  'adapter_config.json',
  'adapter.gguf',
  'mlx', // mlx_adapter's adapters.safetensors + adapter_config.json
  'model',
  'profile.json',
  'runs',
  RUN_CONFIG_FILE,
];
/**
 * Files with names a user's own files may have: removed only when qtune wrote them (its README.md
 * is a model card that says so; the tokenizer files sit beside its adapter_config.json).
 */
const MARKED_FILES: Record<string, (dir: string) => boolean> = {
  'README.md': (dir) => fileHas(path.join(dir, 'README.md'), 'trained with qtune'),
  'tokenizer.json': (dir) => existsSync(path.join(dir, 'adapter_config.json')),
  'tokenizer_config.json': (dir) => existsSync(path.join(dir, 'adapter_config.json')),
  'special_tokens_map.json': (dir) => existsSync(path.join(dir, 'adapter_config.json')),
  'tokenizer.model': (dir) => existsSync(path.join(dir, 'adapter_config.json')),
};

function fileHas(file: string, text: string): boolean {
  try {
    return readFileSync(file, 'utf8').slice(0, 4096).includes(text);
  } catch {
    return false;
  }
}

/** The names that say a folder holds a run. */
const RUN_SIGNS = ['metrics.jsonl', 'adapter_model.safetensors', 'adapter.gguf'];
const CHECKPOINT = /^checkpoint-\d+(\.(tmp|old)-.*)?$/;

interface LockInfo {
  pid: number;
  host: string;
  started: string;
}

function readLock(file: string): LockInfo | null {
  try {
    const o = JSON.parse(readFileSync(file, 'utf8')) as Partial<LockInfo>;
    return typeof o.pid === 'number' && typeof o.host === 'string' && typeof o.started === 'string'
      ? (o as LockInfo)
      : null;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as { code?: unknown }).code === 'EPERM'; // alive, but another user's
  }
  // a process that has ended but is not yet reaped (a zombie, on Linux) holds nothing
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX] /s.test(stat);
  } catch {
    return true;
  }
}

/** Whether `pid` is still running after up to `ms` (a killed job's rank may take a moment to end). */
function stillAlive(pid: number, ms: number): boolean {
  const end = Date.now() + ms;
  while (alive(pid)) {
    if (Date.now() >= end) return true;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
  }
  return false;
}

/**
 * Creates `dir` if needed and takes its lock; returns the function that gives it back (and removes a
 * folder this call made, when the run wrote nothing into it). Throws a one-line {@link ConfigError}
 * when a live run holds the lock.
 */
export function lockOutputFolder(dir: string): () => void {
  const made = !existsSync(dir);
  makeFolder(dir, 'output_dir');
  const file = path.join(dir, LOCK_FILE);
  const mine: LockInfo = { pid: process.pid, host: os.hostname(), started: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(file, 'wx');
    } catch (e) {
      if ((e as { code?: unknown }).code !== 'EEXIST' || attempt > 0)
        throw fileSystemError(e, 'output_dir', dir);
      const held = readLock(file);
      // another machine's process cannot be looked at: its lock is taken for live
      if (held !== null && (held.host !== mine.host || stillAlive(held.pid, 3000)))
        throw new ConfigError(
          `output_dir: ${dir} is in use by another qtune train (pid ${held.pid} on ${held.host}, since ${held.started})`,
          { hint: `wait for it to end, choose another output_dir, or remove ${file} if that run is gone` },
        );
      unlinkSync(file); // a stale lock (its process has ended) or an unreadable one
      continue;
    }
    try {
      writeSync(fd, JSON.stringify(mine) + '\n');
    } finally {
      closeSync(fd);
    }
    break;
  }
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    if (readLock(file)?.pid === process.pid) rmSync(file, { force: true });
    if (made && existsSync(dir) && readdirSync(dir).length === 0) rmdirSync(dir);
  };
  process.once('exit', release);
  return () => {
    process.removeListener('exit', release);
    release();
  };
}

/** The names in `dir` that show it holds an earlier run. */
export function earlierRun(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => /^checkpoint-\d+$/.test(f) || RUN_SIGNS.includes(f))
    .sort();
}

/**
 * Refuses a folder that holds an earlier run, unless the run resumes (then it is kept) or
 * `overwrite` is set (then what qtune wrote there is removed; other files are left).
 */
export function checkEarlierRun(dir: string, o: { overwrite: boolean; resume: boolean }): void {
  const found = earlierRun(dir);
  if (found.length === 0 || o.resume) return;
  if (!o.overwrite)
    throw new ConfigError(
      `output_dir: ${dir} already holds a run (${found.slice(0, 3).join(', ')}${found.length > 3 ? ', ...' : ''})`,
      {
        hint: 'choose another output_dir, set overwrite_output_dir: true to replace it, or resume_from_checkpoint: latest to continue it',
      },
    );
  // (decided before anything is removed: the tokenizer files look at adapter_config.json)
  const names = readdirSync(dir).filter(
    (f) => CHECKPOINT.test(f) || RUN_FILES.includes(f) || MARKED_FILES[f]?.(dir) === true,
  );
  for (const f of names) rmSync(path.join(dir, f), { recursive: true, force: true });
}

/** The newest checkpoint-N folder in `dir`, or a one-line error when there is none (as HF Trainer does). */
export function latestCheckpoint(dir: string): string {
  const found = existsSync(dir)
    ? readdirSync(dir)
        .filter((d) => /^checkpoint-\d+$/.test(d))
        .sort((a, b) => Number(a.slice(11)) - Number(b.slice(11)))
    : [];
  if (found.length === 0)
    throw new ConfigError(`resume_from_checkpoint: latest, but ${dir} has no checkpoint-N folder`, {
      hint: 'train without resume_from_checkpoint first, or name a checkpoint folder',
    });
  return path.join(dir, found[found.length - 1]!);
}
