/**
 * `qtune engine build`: compiles ggml's CPU backend for this very CPU (-march=native) from the
 * llama.cpp source that node-llama-cpp ships offline as a git bundle (or a source folder given with
 * `--source` / QTUNE_LLAMA_CPP_SOURCE), into qtune's cache folder. The prebuilt CPU variants target
 * generic instruction sets; a native build measured ~2x faster for f32/f16 matmul (DESIGN.md §1).
 * With `--cuda` it also compiles ggml's CUDA backend (nvcc, for the GPUs present or `--cuda-arch`),
 * which libggml links and registers itself. Nothing is written to the destination until the build
 * succeeded.
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
  LLAMA_CPP_TAG,
  NODE_LLAMA_CPP_VERSION,
  cacheRoot,
  cpuIdentity,
  libNaming,
  nativeEngineDir,
} from './paths.js';

export interface NativeBuildOptions {
  /** Parallel compile jobs (default: available CPUs). */
  jobs?: number;
  /** Rebuild even if a build for this CPU exists. */
  force?: boolean;
  /** Progress lines. */
  log?: (line: string) => void;
  /** Also compile ggml's CUDA backend (needs the CUDA toolkit's nvcc). */
  cuda?: boolean;
  /** CMAKE_CUDA_ARCHITECTURES, e.g. `90` or `86;89` (default: `native`, the GPUs present at build time). */
  cudaArch?: string;
  /**
   * A llama.cpp source folder of the pinned release (top-level CMakeLists.txt, cmake/, ggml/, src/,
   * include/, vendor/), used as is instead of the git bundle: for machines without network access.
   * Default: QTUNE_LLAMA_CPP_SOURCE.
   */
  source?: string;
}

export interface NativeBuildResult {
  dir: string;
  seconds: number;
  reused: boolean;
  /** The CUDA architectures compiled, when the build includes CUDA. */
  cudaArch: string | null;
}

