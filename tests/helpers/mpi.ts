/**
 * Running MPI jobs from tests: whether mpirun is installed, `qtune launch` as a child process that a
 * test can watch (and signal) while it runs, and finding a rank's process id.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { BIN } from './cli.js';

/** Why the MPI tests cannot run here, or false. */
export function mpiSkipReason(): string | false {
  const r = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0)
    return 'mpirun not found: the MPI tests need Open MPI (apt-get install openmpi-bin) or MPICH';
  if (process.platform !== 'linux') return 'the MPI tests find rank processes through /proc (Linux only)';
  return false;
}

export interface Job {
  child: ChildProcess;
  /** Resolves when the job has ended. */
  done: Promise<{ code: number; stdout: string; stderr: string; endedAt: number }>;
}

/** Starts `qtune <args>` (e.g. launch -n 2 -- train ...) without waiting for it. */
export function startQtune(args: string[], env: Record<string, string> = {}): Job {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number; stdout: string; stderr: string; endedAt: number }>((resolve) => {
    child.on('close', (code, signal) =>
      resolve({ code: code ?? (signal === null ? -1 : 128), stdout, stderr, endedAt: Date.now() }),
    );
  });
  return { child, done };
}

/**
 * The process id of `rank` in the job whose environment holds QTUNE_TEST_JOB=`tag` (Open MPI sets
 * OMPI_COMM_WORLD_RANK, MPICH PMI_RANK), or null.
 */
export function rankPid(tag: string, rank: number): number | null {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let env: string[];
    try {
      env = readFileSync(path.join('/proc', entry, 'environ'), 'latin1').split('\0');
    } catch {
      continue; // gone, or not ours to read
    }
    if (!env.includes(`QTUNE_TEST_JOB=${tag}`)) continue;
    if (env.includes(`OMPI_COMM_WORLD_RANK=${rank}`) || env.includes(`PMI_RANK=${rank}`))
      return Number(entry);
  }
  return null;
}

/** Polls `test` every 100 ms until it returns a value other than null/false, or `ms` pass (then throws). */
export async function waitFor<T>(what: string, ms: number, test: () => T | null | false): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = test();
    if (v !== null && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The checkpoint-N folders of an output directory, oldest first. */
export function checkpoints(dir: string): number[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((d) => /^checkpoint-\d+$/.test(d))
    .map((d) => Number(d.slice('checkpoint-'.length)))
    .sort((a, b) => a - b);
}
