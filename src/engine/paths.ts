/**
 * Where the ggml libraries are: the pinned prebuilt packages in node_modules, and the optional native
 * build in qtune's cache folder.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { QtuneError } from '../errors.js';

/** A release of node-llama-cpp's packages: the llama.cpp tag it ships and its ggml version. */
export interface EngineRelease {
  nodeLlamaCpp: string;
  llamaCppTag: string;
  ggml: string;
}

/**
 * The releases the declarations in ggml.ts are checked against, newest first. Every struct layout,
 * enum and function qtune binds is the same in both (docs/engine.md says what differs); the layout
 * test checks whichever one is loaded.
 */
export const ENGINE_RELEASES: readonly EngineRelease[] = [
  { nodeLlamaCpp: '3.22.1', llamaCppTag: 'v0.5.0', ggml: '0.25.1' },
  { nodeLlamaCpp: '3.21.1', llamaCppTag: 'v0.4.0', ggml: '0.23.0' },
];

/**
 * The release pinned for a platform. 3.22.1 published Linux packages only; macOS and Windows have
 * 3.21.1, whose Vulkan backend aborts on a `get_rows` whose index is a view at an offset that is
 * not a multiple of the device's storage alignment (fixed in 3.22.1), so Linux keeps 3.22.1.
 */
export function pinnedRelease(platform: NodeJS.Platform = process.platform): EngineRelease {
  return platform === 'linux' ? ENGINE_RELEASES[0]! : ENGINE_RELEASES[1]!;
}

/** The known release of a package version, if it is one. */
export function releaseOf(nodeLlamaCpp: string): EngineRelease | undefined {
  return ENGINE_RELEASES.find((r) => r.nodeLlamaCpp === nodeLlamaCpp);
}

/** This platform's pinned release: what the packages, the native build's source and its cache folder use. */
export const NODE_LLAMA_CPP_VERSION = pinnedRelease().nodeLlamaCpp;
export const LLAMA_CPP_TAG = pinnedRelease().llamaCppTag;
export const GGML_VERSION = pinnedRelease().ggml;

export type GpuKind = 'vulkan' | 'cuda' | 'metal';

export interface PrebuiltPackage {
  /** npm package name, e.g. `@node-llama-cpp/linux-x64-vulkan`. */
  name: string;
  /** Folder holding the shared libraries. */
  dir: string;
  /**
   * The GPU backend the package adds, if any. `mac-arm64-metal` is both: Apple silicon's only
   * package, with the CPU variants and the Metal backend.
   */
  gpu: GpuKind | null;
  /** Its version (the node-llama-cpp release). */
  version: string;
}

/**
 * How a platform names ggml's libraries. `ext` is that of ordinary shared libraries (libggml-base,
 * the libggml registry, everything a native build makes); `moduleExt` that of the backends the
 * registry loads at run time (the prebuilt CPU variants and GPU backends), which CMake builds as
 * modules: `.so` on macOS too, next to `.dylib` base and registry.
 */
export interface LibNaming {
  prefix: string;
  ext: string;
  moduleExt: string;
}

export function libNaming(platform: NodeJS.Platform = process.platform): LibNaming {
  if (platform === 'win32') return { prefix: '', ext: '.dll', moduleExt: '.dll' };
  if (platform === 'darwin') return { prefix: 'lib', ext: '.dylib', moduleExt: '.so' };
  return { prefix: 'lib', ext: '.so', moduleExt: '.so' };
}

/**
 * The package names for a platform: the CPU one first, then the GPU ones. These are the packages
 * node-llama-cpp publishes (macOS on Apple silicon has only `mac-arm64-metal`; macOS on Intel only
 * `mac-x64`); qtune's package.json names the CPU ones as optional dependencies, npm installs the one
 * whose `os`/`cpu` fit, and the GPU ones are opt-in.
 */
export function prebuiltPackageNames(
  platform: NodeJS.Platform = process.platform,
  arch: string = process.arch,
): { name: string; gpu: GpuKind | null }[] {
  if (platform === 'darwin') {
    return arch === 'arm64'
      ? [{ name: '@node-llama-cpp/mac-arm64-metal', gpu: 'metal' }]
      : [{ name: `@node-llama-cpp/mac-${arch}`, gpu: null }];
  }
  const base = `${platform === 'win32' ? 'win' : platform}-${arch}`;
  const names: { name: string; gpu: GpuKind | null }[] = [{ name: `@node-llama-cpp/${base}`, gpu: null }];
  if (arch === 'x64') {
    names.push({ name: `@node-llama-cpp/${base}-vulkan`, gpu: 'vulkan' });
    names.push({ name: `@node-llama-cpp/${base}-cuda`, gpu: 'cuda' });
  }
  return names;
}

/**
 * The prebuilt packages that are installed, found the way Node resolves them from qtune's folder (or
 * from `from`, a file path: a test resolves them in a folder where npm installed another platform's
 * packages). All of one release, since they share one libggml-base: the platform's pinned release
 * when any of its packages is there, else the newest known one installed. A package of an unknown
 * release is left out: the declarations in ggml.ts are not checked against it.
 */
