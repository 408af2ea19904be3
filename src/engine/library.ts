/**
 * Loads ggml once per process: libggml-base and the registry from one folder (the native build when
 * one exists for this CPU, else the prebuilt package), the best CPU variant, then the GPU backends of
 * whichever GPU packages are installed. All of them share one libggml-base (same soname), so one
 * registry sees every device.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { QtuneError } from '../errors.js';
import {
  FeatureStruct,
  GetFeaturesProto,
  LogCallbackProto,
  ScoreProto,
  bindGgml,
  callProc,
  koffi,
  type GgmlApi,
  type LibraryHandle,
  type RegPtr,
} from './ggml.js';
import {
  GGML_VERSION,
  LIB_EXT,
  LLAMA_CPP_TAG,
  LIB_PREFIX,
  NODE_LLAMA_CPP_VERSION,
  cpuIdentity,
  enginePackages,
  gpuBackendFiles,
  prebuiltFiles,
  releaseOf,
  nativeEngineDir,
  physicalCores,
  type GpuKind,
  type PrebuiltFiles,
  type PrebuiltPackage,
} from './paths.js';
import { probeVulkanDevices, type VulkanPhysicalDevice } from './vulkan-probe.js';

export interface GpuBackendInfo {
  kind: GpuKind;
  /** The npm package it came from, or `native build` for a backend compiled by `qtune engine build --cuda`. */
  package: string;
  path: string;
  loaded: boolean;
  /** Why it did not load, or what qtune changed to make it usable. */
  note: string | null;
}

export interface EngineInfo {
  /** `native` when the library was compiled here by `qtune engine build`, else `prebuilt`. */
  kind: 'prebuilt' | 'native';
  /**
   * The release the libraries come from: the prebuilt package and its version
   * (`@node-llama-cpp/linux-x64@3.21.1`), or for a native build `node-llama-cpp@<version> source`.
   */
  release: string;
  ggmlVersion: string;
  ggmlCommit: string;
  llamaCppTag: string;
  /** Folder of libggml-base and the registry. */
  path: string;
  /** The CPU backend library loaded (a prebuilt variant such as `haswell`, or `native`). */
  cpuVariant: string;
  cpuVariantPath: string;
  cpuModel: string;
  /** Features the CPU backend reports (AVX2, AVX512, ...). */
  cpuFeatures: Record<string, string>;
  /** Default thread count for CPU compute: physical cores, or QTUNE_THREADS. */
  threads: number;
  gpuBackends: GpuBackendInfo[];
  /** Vulkan devices made visible by qtune because they are software renderers (lavapipe). */
  softwareVulkanDevices: string[];
}

export interface Engine {
  api: GgmlApi;
  info: EngineInfo;
}

let engine: Engine | undefined;
const logLines: string[] = [];

/** The loaded engine; loads it on first use. */
export function getEngine(): Engine {
  if (engine === undefined) {
    const hook = beforeLoad;
    beforeLoad = null;
    hook?.();
    engine = loadEngine();
  }
  return engine;
}

let beforeLoad: (() => void) | null = null;

/**
 * Runs `fn` once, just before the engine first loads (the CLI builds the native engine there, so that
 * a command whose flags are wrong fails before any build). No effect once the engine is loaded.
 */
export function beforeEngineLoad(fn: () => void): void {
  if (engine === undefined) beforeLoad = fn;
}

/** Messages ggml logged while loading (device discovery, failures). */
export function engineLog(): readonly string[] {
  return logLines;
}

let quietLog: unknown = null;

/**
 * Runs `fn` with ggml's log lines (warnings and errors kept, as while loading) routed into
 * {@link engineLog} instead of stderr: for calls on this thread that ggml reports on, such as the
 * CPU's repacking of every quantized weight written into its repack buffer. Never around compute:
 * koffi runs JS callbacks on the main thread only, and a compute thread calling one would deadlock.
 */
export function withEngineLog<T>(fn: () => T): T {
  const { api } = getEngine();
  quietLog ??= koffi.register((level: number, text: string) => {
    if (level >= 3) logLines.push(text.trimEnd());
  }, koffi.pointer(LogCallbackProto));
  api.log_set(quietLog, null);
  try {
    return fn();
  } finally {
    api.log_set(null, null);
  }
}

