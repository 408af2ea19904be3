/**
 * macOS and Windows (and Linux on arm64) as far as a Linux machine can check them: npm installs
 * qtune's own optionalDependencies with `--os`/`--cpu` of that platform into a temporary folder, and
 * the loader's file discovery (`findPrebuiltPackages` and `prebuiltFiles`, the code `loadEngine`
 * runs on the real OS up to the first `dlopen`) runs on the files npm put there. Also the native
 * build's flags and file names on those platforms.
 *
 * The packages come from the npm registry (about 30 MB, once: the folder is kept in the temporary
 * directory per release); without the registry the discovery tests skip, saying so.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, readSync, closeSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { buildLibraries, cmakeFlags } from '../../src/engine/native-build.js';
import {
  findPrebuiltPackages,
  libNaming,
  pinnedRelease,
  prebuiltFiles,
  prebuiltPackageNames,
} from '../../src/engine/paths.js';
import { QtuneError } from '../../src/errors.js';
import { ROOT } from '../helpers/cli.js';

interface Platform {
  os: NodeJS.Platform;
  cpu: string;
  /** The packages npm installs there from qtune's optionalDependencies. */
  installed: string[];
  /** The package the loader takes libggml-base and the registry from. */
  primary: string;
  base: string;
  registry: string;
  /** CPU variants that must be among those found. */
  variants: string[];
  gpu: string[];
  /** The first bytes of a library of that platform. */
  magic: Buffer[];
}

const MACHO = [Buffer.from([0xcf, 0xfa, 0xed, 0xfe]), Buffer.from([0xca, 0xfe, 0xba, 0xbe])]; // 64-bit, universal
// macOS and Windows are pinned to 3.21.1 (llama.cpp v0.4.0), Linux to 3.22.1 (v0.5.0)
const tag = pinnedRelease('darwin').llamaCppTag;
const linuxTag = pinnedRelease('linux').llamaCppTag;
const PLATFORMS: Platform[] = [
  {
    os: 'darwin',
    cpu: 'arm64',
    installed: ['@node-llama-cpp/mac-arm64-metal'],
    primary: '@node-llama-cpp/mac-arm64-metal',
    base: 'libggml-base.dylib',
    registry: `libggml.metal.${tag}.dylib`,
    variants: ['apple_m1', 'apple_m2_m3', 'apple_m4'],
    gpu: ['metal'],
    magic: MACHO,
  },
  {
    os: 'darwin',
    cpu: 'x64',
    // mac-arm64-metal declares cpu [arm64, x64], so npm installs it on Intel Macs too; the loader
    // there looks only at mac-x64
    installed: ['@node-llama-cpp/mac-arm64-metal', '@node-llama-cpp/mac-x64'],
    primary: '@node-llama-cpp/mac-x64',
    base: 'libggml-base.dylib',
    registry: `libggml.${tag}.dylib`,
    variants: ['haswell', 'x64'],
    gpu: [],
    magic: MACHO,
  },
  {
    os: 'win32',
    cpu: 'x64',
    installed: ['@node-llama-cpp/win-x64'],
    primary: '@node-llama-cpp/win-x64',
    base: 'ggml-base.dll',
    registry: `ggml.${tag}.dll`,
    variants: ['haswell', 'x64'],
    gpu: [],
    magic: [Buffer.from('MZ')],
  },
  {
    os: 'linux',
    cpu: 'arm64',
    installed: ['@node-llama-cpp/linux-arm64'],
    primary: '@node-llama-cpp/linux-arm64',
    base: 'libggml-base.so',
    registry: `libggml.${linuxTag}.so`,
    variants: ['armv8.0_1', 'armv8.2_1'],
    gpu: [],
    magic: [Buffer.from([0x7f, 0x45, 0x4c, 0x46])],
  },
];

const optionalDependencies = (
  JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
    optionalDependencies: Record<string, string>;
  }
).optionalDependencies;

/** npm's install for a platform, kept per release; the reason it could not be made otherwise. */
function installFor(p: Platform): { dir: string } | { skip: string } {
  const dir = path.join(os.tmpdir(), 'qtune-platform-packages', `${p.os}-${p.cpu}`);
  const deps = JSON.stringify(optionalDependencies);
  const manifest = path.join(dir, 'package.json');
  const done = path.join(dir, 'installed.json');
  if (existsSync(done) && readFileSync(done, 'utf8') === deps) return { dir };
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    manifest,
    JSON.stringify({ name: 'qtune-platform-probe', private: true, optionalDependencies }),
  );
  const r = spawnSync(
    'npm',
    [
      'install',
      `--os=${p.os}`,
      `--cpu=${p.cpu}`,
      '--ignore-scripts',
      '--no-package-lock',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
    ],
    { cwd: dir, encoding: 'utf8', timeout: 180_000, shell: process.platform === 'win32' },
  );
  if (r.error !== undefined || r.status !== 0) {
    const why = (r.error?.message ?? r.stderr.trim().split('\n').pop() ?? '').slice(0, 200);
    return { skip: `npm install --os=${p.os} --cpu=${p.cpu} failed (no npm registry?): ${why}` };
  }
  writeFileSync(done, deps);
  return { dir };
}

