/**
 * A graph over several devices refuses, with typed errors, what ggml's scheduler would abort the
 * process on: a write into a stored tensor whose device cannot run it, and a stored tensor from a
 * device the graph does not span. The test process surviving is part of the check. (Numbers of
 * graphs that do run over several devices: tests/train/multi-device.test.ts.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { QtuneError, UnsupportedOpError } from '../../src/errors.js';
import { Graph, TensorStore, add, linear } from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';

const vulkan = testDevices().devices.find((d) => d.name.startsWith('Vulkan'))?.backend;
const skip =
  vulkan === undefined &&
  'no Vulkan device (see tests/helpers/devices.ts): a graph over two devices needs two';

describe('a graph over several devices', () => {
  it('lists its devices with the CPU last, and adds the CPU when it is missing', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    const g = new Graph([cpuBackend(), vulkan]);
    const h = new Graph([vulkan]);
    try {
      assert.deepEqual(
        g.backends.map((b) => b.name),
        [vulkan.name, 'CPU'],
      );
      assert.ok(g.isMultiDevice && g.holds(cpuBackend()));
      assert.ok(!h.isMultiDevice, 'one device: no scheduler');
    } finally {
      g.dispose();
      h.dispose();
    }
  });

  it('refuses a write into a tensor whose device cannot run the copy', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    // ggml-vulkan cannot convert f32 to q4_K; the CPU can, but the target lives on Vulkan
    const store = TensorStore.create(vulkan, [{ name: 'w', shape: [1, 256], dtype: 'q4_K' }]);
    const g = new Graph([vulkan, cpuBackend()]);
    try {
      const x = g.input([1, 256]);
      g.assign(
        store.get('w'),
        g.build(() => add(x, x)),
      );
      assert.throws(
        () => g.compile(),
        (e: unknown) =>
          e instanceof UnsupportedOpError &&
          e.message.includes(`${vulkan.name} cannot run CPY`) &&
          e.message.includes('writes into a tensor stored there'),
      );
    } finally {
      g.dispose();
      store.dispose();
    }
  });

  it('refuses a stored tensor from a device it does not span', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    const store = TensorStore.create(vulkan, [{ name: 'w', shape: [4, 8], dtype: 'f32' }]);
    const g = new Graph(cpuBackend());
    try {
      const x = g.input([2, 8]);
      assert.throws(
        () => linear(x, store.get('w')),
        (e: unknown) =>
          e instanceof QtuneError && e.code === 'GRAPH' && e.message.includes(`lives on ${vulkan.name}`),
      );
    } finally {
      g.dispose();
      store.dispose();
    }
  });
});