/** What build.json of a native build records. */
export interface NativeBuildMeta {
  ggmlVersion: string;
  llamaCppTag: string;
  nodeLlamaCpp: string;
  cpuModel: string;
  cpuKey: string;
  cmakeFlags: string[];
  /** The CUDA part, when built with `--cuda`. */
  cuda?: { arch: string; nvcc: string; nvccVersion: string };
  builtAt: string;
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

/**
 * CUDA flags: only the architectures asked for, and no FlashAttention kernels (qtune does not use
 * ggml's flash attention op; its template instances are most of the compile time).
 */
function cudaFlags(nvcc: string, arch: string): string[] {
  return [
    '-DGGML_CUDA=ON',
    `-DCMAKE_CUDA_COMPILER=${nvcc}`,
    `-DCMAKE_CUDA_ARCHITECTURES=${arch}`,
    '-DGGML_CUDA_FA=OFF',
    // multi-GPU collectives: qtune runs one device per backend
    '-DGGML_CUDA_NCCL=OFF',
  ];
}

/**
 * Per-platform flags. macOS: Metal on, as ggml's CMake has it by default on Apple, with its shaders
 * embedded in the library (no default.metallib to find beside it) and the run path set to the
 * library's own folder, since qtune copies the libraries out of the build tree; BLAS (Accelerate)
 * off, as qtune loads no BLAS backend from the prebuilt packages either. Windows: the compiler
 * (MSVC through Visual Studio's generator, else clang with Ninja) is chosen by {@link windowsToolchain}.
 */
function platformFlags(platform: NodeJS.Platform): string[] {
  if (platform === 'darwin')
    return [
      '-DGGML_METAL=ON',
      '-DGGML_METAL_EMBED_LIBRARY=ON',
      '-DGGML_BLAS=OFF',
      '-DCMAKE_BUILD_RPATH=@loader_path',
    ];
  return [];
}

const CUDA_ARCH = /^(native|all|all-major|[0-9]+[af]?(-real|-virtual)?(;[0-9]+[af]?(-real|-virtual)?)*)$/;

/** The cmake configure flags of a build (without `-S`/`-B`) on `platform` (default: this one). */
export function cmakeFlags(
  o: { cuda?: boolean; cudaArch?: string; nvcc?: string; platform?: NodeJS.Platform } = {},
): string[] {
  const platform = o.platform ?? process.platform;
  const base = [...CMAKE_FLAGS, ...platformFlags(platform)];
  if (!o.cuda) return base;
  if (platform === 'darwin') {
    throw new QtuneError('INVALID_ARGUMENT', '--cuda: macOS has no CUDA; the native build there has Metal', {
      hint: 'drop --cuda: `qtune engine build` compiles the Metal backend on macOS',
    });
  }
  const arch = o.cudaArch ?? 'native';
  if (!CUDA_ARCH.test(arch)) {
    throw new QtuneError('INVALID_ARGUMENT', `--cuda-arch ${arch} is not a CUDA architecture list`, {
      hint: 'use native, or compute capabilities without the dot such as 90 or 86;89',
    });
  }
  return [...base, ...cudaFlags(o.nvcc ?? 'nvcc', arch)];
}

/** The cmake targets of a build: on macOS the Metal backend too. */
function buildTargets(cuda: boolean, platform: NodeJS.Platform): string[] {
  return [
    'ggml-base',
    'ggml',
    'ggml-cpu',
    ...(platform === 'darwin' ? ['ggml-metal'] : []),
    ...(cuda ? ['ggml-cuda'] : []),
  ];
}

/** The libraries a build produces and qtune copies, in load order. */
export function buildLibraries(cuda: boolean, platform: NodeJS.Platform = process.platform): string[] {
  const { prefix, ext } = libNaming(platform);
  return buildTargets(cuda, platform).map((n) => `${prefix}${n}${ext}`);
}

/**
 * How to compile on Windows: Visual Studio's generator when MSVC is installed (found by vswhere, or
 * `cl` on PATH in a developer prompt), else clang with Ninja; null when neither is there.
 */
export function windowsToolchain(): { generator: string; flags: string[] } | null {
  const vswhere = path.join(
    process.env['ProgramFiles(x86)'] ?? 'C:\\Program Files (x86)',
    'Microsoft Visual Studio',
    'Installer',
    'vswhere.exe',
  );
  const works = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { stdio: 'ignore' });
    return r.error === undefined && r.status === 0;
  };
  if (existsSync(vswhere) || spawnSync('cl', [], { stdio: 'ignore' }).error === undefined)
    return { generator: 'Visual Studio (MSVC)', flags: [] };
  if (works('clang', ['--version']) && works('ninja', ['--version']))
    return {
      generator: 'Ninja (clang)',
      flags: ['-G', 'Ninja', '-DCMAKE_C_COMPILER=clang', '-DCMAKE_CXX_COMPILER=clang++'],
    };
  return null;
}

/**
 * The tools a native build needs that this machine lacks: git, cmake and a C++ compiler (`c++` on
 * Linux and macOS, where Xcode's command line tools provide it; MSVC or clang + Ninja on Windows).
 */
export function missingBuildTools(platform: NodeJS.Platform = process.platform): string[] {
  const missing = ['git', 'cmake', ...(platform === 'win32' ? [] : ['c++'])].filter((tool) => {
    const r = spawnSync(tool, ['--version'], { stdio: 'ignore' });
    return r.error !== undefined || r.status !== 0;
  });
  if (platform === 'win32' && windowsToolchain() === null)
    missing.push('a C++ compiler (MSVC, or clang and ninja)');
  return missing;
}

/** Where to get the build tools, per platform. */
export function buildToolsHint(platform: NodeJS.Platform = process.platform): string {
  if (platform === 'darwin') return 'macOS: xcode-select --install, and cmake from cmake.org or Homebrew';
  if (platform === 'win32')
    return 'Windows: Visual Studio Build Tools with "Desktop development with C++", CMake and Git for Windows';
  return 'Debian/Ubuntu: apt-get install git cmake g++';
}

/**
 * The CUDA compiler: CUDACXX (as CMake reads it), else `nvcc` on PATH, else the toolkit's default
 * place /usr/local/cuda/bin/nvcc. Throws one typed line when there is none.
 */