function head(file: string, n: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(n);
    readSync(fd, b, 0, n, 0);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe("the prebuilt engine of every platform, from npm's install of qtune's optional dependencies", () => {
  it("qtune names a CPU package of each platform's pinned release", () => {
    for (const p of PLATFORMS)
      assert.equal(
        optionalDependencies[p.primary],
        pinnedRelease(p.os).nodeLlamaCpp,
        `${p.primary} in optionalDependencies`,
      );
    assert.equal(optionalDependencies['@node-llama-cpp/linux-x64'], pinnedRelease('linux').nodeLlamaCpp);
  });

  for (const p of PLATFORMS) {
    const got = installFor(p);
    const skip = 'skip' in got ? got.skip : false;
    if (skip !== false) console.log(`# skipping ${p.os}-${p.cpu}: ${skip}`);
    it(`${p.os}-${p.cpu}: npm installs ${p.primary}, and the loader finds its libraries`, { skip }, () => {
      const dir = (got as { dir: string }).dir;
      const installed = prebuiltPackageNames(p.os, p.cpu)
        .map((n) => n.name)
        .concat(Object.keys(optionalDependencies))
        .filter((n, i, all) => all.indexOf(n) === i)
        .filter((n) => existsSync(path.join(dir, 'node_modules', n, 'package.json')))
        .sort();
      assert.deepEqual(installed, [...p.installed].sort());

      const packages = findPrebuiltPackages(p.os, p.cpu, path.join(dir, 'package.json'));
      const files = prebuiltFiles(packages, p.os, p.cpu);
      assert.equal(files.primary.name, p.primary);
      assert.equal(files.primary.version, pinnedRelease(p.os).nodeLlamaCpp);
      assert.equal(path.basename(files.base), p.base);
      assert.equal(path.basename(files.registry), p.registry);
      const variants = files.cpuVariants.map((v) => v.variant);
      for (const v of p.variants) assert.ok(variants.includes(v), `${v} among ${variants.join(', ')}`);
      const { moduleExt } = libNaming(p.os);
      for (const v of files.cpuVariants) assert.ok(v.path.endsWith(moduleExt) && existsSync(v.path), v.path);
      assert.deepEqual(
        files.gpuBackends.map((g) => g.kind),
        p.gpu,
      );
      // the files are that platform's libraries (Mach-O, PE, ELF), not another's
      for (const f of [
        files.base,
        files.registry,
        files.cpuVariants[0]!.path,
        ...files.gpuBackends.map((g) => g.path),
      ]) {
        const h = head(f, 4);
        assert.ok(
          p.magic.some((m) => h.subarray(0, m.length).equals(m)),
          `${f} starts with ${h.toString('hex')}`,
        );
      }
    });
  }

  it('a platform with no package installed is one typed error naming the package to install', () => {
    assert.throws(
      () => prebuiltFiles([], 'darwin', 'arm64'),
      (e) =>
        e instanceof QtuneError &&
        e.code === 'ENGINE_NOT_FOUND' &&
        (e.hint ?? '').includes(`@node-llama-cpp/mac-arm64-metal@${pinnedRelease('darwin').nodeLlamaCpp}`),
    );
  });
});

describe('the native build on macOS and Windows', () => {
  it('macOS: Metal on (shaders embedded, run path beside the library), no CUDA, .dylib files', () => {
    const flags = cmakeFlags({ platform: 'darwin' });
    for (const f of ['-DGGML_METAL=ON', '-DGGML_METAL_EMBED_LIBRARY=ON', '-DCMAKE_BUILD_RPATH=@loader_path'])
      assert.ok(flags.includes(f), `${f} in ${flags.join(' ')}`);
    assert.deepEqual(buildLibraries(false, 'darwin'), [
      'libggml-base.dylib',
      'libggml.dylib',
      'libggml-cpu.dylib',
      'libggml-metal.dylib',
    ]);
    assert.throws(
      () => cmakeFlags({ platform: 'darwin', cuda: true }),
      (e) => e instanceof QtuneError && e.code === 'INVALID_ARGUMENT',
    );
  });

  it('Windows: no lib prefix, .dll; Linux keeps its flags', () => {
    assert.deepEqual(buildLibraries(false, 'win32'), ['ggml-base.dll', 'ggml.dll', 'ggml-cpu.dll']);
    assert.ok(!cmakeFlags({ platform: 'linux' }).some((f) => f.includes('METAL')));
  });
});