export function findPrebuiltPackages(
  platform: NodeJS.Platform = process.platform,
  arch: string = process.arch,
  from: string = import.meta.url,
): PrebuiltPackage[] {
  const require = createRequire(from);
  let found: PrebuiltPackage[] = [];
  for (const { name, gpu } of prebuiltPackageNames(platform, arch)) {
    let entry: string;
    try {
      entry = require.resolve(name);
    } catch {
      continue;
    }
    const root = path.dirname(path.dirname(entry)); // <root>/dist/index.js
    const dir = path.join(root, 'bins', name.slice('@node-llama-cpp/'.length));
    const version = readPackageVersion(root);
    if (version === undefined || releaseOf(version) === undefined) continue; // headers not checked
    if (existsSync(dir)) found.push({ name, dir, gpu, version });
  }
  const pinned = pinnedRelease(platform).nodeLlamaCpp;
  const release = found.some((p) => p.version === pinned)
    ? pinned
    : ENGINE_RELEASES.find((r) => found.some((p) => p.version === r.nodeLlamaCpp))?.nodeLlamaCpp;
  found = found.filter((p) => p.version === release);
  return found;
}

/**
 * The prebuilt packages the engine loads: those in QTUNE_ENGINE_PACKAGES, a folder where npm installed
 * `@node-llama-cpp/*` packages (`npm install --prefix DIR ...`), when it is set — how CI runs a subset
 * of the suite on 3.21.1 beside the installed 3.22.1 — else those installed with qtune. A folder that
 * holds none of a known release is an error naming it. It implies the prebuilt engine.
 */
export function enginePackages(): PrebuiltPackage[] {
  const dir = process.env['QTUNE_ENGINE_PACKAGES'];
  if (dir === undefined || dir === '') return findPrebuiltPackages();
  if (process.env['QTUNE_ENGINE'] === 'native') {
    throw new QtuneError(
      'INVALID_ARGUMENT',
      `QTUNE_ENGINE_PACKAGES=${dir} names prebuilt packages, but QTUNE_ENGINE=native`,
      { hint: 'unset one of them: a native build loads no packages' },
    );
  }
  const root = path.resolve(dir);
  const names = prebuiltPackageNames().map((p) => p.name);
  // only the folder's own node_modules (maybe links): resolving from it would also look in its parents
  const packages = findPrebuiltPackages(
    process.platform,
    process.arch,
    path.join(root, 'package.json'),
  ).filter((p) => existsSync(path.join(root, 'node_modules', p.name)));
  if (packages.length === 0) {
    const known = ENGINE_RELEASES.map((r) => r.nodeLlamaCpp).join(' or ');
    throw new QtuneError(
      'INVALID_ARGUMENT',
      `QTUNE_ENGINE_PACKAGES=${dir} holds none of ${names.join(', ')} at release ${known}`,
      {
        hint: `install one there: npm install --no-save --prefix ${dir} ${names[0]!}@${pinnedRelease().nodeLlamaCpp}`,
      },
    );
  }
  return packages;
}

/** The GPU backend library (`libggml-vulkan.so`, `libggml-metal.so`, `ggml-cuda.dll`) of each GPU package that has one. */
export function gpuBackendFiles(
  packages: PrebuiltPackage[],
  platform: NodeJS.Platform = process.platform,
): { kind: GpuKind; package: string; path: string }[] {
  const { prefix, moduleExt } = libNaming(platform);
  const found: { kind: GpuKind; package: string; path: string }[] = [];
  for (const pkg of packages) {
    if (pkg.gpu === null) continue;
    const file = path.join(pkg.dir, `${prefix}ggml-${pkg.gpu}${moduleExt}`);
    if (existsSync(file)) found.push({ kind: pkg.gpu, package: pkg.name, path: file });
  }
  return found;
}

/** The files of one prebuilt engine: what the loader opens, in order, before any `dlopen`. */
export interface PrebuiltFiles {
  /** The package holding libggml-base and the registry: the CPU-only one where there is one. */
  primary: PrebuiltPackage;
  base: string;
  registry: string;
  /** Every CPU variant (`haswell`, `apple_m1`, `armv8.2_1`, ...), sorted by file name. */
  cpuVariants: { variant: string; path: string }[];
  /** The GPU backend library of each installed GPU package that has one. */
  gpuBackends: { kind: GpuKind; package: string; path: string }[];
}

/**
 * Finds the libraries of the installed prebuilt packages for a platform by their file names (no
 * library is opened). Throws ENGINE_NOT_FOUND when no package is installed and ENGINE_LOAD when one
 * lacks libggml-base or the registry.
 */
