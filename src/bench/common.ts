/** What the benchmarks share: the engines to compare, running one in a child process, the PyTorch set-up. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { nativeEngineDir } from '../engine/paths.js';

/** `prebuilt`, and `native` when `qtune engine build` has made one for this CPU. */
export function enginesToCompare(): string[] {
  return ['prebuilt', ...(existsSync(path.join(nativeEngineDir(), 'build.json')) ? ['native'] : [])];
}

/** Runs `script --child ...args` with QTUNE_ENGINE=engine and parses the JSON of its last line. */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the JSON's shape
export function runChild<T>(script: string, engine: string, args: string[]): T {
  const r = spawnSync(process.execPath, [script, '--child', ...args], {
    encoding: 'utf8',
    env: { ...process.env, QTUNE_ENGINE: engine },
    maxBuffer: 16 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`bench child (${engine}) failed:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

const OPENBLAS_OPENMP = '/usr/lib/x86_64-linux-gnu/openblas-openmp';

/**
 * A warning when the OpenMP build of OpenBLAS is missing: PyTorch then runs on another BLAS, 1.5-5x
 * slower (../shared/bench/baseline/README.md), and its figures are no anchor. Null when present.
 */
export function openblasWarning(): string | null {
  return existsSync(OPENBLAS_OPENMP)
    ? null
    : `PyTorch ran without OpenBLAS's OpenMP build (${OPENBLAS_OPENMP} missing: apt-get install libopenblas0-openmp); its figures are not the anchor`;
}

/**
 * Runs Debian's PyTorch as the baseline README prescribes: the OpenMP build of OpenBLAS, and
 * OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset. Returns the JSON of its last line, or why it could not run.
 */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the JSON's shape
export function runPython<T>(args: string[]): T | string {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LD_LIBRARY_PATH: OPENBLAS_OPENMP,
  };
  delete env['OPENBLAS_CORETYPE'];
  delete env['OPENBLAS_L2_SIZE'];
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8', env, maxBuffer: 16 * 1024 * 1024 });
  if (r.status !== 0) {
    return `PyTorch anchor skipped: ${(r.stderr || String(r.error)).trim().split('\n').pop() ?? ''} (apt-get install python3-torch libopenblas0-openmp)`;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}