interface Primary {
  kind: 'prebuilt' | 'native';
  dir: string;
  registryFile: string;
  /** A native build's CUDA backend library (linked by its registry), when it was built with `--cuda`. */
  cudaFile: string | null;
  /**
   * A native build's other libraries that its registry links, loaded by path before it (the build
   * folder named in their run path is gone): the CPU backend, and on macOS Metal and BLAS.
   */
  linked: string[];
  /** The prebuilt package's files; null for a native build. */
  prebuilt: PrebuiltFiles | null;
  /** The node-llama-cpp release the libraries come from (a native build's source release). */
  release: string;
  /** The ggml version that release has: the loaded library must report it. */
  ggml: string;
}

function choosePrimary(packages: PrebuiltPackage[]): Primary {
  const want = process.env['QTUNE_ENGINE'];
  if (want !== undefined && want !== '' && want !== 'native' && want !== 'prebuilt') {
    throw new QtuneError('INVALID_ARGUMENT', `QTUNE_ENGINE=${want} is not an engine kind`, {
      hint: 'use QTUNE_ENGINE=native or QTUNE_ENGINE=prebuilt, or leave it unset',
    });
  }
  const variant = process.env['QTUNE_CPU_VARIANT'];
  const wantsVariant = variant !== undefined && variant !== '';
  if (want === 'native' && wantsVariant) {
    throw new QtuneError(
      'INVALID_ARGUMENT',
      `QTUNE_CPU_VARIANT=${variant} names a prebuilt CPU variant, but QTUNE_ENGINE=native`,
      { hint: 'unset one of them: a native build has no variants' },
    );
  }
  const packagesDir = process.env['QTUNE_ENGINE_PACKAGES']; // checked by enginePackages()
  const wantsPackages = packagesDir !== undefined && packagesDir !== '';
  const nativeDir = nativeEngineDir();
  const nativeRegistry = `${LIB_PREFIX}ggml${LIB_EXT}`;
  const hasNative =
    existsSync(path.join(nativeDir, nativeRegistry)) && existsSync(path.join(nativeDir, 'build.json'));
  if (want === 'native' && !hasNative) {
    throw new QtuneError(
      'ENGINE_NOT_FOUND',
      `QTUNE_ENGINE=native but no native build exists for this CPU at ${nativeDir}`,
      {
        hint: 'run `npx qtune engine build` first',
      },
    );
  }
  // a chosen prebuilt variant (QTUNE_CPU_VARIANT) or package folder (QTUNE_ENGINE_PACKAGES) implies the prebuilt engine
  if (hasNative && want !== 'prebuilt' && !wantsVariant && !wantsPackages) {
    const cudaFile = path.join(nativeDir, `${LIB_PREFIX}ggml-cuda${LIB_EXT}`);
    const linked = ['ggml-cpu', 'ggml-blas', 'ggml-metal']
      .map((n) => path.join(nativeDir, `${LIB_PREFIX}${n}${LIB_EXT}`))
      .filter((f) => existsSync(f));
    return {
      kind: 'native',
      dir: nativeDir,
      registryFile: nativeRegistry,
      cudaFile: existsSync(cudaFile) ? cudaFile : null,
      linked,
      prebuilt: null,
      release: readNativeRelease(nativeDir),
      ggml: GGML_VERSION,
    };
  }

  const files = prebuiltFiles(packages);
  return {
    kind: 'prebuilt',
    dir: files.primary.dir,
    registryFile: path.basename(files.registry),
    cudaFile: null,
    linked: [],
    prebuilt: files,
    release: `${files.primary.name}@${files.primary.version}`,
    ggml: releaseOf(files.primary.version)?.ggml ?? GGML_VERSION,
  };
}

interface CpuVariant {
  path: string;
  variant: string;
  /** ggml's score for this CPU: 0 when the variant needs a feature the CPU lacks. */
  score: number;
}

/** Every prebuilt CPU variant with its score on this CPU. */
function cpuVariants(files: PrebuiltFiles): CpuVariant[] {
  const found: CpuVariant[] = [];
  for (const { path: p, variant } of files.cpuVariants) {
    let lib: LibraryHandle | undefined;
    try {
      lib = koffi.load(p);
      const score = callProc(lib.symbol('ggml_backend_score') as never, ScoreProto) as number;
      found.push({ path: p, variant, score });
    } catch {
      found.push({ path: p, variant, score: 0 }); // cannot load or has no score function
    } finally {
      lib?.unload();
    }
  }
  return found;
}

/**
 * The prebuilt CPU variant to load: the one QTUNE_CPU_VARIANT names (e.g. `haswell`, so that results
 * do not depend on which SIMD kernels this CPU could run), else the one ggml itself would pick (the
 * highest `ggml_backend_score()`).
 */