export function prebuiltFiles(
  packages: PrebuiltPackage[],
  platform: NodeJS.Platform = process.platform,
  arch: string = process.arch,
): PrebuiltFiles {
  const { prefix, ext, moduleExt } = libNaming(platform);
  // every prebuilt package carries libggml-base, the registry and the CPU variants: prefer the CPU-only one
  const primary = packages.find((p) => p.gpu === null) ?? packages[0];
  if (primary === undefined) {
    const cpuPackage = prebuiltPackageNames(platform, arch)[0]!.name;
    const pinned = pinnedRelease(platform).nodeLlamaCpp;
    throw new QtuneError(
      'ENGINE_NOT_FOUND',
      `no ggml engine found: none of the @node-llama-cpp/* ${pinned} packages for ${platform}-${arch} is installed`,
      {
        hint: `run \`npm install ${cpuPackage}@${pinned}\`, or build one with \`npx qtune engine build\``,
      },
    );
  }
  const files = readdirSync(primary.dir).sort();
  const base = `${prefix}ggml-base${ext}`;
  // libggml.v0.4.0.so, libggml.metal.v0.4.0.dylib, ggml.v0.4.0.dll
  const registry = files.find((f) => /^(lib)?ggml\.[a-z0-9.]*v\d/.test(f) && f.endsWith(ext));
  if (!files.includes(base) || registry === undefined) {
    throw new QtuneError(
      'ENGINE_LOAD',
      `${primary.name} has no ${files.includes(base) ? 'ggml registry library' : base} in ${primary.dir}`,
      { hint: `reinstall it: npm install ${primary.name}@${primary.version}` },
    );
  }
  const cpuPrefix = `${prefix}ggml-cpu`;
  const cpuVariants = files
    .filter((f) => f.startsWith(cpuPrefix) && f.endsWith(moduleExt))
    .map((f) => ({
      variant: f.slice(cpuPrefix.length + 1, -moduleExt.length) || 'default',
      path: path.join(primary.dir, f),
    }));
  const gpuBackends = gpuBackendFiles(packages, platform);
  return {
    primary,
    base: path.join(primary.dir, base),
    registry: path.join(primary.dir, registry),
    cpuVariants,
    gpuBackends,
  };
}

function readPackageVersion(root: string): string | undefined {
  try {
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version?: string };
    return pkg.version;
  } catch {
    return undefined;
  }
}

/** qtune's cache root: QTUNE_CACHE_DIR, else $XDG_CACHE_HOME/qtune, else ~/.cache/qtune. */
export function cacheRoot(): string {
  const env = process.env['QTUNE_CACHE_DIR'];
  if (env) return path.resolve(env);
  const xdg = process.env['XDG_CACHE_HOME'];
  return path.join(xdg ? xdg : path.join(os.homedir(), '.cache'), 'qtune');
}

/** What identifies the CPU for a native build: model name and feature flags. */
export function cpuIdentity(): { model: string; flags: string[]; key: string } {
  let model = os.cpus()[0]?.model ?? 'unknown';
  let flags: string[] = [];
  if (process.platform === 'linux') {
    try {
      const info = readFileSync('/proc/cpuinfo', 'utf8');
      const flagLine = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(info);
      if (flagLine?.[1]) flags = flagLine[1].trim().split(/\s+/).sort();
      const modelLine = /^model name\s*:\s*(.*)$/m.exec(info);
      if (modelLine?.[1]) model = modelLine[1].trim();
      const family = /^cpu family\s*:\s*(.*)$/m.exec(info)?.[1];
      const modelNo = /^model\s*:\s*(.*)$/m.exec(info)?.[1];
      if (family !== undefined && modelNo !== undefined)
        model += ` (family ${family.trim()}, model ${modelNo.trim()})`;
    } catch {
      // keep os.cpus()
    }
  }
  const key = createHash('sha256')
    .update(`${process.arch}|${model}|${flags.join(' ')}`)
    .digest('hex')
    .slice(0, 12);
  return { model, flags, key };
}

/** Folder of the native build for this CPU. A build for another CPU may use instructions this one lacks. */
export function nativeEngineDir(): string {
  return path.join(
    cacheRoot(),
    'engine',
    `ggml-${GGML_VERSION}-${process.platform}-${process.arch}-${cpuIdentity().key}`,
  );
}

/** Number of physical cores (not hardware threads): more threads than cores slows small graphs (DESIGN.md §1). */
export function physicalCores(): number {
  if (process.platform === 'linux') {
    try {
      const info = readFileSync('/proc/cpuinfo', 'utf8');
      const cores = new Set<string>();
      let phys = '0';
      for (const line of info.split('\n')) {
        const [k, v] = line.split(':').map((s) => s.trim());
        if (k === 'physical id') phys = v ?? '0';
        if (k === 'core id') cores.add(`${phys}:${v ?? ''}`);
      }
      if (cores.size > 0) return Math.min(cores.size, os.availableParallelism());
    } catch {
      // fall through
    }
  }
  return os.availableParallelism();
}

/** This platform's shared library extension and prefix (see {@link libNaming}). */
export const LIB_EXT = libNaming().ext;
export const LIB_PREFIX = libNaming().prefix;