export function findNvcc(): { path: string; version: string } {
  const env = process.env['CUDACXX'];
  const candidates =
    env !== undefined && env !== ''
      ? [env]
      : [
          ...(process.env['PATH'] ?? '')
            .split(path.delimiter)
            .filter((d) => d !== '')
            .map((d) => path.join(d, 'nvcc')),
          '/usr/local/cuda/bin/nvcc',
        ];
  for (const c of candidates) {
    if (!existsSync(c)) continue;
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (r.status !== 0) continue;
    const version = /release ([0-9.]+)/.exec(r.stdout)?.[1] ?? 'unknown';
    return { path: c, version };
  }
  throw new QtuneError(
    'ENGINE_BUILD',
    env !== undefined && env !== ''
      ? `the CUDA build needs nvcc, but CUDACXX=${env} is not a working nvcc`
      : 'the CUDA build needs nvcc (the CUDA toolkit), which is neither on PATH nor in /usr/local/cuda/bin',
    {
      hint: 'install the CUDA toolkit and put its bin folder on PATH or set CUDACXX; or build without --cuda',
    },
  );
}

/** Checks that a source folder is the pinned llama.cpp (ggml version) before spending minutes on it. */
function checkSource(dir: string): string {
  const src = path.resolve(dir);
  const ggmlCmake = path.join(src, 'ggml', 'CMakeLists.txt');
  if (!existsSync(path.join(src, 'CMakeLists.txt')) || !existsSync(ggmlCmake)) {
    throw new QtuneError(
      'ENGINE_BUILD',
      `${src} is not a llama.cpp source folder (no CMakeLists.txt and ggml/CMakeLists.txt)`,
      { hint: `point --source or QTUNE_LLAMA_CPP_SOURCE at the llama.cpp ${LLAMA_CPP_TAG} source` },
    );
  }
  const text = readFileSync(ggmlCmake, 'utf8');
  const part = (p: string) => new RegExp(`set\\(GGML_VERSION_${p}\\s+(\\d+)\\)`).exec(text)?.[1] ?? '?';
  const version = `${part('MAJOR')}.${part('MINOR')}.${part('PATCH')}`;
  if (version !== GGML_VERSION) {
    throw new QtuneError(
      'ENGINE_BUILD',
      `${src} holds ggml ${version}, not the pinned ${GGML_VERSION} (llama.cpp ${LLAMA_CPP_TAG})`,
      {
        hint: `use the llama.cpp ${LLAMA_CPP_TAG} source that node-llama-cpp ${NODE_LLAMA_CPP_VERSION} ships`,
      },
    );
  }
  return src;
}

/** The native build's metadata, or null when there is none or it is unreadable. */
export function readNativeBuildMeta(dir = nativeEngineDir()): NativeBuildMeta | null {
  try {
    return JSON.parse(readFileSync(path.join(dir, 'build.json'), 'utf8')) as NativeBuildMeta;
  } catch {
    return null;
  }
}

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
    { shell: process.platform === 'win32' }, // npm is npm.cmd there
  );
  const tgz = path.join(work, out.trim().split('\n').pop()!.trim());
  run('tar', ['xzf', tgz, '-C', work, 'package/llama/gitRelease.bundle'], 'unpacking the source bundle');
  return path.join(work, 'package', 'llama', 'gitRelease.bundle');
}