function chooseCpuVariant(files: PrebuiltFiles): CpuVariant | null {
  const variants = cpuVariants(files);
  const want = process.env['QTUNE_CPU_VARIANT'];
  if (want !== undefined && want !== '') {
    const names = variants.map((v) => v.variant).join(', ');
    const chosen = variants.find((v) => v.variant === want);
    if (chosen === undefined) {
      throw new QtuneError('INVALID_ARGUMENT', `QTUNE_CPU_VARIANT=${want} is not a prebuilt CPU variant`, {
        hint: `use one of: ${names}; or unset it to let ggml pick`,
      });
    }
    if (chosen.score <= 0) {
      const runnable = variants.filter((v) => v.score > 0).map((v) => v.variant);
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `QTUNE_CPU_VARIANT=${want} needs CPU features this CPU lacks`,
        {
          hint: `variants this CPU runs: ${runnable.join(', ') || 'none'}`,
        },
      );
    }
    return chosen;
  }
  let best: CpuVariant | null = null;
  for (const v of variants) if (v.score > 0 && (best === null || v.score > best.score)) best = v;
  return best;
}

function loadEngine(): Engine {
  const packages = enginePackages();
  const primary = choosePrimary(packages);
  const basePath = path.join(primary.dir, `${LIB_PREFIX}ggml-base${LIB_EXT}`);
  let api: GgmlApi;
  try {
    const base = koffi.load(basePath);
    // the native registry links the CPU (Metal, BLAS, CUDA) backends directly; load them first so the
    // dynamic linker finds them by soname (the build folder named in their run path is gone)
    for (const f of primary.linked) koffi.load(f);
    if (primary.cudaFile !== null) {
      try {
        koffi.load(primary.cudaFile);
      } catch (e) {
        throw new QtuneError(
          'ENGINE_LOAD',
          `the native build links CUDA, but ${primary.cudaFile} does not load: ${e instanceof Error ? e.message : String(e)}`,
          {
            hint: 'install the CUDA runtime it was built against (libcudart, libcublas) and the NVIDIA driver, rebuild without --cuda (`npx qtune engine build --force`), or set QTUNE_ENGINE=prebuilt',
          },
        );
      }
    }
    const registry = koffi.load(path.join(primary.dir, primary.registryFile));
    api = bindGgml(base, registry);
  } catch (e) {
    if (e instanceof QtuneError) throw e;
    throw new QtuneError(
      'ENGINE_LOAD',
      `cannot load ggml from ${primary.dir}: ${e instanceof Error ? e.message : String(e)}`,
      {
        hint:
          primary.kind === 'native'
            ? 'delete the native build (`npx qtune engine build --clean`) or set QTUNE_ENGINE=prebuilt'
            : 'reinstall the @node-llama-cpp package',
      },
    );
  }

  // Route ggml's log lines into a buffer while loading: these calls all run on this thread. The
  // callback is removed before any compute, because koffi can only run JS callbacks on the main
  // thread and a compute thread calling one would deadlock.
  const logCb = koffi.register((level: number, text: string) => {
    if (level >= 2) logLines.push(text.trimEnd());
  }, koffi.pointer(LogCallbackProto));
  api.log_set(logCb, null);

  try {
    let cpuVariant = 'native';
    let cpuVariantPath = path.join(primary.dir, `${LIB_PREFIX}ggml-cpu${LIB_EXT}`);
    if (primary.prebuilt !== null) {
      const best = chooseCpuVariant(primary.prebuilt);
      if (best === null || api.backend_load(best.path) === null) {
        throw new QtuneError('ENGINE_LOAD', `no CPU backend in ${primary.dir} runs on this CPU`, {
          hint: 'build one for it with `npx qtune engine build`',
        });
      }
      cpuVariant = best.variant;
      cpuVariantPath = best.path;
    }

    const gpuBackends: GpuBackendInfo[] = [];
    const softwareVulkanDevices: string[] = [];
    if (primary.cudaFile !== null) {
      // registered by the native libggml itself (linked, not loaded with backend_load)
      const reg = findReg(api, 'CUDA');
      let devices = 0;
      for (let i = 0; i < api.backend_dev_count(); i++)
        if (api.backend_reg_name(api.backend_dev_backend_reg(api.backend_dev_get(i))) === 'CUDA') devices++;
      gpuBackends.push({
        kind: 'cuda',
        package: 'native build',
        path: primary.cudaFile,
        loaded: reg !== null && devices > 0,
        note:
          reg === null
            ? 'the native build has a CUDA library, but ggml registered no CUDA backend'
            : devices === 0
              ? `the CUDA backend found no usable GPU: ${lastLog() ?? 'check the NVIDIA driver (nvidia-smi)'}`
              : null,
      });
    }
    for (const metal of nativeMetal(primary, api)) gpuBackends.push(metal);
    for (const { kind, package: pkgName, path: file } of gpuBackendFiles(packages)) {
      // one CUDA backend per process: the native build's, when it has one
      if (kind === 'cuda' && primary.cudaFile !== null) continue;
      let note: string | null = null;
      if (kind === 'vulkan') {
        const probe = prepareVulkan();
        note = probe.note;
        softwareVulkanDevices.push(...probe.software.map((d) => d.name));
        if (!probe.usable) {
          gpuBackends.push({ kind: 'vulkan', package: pkgName, path: file, loaded: false, note });
          continue;
        }
      }
      const reg = api.backend_load(file);
      if (reg === null) note = `${file} did not load: ${lastLog() ?? 'see `qtune engine info`'}`;
      gpuBackends.push({ kind, package: pkgName, path: file, loaded: reg !== null, note });
    }

    const cpuReg = findReg(api, 'CPU');
    const info: EngineInfo = {
      kind: primary.kind,
      ggmlVersion: api.version(),
      ggmlCommit: api.commit(),
      llamaCppTag: readLlamaTag(primary),
      release: primary.release,
      path: primary.dir,
      cpuVariant,
      cpuVariantPath,
      cpuModel: cpuIdentity().model,
      cpuFeatures: cpuReg === null ? {} : cpuFeatures(api, cpuReg),
      threads: defaultThreads(),
      gpuBackends,
      softwareVulkanDevices,
    };
    if (info.ggmlVersion !== primary.ggml) {
      throw new QtuneError(
        'ENGINE_LOAD',
        `ggml ${info.ggmlVersion} at ${primary.dir} is not ${primary.ggml}, which ${primary.release} has`,
        {
          hint: 'rebuild the native engine (`npx qtune engine build --clean`) or reinstall the pinned packages',
        },
      );
    }
    return { api, info };
  } finally {
    api.log_set(null, null);
  }
}

