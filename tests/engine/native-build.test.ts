/**
 * The native engine: the first computing command on a machine (here `qtune demo`) compiles ggml's
 * CPU backend from the llama.cpp source bundled in node-llama-cpp into the cache, once; qtune then
 * prefers it, and it computes what the prebuilt engine computes. Without the tools, after a failed
 * build, or while another process builds, the prebuilt engine runs and one line says why. Builds into
 * a temporary QTUNE_CACHE_DIR (1–3 minutes on 2 cores). QTUNE_ENGINE is set to '' here: the test
 * runner sets it to prebuilt for every other test, so that no other test builds; QTUNE_CPU_VARIANT
 * is cleared too (a chosen prebuilt variant implies the prebuilt engine).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { qtune } from '../helpers/cli.js';
import { spawnSync } from 'node:child_process';

const missing = ['git', 'cmake', 'c++'].filter((tool) => spawnSync(tool, ['--version']).status !== 0);
const skip =
  missing.length > 0 ? `the native build needs ${missing.join(', ')} (apt-get install git cmake g++)` : false;

/** The stderr lines qtune's automatic engine choice printed. */
function engineLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.startsWith('qtune: ') && /engine/.test(l));
}

/** Where a native build for this CPU goes under `cache` (from `qtune engine info`). */
function nativeDirUnder(cache: string): string {
  const text = qtune(['engine', 'info'], {
    QTUNE_CACHE_DIR: cache,
    QTUNE_ENGINE: '',
    QTUNE_CPU_VARIANT: '',
  }).stdout;
  const m = /`qtune engine build` writes (\S+)\)/.exec(text);
  assert.ok(m !== null, text);
  return m[1]!;
}

