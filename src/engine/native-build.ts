/**
 * `qtune engine build`: compiles ggml's CPU backend for this very CPU (-march=native) from the
 * llama.cpp source that node-llama-cpp ships offline as a git bundle, into qtune's cache folder.
 * The prebuilt CPU variants target generic instruction sets; a native build measured ~2x faster for
 * f32/f16 matmul (DESIGN.md §1). Nothing is written to the destination until the build succeeded.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { QtuneError } from '../errors.js';
import {
  GGML_VERSION,
  LIB_EXT,
  LIB_PREFIX,
  LLAMA_CPP_TAG,
  NODE_LLAMA_CPP_VERSION,
  cacheRoot,
  cpuIdentity,
  nativeEngineDir,
} from './paths.js';

export interface NativeBuildOptions {
  /** Parallel compile jobs (default: available CPUs). */
  jobs?: number;
  /** Rebuild even if a build for this CPU exists. */
  force?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface NativeBuildResult {
  dir: string;
  seconds: number;
  reused: boolean;
}

const CMAKE_FLAGS = [
  '-DCMAKE_BUILD_TYPE=Release',
  '-DGGML_NATIVE=ON',
  '-DBUILD_SHARED_LIBS=ON',
  // unversioned sonames, so the prebuilt GPU backends (which need `libggml-base.so`) bind to this build
  '-DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON',
  // ggml's own thread pool honours the thread count qtune sets; OpenMP would ignore it
  '-DGGML_OPENMP=OFF',
  '-DLLAMA_BUILD_COMMON=OFF',
  '-DLLAMA_BUILD_TESTS=OFF',
  '-DLLAMA_BUILD_TOOLS=OFF',
  '-DLLAMA_BUILD_EXAMPLES=OFF',
  '-DLLAMA_BUILD_SERVER=OFF',
  '-DLLAMA_BUILD_APP=OFF',
  '-DLLAMA_OPENSSL=OFF',
  '-DLLAMA_CURL=OFF',
];

const LIBS = ['ggml-base', 'ggml', 'ggml-cpu'].map((n) => `${LIB_PREFIX}${n}${LIB_EXT}`);

function run(cmd: string, args: string[], what: string, options: SpawnSyncOptions = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options });
  if (r.error !== undefined) {
    throw new QtuneError('ENGINE_BUILD', `${what}: could not run ${cmd} (${r.error.message})`, {
      hint: `install ${cmd} (Debian/Ubuntu: apt-get install git cmake g++)`,
    });
  }
  if (r.status !== 0) {
    const out = `${String(r.stdout ?? '')}\n${String(r.stderr ?? '')}`
      .trim()
      .split('\n')
      .slice(-15)
      .join('\n');
    throw new QtuneError('ENGINE_BUILD', `${what} failed (${cmd} exited with ${r.status}):\n${out}`);
  }
  return String(r.stdout ?? '');
}

/** The llama.cpp git bundle: from an installed node-llama-cpp, else `npm pack` of the pinned version. */
function findBundle(work: string, log: (s: string) => void): string {
  try {
    const pkg = createRequire(import.meta.url).resolve('node-llama-cpp/package.json');
    const bundle = path.join(path.dirname(pkg), 'llama', 'gitRelease.bundle');
    const version = (JSON.parse(readFileSync(pkg, 'utf8')) as { version: string }).version;
    if (existsSync(bundle) && version === NODE_LLAMA_CPP_VERSION) return bundle;
  } catch {
    // not installed: fetch it below
  }
  log(
    `fetching node-llama-cpp@${NODE_LLAMA_CPP_VERSION} (the llama.cpp ${LLAMA_CPP_TAG} source) from the npm registry`,
  );
  const out = run(
    'npm',
    ['pack', `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`, '--silent', '--pack-destination', work],
    'npm pack',
  );
  const tgz = path.join(work, out.trim().split('\n').pop()!.trim());
  run('tar', ['xzf', tgz, '-C', work, 'package/llama/gitRelease.bundle'], 'unpacking the source bundle');
  return path.join(work, 'package', 'llama', 'gitRelease.bundle');
}

/** Compiles the native engine for this CPU, or reuses the existing one. */
export function buildNativeEngine(o: NativeBuildOptions = {}): NativeBuildResult {
  const log = o.log ?? (() => undefined);
  const dest = nativeEngineDir();
  if (!o.force && existsSync(path.join(dest, 'build.json'))) return { dir: dest, seconds: 0, reused: true };
  const start = Date.now();
  mkdirSync(cacheRoot(), { recursive: true });
  const work = mkdtempSync(path.join(cacheRoot(), 'build-'));
  try {
    const bundle = findBundle(work, log);
    log('restoring the source from the git bundle');
    const src = path.join(work, 'src');
    run('git', ['clone', '--quiet', bundle, src], 'git clone of the bundle');
    const build = path.join(work, 'build');
    log('configuring (cmake, -march=native)');
    run('cmake', ['-S', src, '-B', build, ...CMAKE_FLAGS], 'cmake configure');
    const jobs = o.jobs ?? os.availableParallelism();
    log(`compiling ggml, ggml-base and ggml-cpu with ${jobs} jobs`);
    run(
      'cmake',
      ['--build', build, '-j', String(jobs), '--target', 'ggml', 'ggml-base', 'ggml-cpu'],
      'cmake build',
    );
    const binDir = [path.join(build, 'bin'), build].find((d) => existsSync(path.join(d, LIBS[0]!)));
    if (binDir === undefined)
      throw new QtuneError('ENGINE_BUILD', `the build produced no ${LIBS[0]} under ${build}`);

    const staging = `${dest}.partial-${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging, { recursive: true });
    for (const lib of LIBS) cpSync(path.join(binDir, lib), path.join(staging, lib), { dereference: true });
    const cpu = cpuIdentity();
    writeFileSync(
      path.join(staging, 'build.json'),
      JSON.stringify(
        {
          ggmlVersion: GGML_VERSION,
          llamaCppTag: LLAMA_CPP_TAG,
          nodeLlamaCpp: NODE_LLAMA_CPP_VERSION,
          cpuModel: cpu.model,
          cpuKey: cpu.key,
          cmakeFlags: CMAKE_FLAGS,
          builtAt: new Date().toISOString(),
        },
        null,
        2,
      ),
    );
    rmSync(dest, { recursive: true, force: true });
    renameSync(staging, dest);
    return { dir: dest, seconds: (Date.now() - start) / 1000, reused: false };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Deletes every native build in the cache (for every CPU). Returns the folders removed. */
export function cleanNativeEngines(): string[] {
  const root = path.join(cacheRoot(), 'engine');
  if (!existsSync(root)) return [];
  const removed: string[] = [];
  for (const d of readdirSync(root)) {
    rmSync(path.join(root, d), { recursive: true, force: true });
    removed.push(path.join(root, d));
  }
  return removed;
}
