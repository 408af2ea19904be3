/**
 * Where the ggml libraries are: the pinned prebuilt packages in node_modules, and the optional native
 * build in qtune's cache folder.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';

/** The pinned release. Headers (the declarations in ggml.ts) and binaries must match it. */
export const NODE_LLAMA_CPP_VERSION = '3.22.1';
export const LLAMA_CPP_TAG = 'v0.5.0';
export const GGML_VERSION = '0.25.1';

export type GpuKind = 'vulkan' | 'cuda' | 'metal';

export interface PrebuiltPackage {
  /** npm package name, e.g. `@node-llama-cpp/linux-x64-vulkan`. */
  name: string;
  /** Folder holding the shared libraries. */
  dir: string;
  gpu: GpuKind | null;
}

/** The package names for this platform: the CPU one first, then the GPU ones. */
export function prebuiltPackageNames(
  platform = process.platform,
  arch = process.arch,
): { name: string; gpu: GpuKind | null }[] {
  const p = platform === 'win32' ? 'win' : platform === 'darwin' ? 'mac' : platform;
  const base = `${p}-${arch}`;
  const names: { name: string; gpu: GpuKind | null }[] = [{ name: `@node-llama-cpp/${base}`, gpu: null }];
  if (platform === 'darwin' && arch === 'arm64')
    names.push({ name: '@node-llama-cpp/mac-arm64-metal', gpu: 'metal' });
  if (platform !== 'darwin') {
    names.push({ name: `@node-llama-cpp/${base}-vulkan`, gpu: 'vulkan' });
    names.push({ name: `@node-llama-cpp/${base}-cuda`, gpu: 'cuda' });
  }
  return names;
}

/** The prebuilt packages that are installed, found the way Node resolves them from qtune's folder. */
export function findPrebuiltPackages(): PrebuiltPackage[] {
  const require = createRequire(import.meta.url);
  const found: PrebuiltPackage[] = [];
  for (const { name, gpu } of prebuiltPackageNames()) {
    let entry: string;
    try {
      entry = require.resolve(name);
    } catch {
      continue;
    }
    const root = path.dirname(path.dirname(entry)); // <root>/dist/index.js
    const dir = path.join(root, 'bins', name.slice('@node-llama-cpp/'.length));
    const version = readPackageVersion(root);
    if (version !== NODE_LLAMA_CPP_VERSION) continue; // headers would not match
    if (existsSync(dir)) found.push({ name, dir, gpu });
  }
  return found;
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

export const LIB_EXT =
  process.platform === 'win32' ? '.dll' : process.platform === 'darwin' ? '.dylib' : '.so';
export const LIB_PREFIX = process.platform === 'win32' ? '' : 'lib';