describe('the prebuilt engine when no native one can be built', () => {
  const cache = mkdtempSync(path.join(os.tmpdir(), 'qtune-native-fallback-'));
  after(() => rmSync(cache, { recursive: true, force: true }));

  it('without git, cmake and a compiler: one line, and the command runs', () => {
    const env = { QTUNE_CACHE_DIR: cache, QTUNE_ENGINE: '', QTUNE_CPU_VARIANT: '', PATH: '/nonexistent' };
    const r = qtune(['demo', '--steps', '2'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(engineLines(r.stderr), [
      'qtune: using the prebuilt CPU engine: building the faster native one needs git, cmake, c++ (Debian/Ubuntu: apt-get install git cmake g++); QTUNE_ENGINE=prebuilt silences this',
    ]);
  });

  it('a mistake in the flags fails at once, before any build', () => {
    const r = qtune(['demo', '--steps=-3'], {
      QTUNE_CACHE_DIR: cache,
      QTUNE_ENGINE: '',
      QTUNE_CPU_VARIANT: '',
    });
    assert.equal(r.code, 2, r.stderr);
    assert.deepEqual(engineLines(r.stderr), []);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });

  it('while another process builds, this run uses the prebuilt engine', { skip }, () => {
    const lock = `${nativeDirUnder(cache)}.lock`;
    mkdirSync(lock, { recursive: true });
    try {
      const r = qtune(['demo', '--steps', '2'], {
        QTUNE_CACHE_DIR: cache,
        QTUNE_ENGINE: '',
        QTUNE_CPU_VARIANT: '',
      });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(engineLines(r.stderr), [
        'qtune: another qtune process is building the native CPU engine; this run uses the prebuilt one',
      ]);
    } finally {
      rmSync(lock, { recursive: true, force: true });
    }
  });

  it('a failed build is said once, remembered, and not retried until `engine build`', { skip }, () => {
    const env = {
      QTUNE_CACHE_DIR: cache,
      QTUNE_ENGINE: '',
      QTUNE_CPU_VARIANT: '',
      QTUNE_LLAMA_CPP_SOURCE: '/nonexistent-llama',
    };
    const first = qtune(['demo', '--steps', '2'], env);
    assert.equal(first.code, 0, first.stderr);
    const lines = engineLines(first.stderr);
    assert.equal(lines.length, 2, first.stderr); // "building …" then the failure
    assert.match(
      lines[1]!,
      /^qtune: using the prebuilt CPU engine: the native build failed \(.*nonexistent-llama/,
    );
    const second = qtune(['demo', '--steps', '2'], env);
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(engineLines(second.stderr).length, 1);
    assert.match(engineLines(second.stderr)[0]!, /the native build failed before \(/);
    // an explicit choice prints nothing
    const quiet = qtune(['demo', '--steps', '2'], { ...env, QTUNE_ENGINE: 'prebuilt' });
    assert.deepEqual(engineLines(quiet.stderr), []);
    assert.equal(qtune(['engine', 'build', '--clean'], env).code, 0);
  });
});

describe('native engine build', { skip }, () => {
  const cache = mkdtempSync(path.join(os.tmpdir(), 'qtune-native-'));
  const env = { QTUNE_CACHE_DIR: cache, QTUNE_ENGINE: '', QTUNE_CPU_VARIANT: '' };
  after(() => rmSync(cache, { recursive: true, force: true }));

  it('the first computing command builds it, once; then it is preferred and in engine info', () => {
    const first = qtune(['demo', '--steps', '2'], env, 15 * 60_000);
    assert.equal(first.code, 0, first.stdout + first.stderr);
    const lines = engineLines(first.stderr);
    assert.match(lines[0]!, /^qtune: building the native CPU engine for this CPU, once/);
    assert.match(lines.at(-1)!, /^qtune: native engine ready \(\d+ s\)/);
    const second = qtune(['demo', '--steps', '2'], env);
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual(engineLines(second.stderr), []);
    const info = JSON.parse(qtune(['engine', 'info', '--json'], env).stdout) as {
      kind: string;
      cpuVariant: string;
      ggmlVersion: string;
      path: string;
    };
    assert.equal(info.kind, 'native');
    assert.equal(info.cpuVariant, 'native');
    assert.equal(info.ggmlVersion, '0.25.1');
    assert.ok(info.path.startsWith(cache));
    const again = qtune(['engine', 'build'], env);
    assert.match(again.stdout, /already exists/);
    const prebuilt = JSON.parse(
      qtune(['engine', 'info', '--json'], { ...env, QTUNE_ENGINE: 'prebuilt' }).stdout,
    ) as { kind: string };
    assert.equal(prebuilt.kind, 'prebuilt');
  });

  it('computes the same as the prebuilt engine, with the GPU backends still loaded beside it', () => {
    const script = `
      import { Graph, TensorStore, linear, softmax, rmsNorm } from './dist/src/tensor/index.js';
      import { cpuBackend, listDevices } from './dist/src/engine/device.js';
      const be = cpuBackend();
      const x = TensorStore.from(be, Float32Array.from({ length: 64 * 32 }, (_, i) => Math.sin(i)), [64, 32]);
      const w = TensorStore.from(be, Float32Array.from({ length: 16 * 32 }, (_, i) => Math.cos(i) / 8), [16, 32], { dtype: 'q8_0' });
      const g = new Graph(be);
      const y = g.output(g.build(() => softmax(linear(rmsNorm(x, 1e-5), w))));
      g.compile(); g.run();
      console.log(JSON.stringify({ y: Array.from(g.read(y)), devices: listDevices().map((d) => d.name) }));
    `;
    const run = (engine: string) => {
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
        cwd: path.resolve(import.meta.dirname, '../../..'),
        env: { ...process.env, ...env, QTUNE_ENGINE: engine },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as { y: number[]; devices: string[] };
    };
    const native = run('native');
    const prebuilt = run('prebuilt');
    assert.deepEqual(native.devices, prebuilt.devices);
    let err = 0;
    native.y.forEach((v, i) => (err = Math.max(err, Math.abs(v - prebuilt.y[i]!))));
    assert.ok(err < 1e-5, `native and prebuilt differ by ${err}`);
  });

  it('engine build --clean removes it', () => {
    const r = qtune(['engine', 'build', '--clean'], env);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /removed/);
    assert.equal(
      (JSON.parse(qtune(['engine', 'info', '--json'], env).stdout) as { kind: string }).kind,
      'prebuilt',
    );
  });
});
