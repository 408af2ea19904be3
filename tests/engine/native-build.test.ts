/**
 * The opt-in native engine: `qtune engine build` compiles ggml's CPU backend from the llama.cpp
 * source bundled in node-llama-cpp, into the cache; qtune then prefers it, and it computes what the
 * prebuilt engine computes. Builds into a temporary QTUNE_CACHE_DIR (about a minute on 2 cores).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { qtune } from '../helpers/cli.js';
import { spawnSync } from 'node:child_process';

const missing = ['git', 'cmake', 'c++'].filter((tool) => spawnSync(tool, ['--version']).status !== 0);
const skip =
  missing.length > 0 ? `the native build needs ${missing.join(', ')} (apt-get install git cmake g++)` : false;

describe('native engine build', { skip }, () => {
  const cache = mkdtempSync(path.join(os.tmpdir(), 'qtune-native-'));
  const env = { QTUNE_CACHE_DIR: cache };
  after(() => rmSync(cache, { recursive: true, force: true }));

  it('builds, is preferred, and reports itself in engine info', () => {
    const build = qtune(['engine', 'build'], env, 15 * 60_000);
    assert.equal(build.code, 0, build.stdout + build.stderr);
    assert.match(build.stdout, /built the native engine in \d+ s/);
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
