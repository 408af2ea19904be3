/**
 * Native memory is freed deterministically: 1,000 small training steps leave the live native bytes
 * (every ggml buffer qtune owns) and the process RSS flat, both for one graph run many times (the
 * trainer's path) and for a graph built, run and disposed at every step.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { cpuBackend } from '../../src/engine/device.js';
import { nativeMemory } from '../../src/engine/memory.js';
import { AdamW } from '../../src/optim/adamw.js';
import { Graph, TensorStore, crossEntropy, linear, silu } from '../../src/tensor/index.js';
import { normals, rng } from '../helpers/ref.js';

const MB = 1024 * 1024;

function setup() {
  const backend = cpuBackend();
  // one thread: this checks memory, and test files run two at a time on two cores, where a second
  // spinning compute thread only waits for a core
  backend.setThreads(1);
  const rand = rng(3);
  const store = TensorStore.create(backend, [
    { name: 'w1', shape: [64, 32], dtype: 'q8_0' },
    { name: 'w2', shape: [8, 64], dtype: 'f32', requiresGrad: true },
  ]);
  store.write(store.get('w1'), Float32Array.from(normals(64 * 32, rand, 0.2)));
  store.write(store.get('w2'), Float32Array.from(normals(8 * 64, rand, 0.1)));
  const x = Float32Array.from(normals(16 * 32, rand));
  const y = Int32Array.from({ length: 16 }, (_, i) => i % 8);
  return { backend, store, x, y };
}

function buildStep(s: ReturnType<typeof setup>, opt: AdamW) {
  const g = new Graph(s.backend, { maxNodes: 1024 });
  const x = g.input([16, 32]);
  const labels = g.input([16], 'i32');
  const loss = crossEntropy(linear(silu(linear(x, s.store.get('w1'))), s.store.get('w2')), labels);
  opt.build(g, g.backward(loss));
  const out = g.output(loss);
  g.compile();
  g.set(x, s.x);
  g.set(labels, s.y);
  return { g, out };
}

// V8's heap grows over the first thousand graph builds (measured: ~27 MB of heapTotal) and its
// young generation swings RSS by ±17 MB between collections: a full collection before each reading
// leaves the native memory, which is what these tests watch
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function rss(): number {
  gc();
  return process.memoryUsage().rss;
}

describe('native memory stays flat', () => {
  it('over 1,000 steps of one compiled graph', () => {
    const s = setup();
    const opt = new AdamW(s.backend, [s.store.get('w2')], { lr: 1e-3 });
    const { g, out } = buildStep(s, opt);
    for (let i = 0; i < 50; i++) g.run();
    const native0 = nativeMemory().total;
    const rss0 = rss();
    let last = 0;
    for (let i = 0; i < 1000; i++) {
      g.run();
      last = g.read(out)[0]!;
    }
    assert.ok(Number.isFinite(last));
    assert.equal(nativeMemory().total, native0, 'live native bytes changed while running');
    const grew = (rss() - rss0) / MB;
    assert.ok(grew < 16, `RSS grew by ${grew.toFixed(1)} MB over 1,000 steps`);
    g.dispose();
    opt.dispose();
    s.store.dispose();
  });

  it('over 1,000 steps that each build, run and dispose a graph', () => {
    const before = nativeMemory();
    const s = setup();
    const opt = new AdamW(s.backend, [s.store.get('w2')], { lr: 1e-3 });
    const step = () => {
      const { g, out } = buildStep(s, opt);
      g.run();
      const v = g.read(out)[0]!;
      g.dispose();
      return v;
    };
    // the first thousand builds also grow V8's heap to its working size (~27 MB, measured)
    for (let i = 0; i < 1000; i++) step();
    const native0 = nativeMemory();
    const rss0 = rss();
    for (let i = 0; i < 1000; i++) step();
    const native1 = nativeMemory();
    assert.equal(native1.total, native0.total, 'live native bytes changed');
    assert.equal(native1.contexts, native0.contexts, 'ggml contexts leaked');
    const grew = (rss() - rss0) / MB;
    assert.ok(grew < 16, `RSS grew by ${grew.toFixed(1)} MB over 1,000 graph builds`);
    opt.dispose();
    s.store.dispose();
    const after = nativeMemory();
    assert.equal(after.total, before.total, 'disposing the stores did not return every byte');
    assert.equal(after.buffers, before.buffers);
  });
});