/** A native macOS build's Metal backend, which its libggml links and registers itself. */
function nativeMetal(primary: Primary, api: GgmlApi): GpuBackendInfo[] {
  const file = primary.linked.find((f) => path.basename(f).startsWith(`${LIB_PREFIX}ggml-metal`));
  if (file === undefined) return [];
  const reg = findReg(api, 'Metal') ?? findReg(api, 'MTL');
  return [
    {
      kind: 'metal',
      package: 'native build',
      path: file,
      loaded: reg !== null,
      note:
        reg === null ? 'the native build has a Metal library, but ggml registered no Metal backend' : null,
    },
  ];
}

function readNativeRelease(dir: string): string {
  try {
    const meta = JSON.parse(readFileSync(path.join(dir, 'build.json'), 'utf8')) as { nodeLlamaCpp?: string };
    return `node-llama-cpp@${meta.nodeLlamaCpp ?? 'unknown'} source`;
  } catch {
    return 'unknown';
  }
}

function lastLog(): string | undefined {
  return logLines[logLines.length - 1];
}

function readLlamaTag(primary: Primary): string {
  if (primary.kind === 'native') {
    try {
      const meta = JSON.parse(readFileSync(path.join(primary.dir, 'build.json'), 'utf8')) as {
        llamaCppTag?: string;
      };
      return meta.llamaCppTag ?? 'unknown';
    } catch {
      return 'unknown';
    }
  }
  return (
    /"release"\s*:\s*"([^"]+)"/.exec(readOr(path.join(primary.dir, '_nlcBuildMetadata.json')))?.[1] ??
    LLAMA_CPP_TAG
  );
}

