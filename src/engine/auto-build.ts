/**
 * The native engine without the user having to know: the first time a computing command (train,
 * bench, eval, generate, ...) runs on a machine, qtune compiles ggml's CPU backend for this CPU
 * (`buildNativeEngine`, about a minute or two on 2 cores) and uses it from then on; the prebuilt
 * engine's generic variants ran f32 matmul about half as fast (DESIGN.md §3). Where it cannot build
 * (no git, cmake or C++ compiler; a failed build), the prebuilt engine runs and one line says why.
 *
 * QTUNE_ENGINE keeps its meaning: `prebuilt` never builds, `native` insists on an existing build,
 * and a chosen QTUNE_CPU_VARIANT implies the prebuilt engine. Ranks of an MPI job never build
 * (`qtune launch` builds before it starts them), and a second process finding a build under way uses
 * the prebuilt engine for that run rather than waiting.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { buildNativeEngine, buildToolsHint, missingBuildTools, readNativeBuildMeta } from './native-build.js';
import { NODE_LLAMA_CPP_VERSION, nativeEngineDir } from './paths.js';

export type AutoBuildOutcome =
  | 'opted-out' // QTUNE_ENGINE or QTUNE_CPU_VARIANT chose, or an MPI rank
  | 'present' // a native build for this CPU exists
  | 'built'
  | 'no-toolchain'
  | 'failed' // now, or at an earlier run (recorded; `qtune engine build` retries)
  | 'busy'; // another process is building it

/** A lock older than this is left over from a killed build. */
const STALE_LOCK_MS = 60 * 60 * 1000;

function failureFile(): string {
  return `${nativeEngineDir()}.failed.json`;
}

function lockDir(): string {
  return `${nativeEngineDir()}.lock`;
}

function underMpi(): boolean {
  return ['OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'PMIX_RANK'].some((v) => process.env[v] !== undefined);
}

/**
 * Builds the native engine if this machine has none and can make one; `log` gets the progress lines
 * and the one line that explains a fallback. Never throws for a build that cannot be made: the
 * prebuilt engine is always there.
 */
export function ensureNativeEngine(log: (line: string) => void): AutoBuildOutcome {
  const engine = process.env['QTUNE_ENGINE'];
  if ((engine !== undefined && engine !== '') || (process.env['QTUNE_CPU_VARIANT'] ?? '') !== '')
    return 'opted-out';
  if (underMpi()) return 'opted-out';
  if (readNativeBuildMeta(nativeEngineDir()) !== null) return 'present';

  const failed = earlierFailure();
  if (failed !== null) {
    log(
      `qtune: using the prebuilt CPU engine: the native build failed before (${failed}); \`qtune engine build\` retries, QTUNE_ENGINE=prebuilt silences this`,
    );
    return 'failed';
  }
  const missing = missingBuildTools();
  if (missing.length > 0) {
    log(
      `qtune: using the prebuilt CPU engine: building the faster native one needs ${missing.join(', ')} (${buildToolsHint()}); QTUNE_ENGINE=prebuilt silences this`,
    );
    return 'no-toolchain';
  }
  if (!takeLock()) {
    log('qtune: another qtune process is building the native CPU engine; this run uses the prebuilt one');
    return 'busy';
  }
  try {
    log(
      'qtune: building the native CPU engine for this CPU, once (1–3 minutes; QTUNE_ENGINE=prebuilt skips it)',
    );
    const r = buildNativeEngine({ log: (line) => log(`  ${line}`) });
    log(`qtune: native engine ready (${r.seconds.toFixed(0)} s), in ${r.dir}`);
    return 'built';
  } catch (e) {
    const reason = (e instanceof Error ? e.message : String(e)).split('\n')[0]!.slice(0, 300);
    recordFailure(reason);
    log(
      `qtune: using the prebuilt CPU engine: the native build failed (${reason}); \`qtune engine build\` retries`,
    );
    return 'failed';
  } finally {
    rmSync(lockDir(), { recursive: true, force: true });
  }
}

/** The reason an earlier automatic build failed for this CPU and release, or null. */
function earlierFailure(): string | null {
  const file = failureFile();
  if (!existsSync(file)) return null;
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as { nodeLlamaCpp?: unknown; reason?: unknown };
    if (j.nodeLlamaCpp !== NODE_LLAMA_CPP_VERSION || typeof j.reason !== 'string') return null;
    return j.reason;
  } catch {
    return null; // unreadable: try again
  }
}

function recordFailure(reason: string): void {
  try {
    mkdirSync(path.dirname(failureFile()), { recursive: true });
    writeFileSync(
      failureFile(),
      `${JSON.stringify({ nodeLlamaCpp: NODE_LLAMA_CPP_VERSION, reason, at: new Date().toISOString() })}\n`,
    );
  } catch {
    // a cache that cannot be written: the next run tries again
  }
}

/** Clears a recorded failure (a manual `qtune engine build` that succeeded). */
export function clearBuildFailure(): void {
  rmSync(failureFile(), { force: true });
}

function takeLock(): boolean {
  const dir = lockDir();
  try {
    mkdirSync(path.dirname(dir), { recursive: true });
    mkdirSync(dir);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') return false;
  }
  try {
    if (Date.now() - statSync(dir).mtimeMs < STALE_LOCK_MS) return false;
    rmSync(dir, { recursive: true, force: true }); // left by a killed build
    mkdirSync(dir);
    return true;
  } catch {
    return false;
  }
}

/**
 * The commands that compute, and so are worth a native engine (built when they first load the
 * engine; `launch` builds before it starts its ranks).
 */
export const COMPUTING_COMMANDS: readonly string[] = [
  'train',
  'eval',
  'generate',
  'chat',
  'quickstart',
  'demo',
  'bench',
];