/** Compiles the native engine for this CPU, or reuses the existing one (if it has CUDA when asked for). */
export function buildNativeEngine(o: NativeBuildOptions = {}): NativeBuildResult {
  const log = o.log ?? (() => undefined);
  const dest = nativeEngineDir();
  const cuda = o.cuda === true;
  // fail fast, before any download or compile: the arguments, the CUDA compiler, the source folder
  if (!cuda && o.cudaArch !== undefined) {
    throw new QtuneError('INVALID_ARGUMENT', '--cuda-arch needs --cuda', {
      hint: 'add --cuda, or drop --cuda-arch',
    });
  }
  cmakeFlags({ cuda, ...(o.cudaArch === undefined ? {} : { cudaArch: o.cudaArch }) });
  const nvcc = cuda ? findNvcc() : null;
  const sourceOpt = o.source ?? (process.env['QTUNE_LLAMA_CPP_SOURCE'] || undefined);
  const source = sourceOpt === undefined ? null : checkSource(sourceOpt);

  const existing = readNativeBuildMeta(dest);
  if (!o.force && existing !== null && (existing.cuda !== undefined) === cuda)
    return { dir: dest, seconds: 0, reused: true, cudaArch: existing.cuda?.arch ?? null };
  const start = Date.now();
  mkdirSync(cacheRoot(), { recursive: true });
  const work = mkdtempSync(path.join(cacheRoot(), 'build-'));
  try {
    let src: string;
    if (source !== null) {
      log(`using the llama.cpp source in ${source}`);
      src = source;
    } else {
      const bundle = findBundle(work, log);
      log('restoring the source from the git bundle');
      src = path.join(work, 'src');
      run('git', ['clone', '--quiet', bundle, src], 'git clone of the bundle');
    }
    const build = path.join(work, 'build');
    const arch = o.cudaArch ?? 'native';
    const toolchain = process.platform === 'win32' ? windowsToolchain() : null;
    const flags = [
      ...cmakeFlags({ cuda, cudaArch: arch, ...(nvcc === null ? {} : { nvcc: nvcc.path }) }),
      ...(toolchain?.flags ?? []),
    ];
    log(
      `configuring (cmake, -march=native${nvcc === null ? '' : `, CUDA ${nvcc.version} for architectures ${arch}`})`,
    );
    // a source folder without its own .git (an extracted copy) must not report the commit of a git
    // repository it happens to sit in: stop git's search at the folder
    const configured = run('cmake', ['-S', src, '-B', build, ...flags], 'cmake configure', {
      env: { ...process.env, GIT_CEILING_DIRECTORIES: path.dirname(src) },
    });
    const cudaArch = cuda ? configuredCudaArch(configured, arch) : null;
    const jobs = o.jobs ?? os.availableParallelism();
    const targets = buildTargets(cuda, process.platform);
    log(`compiling ${targets.join(', ')} with ${jobs} jobs${cuda ? ' (CUDA takes several minutes)' : ''}`);
    // --config: the Visual Studio generator builds several configurations (single-config ones ignore it)
    run(
      'cmake',
      ['--build', build, '--config', 'Release', '-j', String(jobs), '--target', ...targets],
      'cmake build',
    );
    const libs = buildLibraries(cuda);
    const binDir = [path.join(build, 'bin', 'Release'), path.join(build, 'bin'), build].find((d) =>
      existsSync(path.join(d, libs[0]!)),
    );
    if (binDir === undefined)
      throw new QtuneError('ENGINE_BUILD', `the build produced no ${libs[0]} under ${build}`);
    for (const lib of libs) {
      if (!existsSync(path.join(binDir, lib)))
        throw new QtuneError('ENGINE_BUILD', `the build produced no ${lib} under ${binDir}`);
    }

    const staging = `${dest}.partial-${process.pid}`;
    rmSync(staging, { recursive: true, force: true });
    mkdirSync(staging, { recursive: true });
    for (const lib of libs) cpSync(path.join(binDir, lib), path.join(staging, lib), { dereference: true });
    const cpu = cpuIdentity();
    const meta: NativeBuildMeta = {
      ggmlVersion: GGML_VERSION,
      llamaCppTag: LLAMA_CPP_TAG,
      nodeLlamaCpp: NODE_LLAMA_CPP_VERSION,
      cpuModel: cpu.model,
      cpuKey: cpu.key,
      cmakeFlags: flags,
      ...(nvcc === null || cudaArch === null
        ? {}
        : { cuda: { arch: cudaArch, nvcc: nvcc.path, nvccVersion: nvcc.version } }),
      builtAt: new Date().toISOString(),
    };
    writeFileSync(path.join(staging, 'build.json'), JSON.stringify(meta, null, 2));
    rmSync(dest, { recursive: true, force: true });
    renameSync(staging, dest);
    return { dir: dest, seconds: (Date.now() - start) / 1000, reused: false, cudaArch };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The architectures ggml's CMake resolved `native` to (it prints them while configuring). */
function configuredCudaArch(configureOutput: string, asked: string): string {
  return /Using CMAKE_CUDA_ARCHITECTURES=(\S+)/.exec(configureOutput)?.[1] ?? asked;
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