function readOr(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

function findReg(api: GgmlApi, name: string): RegPtr | null {
  const n = api.backend_reg_count();
  for (let i = 0; i < n; i++) {
    const reg = api.backend_reg_get(i);
    if (api.backend_reg_name(reg) === name) return reg;
  }
  return null;
}

function cpuFeatures(api: GgmlApi, reg: RegPtr): Record<string, string> {
  const fn = api.backend_reg_get_proc_address(reg, 'ggml_backend_get_features');
  if (fn === null) return {};
  const out: Record<string, string> = {};
  const arr = callProc(fn, GetFeaturesProto, reg);
  for (let i = 0; i < 256; i++) {
    const f = koffi.decode(arr, i * koffi.sizeof(FeatureStruct), FeatureStruct) as {
      name: string | null;
      value: string | null;
    };
    if (f.name === null) break;
    out[f.name] = f.value ?? '';
  }
  return out;
}

/** QTUNE_THREADS, else the number of physical cores. */
export function defaultThreads(): number {
  const env = process.env['QTUNE_THREADS'];
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1) {
      throw new QtuneError('INVALID_ARGUMENT', `QTUNE_THREADS=${env} is not a positive integer`, {
        hint: 'set QTUNE_THREADS to a thread count such as 2, or unset it to use the physical cores',
      });
    }
    return n;
  }
  return physicalCores();
}

/**
 * Decides whether ggml's Vulkan backend has anything to use. When GGML_VK_VISIBLE_DEVICES is unset and
 * the only devices are software renderers, sets it to them so lavapipe runs the Vulkan path.
 *
 * lavapipe compiles each ggml shader with LLVM on first use, which dominates short runs (minutes on
 * 2 cores); without LLVM's optimisation passes it compiles ~1.4x faster. Software Vulkan is for
 * correctness, not speed, so qtune sets GALLIVM_PERF=nopt unless the user set it or a real GPU is
 * present. (LP_NATIVE_VECTOR_WIDTH=128 compiles faster still but makes ggml's quantized matmul
 * shaders return wrong values and NaN: never set it.)
 */
function prepareVulkan(): { usable: boolean; note: string | null; software: VulkanPhysicalDevice[] } {
  // Set before the probe loads lavapipe, which reads them once per process.
  const tuned: string[] = [];
  for (const [k, v] of [['GALLIVM_PERF', 'nopt']] as const) {
    if (process.env[k] === undefined) {
      process.env[k] = v;
      tuned.push(`${k}=${v}`);
    }
  }
  const untune = () => {
    for (const t of tuned) Reflect.deleteProperty(process.env, t.split('=')[0]!);
  };
  if (process.env['GGML_VK_VISIBLE_DEVICES'] !== undefined) {
    untune();
    return {
      usable: true,
      note: `GGML_VK_VISIBLE_DEVICES=${process.env['GGML_VK_VISIBLE_DEVICES']} set by the user`,
      software: [],
    };
  }
  const probe = probeVulkanDevices();
  if ('error' in probe) return { usable: false, note: probe.error, software: [] };
  const gpus = probe.devices.filter((d) => d.type === 'discrete_gpu' || d.type === 'integrated_gpu');
  if (gpus.length > 0) {
    untune();
    return { usable: true, note: null, software: [] };
  }
  const software = probe.devices.filter((d) => d.type === 'cpu');
  if (software.length === 0) return { usable: false, note: 'no Vulkan device found', software: [] };
  const old = software.find(
    (d) => d.name.startsWith('llvmpipe') && mesaMajor(d.driverInfo) < MIN_LAVAPIPE_MESA,
  );
  if (old !== undefined) {
    return {
      usable: false,
      note: `lavapipe from ${old.driverInfo || 'an unknown Mesa'} corrupts memory when running ggml's Vulkan shaders (seen with 22.3.6); qtune needs Mesa >= ${MIN_LAVAPIPE_MESA} for software Vulkan (Debian 12: apt-get install -t bookworm-backports mesa-vulkan-drivers)`,
      software: [],
    };
  }
  process.env['GGML_VK_VISIBLE_DEVICES'] = software.map((d) => d.index).join(',');
  return {
    usable: true,
    note:
      `only software Vulkan devices found (${software.map((d) => d.name).join(', ')}): qtune set GGML_VK_VISIBLE_DEVICES=${process.env['GGML_VK_VISIBLE_DEVICES']} to use them` +
      (tuned.length > 0 ? ` and ${tuned.join(' ')} for faster shader compilation` : ''),
    software,
  };
}

/** Oldest Mesa whose lavapipe ran qtune's test suite without corrupting memory (25.0.7 was checked). */
const MIN_LAVAPIPE_MESA = 25;

function mesaMajor(driverInfo: string): number {
  const m = /Mesa (\d+)\./.exec(driverInfo);
  return m === null ? 0 : Number(m[1]);
}

export const ENGINE_PINS = { nodeLlamaCpp: NODE_LLAMA_CPP_VERSION, ggml: GGML_VERSION };
