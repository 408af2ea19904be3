/**
 * Planning where a split model's blocks go (src/models/device-map.ts), on the real CPU and Vulkan
 * devices: explicit maps and proportions, and the plan by budget, whose budgets are pinned with
 * max_memory caps so that the expected placements are known in advance.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { cpuBackend, type Backend } from '../../src/engine/device.js';
import { setMemoryLimit } from '../../src/engine/memory.js';
import { ConfigError, OutOfMemoryError } from '../../src/errors.js';
import { describeDeviceMap, planDeviceMap } from '../../src/models/device-map.js';
import { testDevices } from '../helpers/devices.js';

const MiB = 2 ** 20;
const vulkan = testDevices().devices.find((d) => d.name.startsWith('Vulkan'))?.backend;
const skip =
  vulkan === undefined && 'no Vulkan device (see tests/helpers/devices.ts); a split needs two real devices';

/** Four blocks of 1 MiB each and a head group of 2 MiB. */
const sizes = (group: string) => (group === 'model' ? 2 * MiB : MiB);
const names = (bs: readonly Backend[]) => bs.map((b) => b.name);

describe('device map', () => {
  afterEach(() => {
    if (vulkan !== undefined) setMemoryLimit(vulkan.name, null);
    setMemoryLimit('CPU', null);
  });

  it('layer_split shares the blocks in proportion and puts the head with the last block', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    const cpu = cpuBackend();
    const map = planDeviceMap(4, sizes, { devices: [vulkan, cpu], layerSplit: [3, 1] });
    assert.deepEqual(names(map.blocks), [vulkan.name, vulkan.name, vulkan.name, 'CPU']);
    assert.equal(map.model, cpu);
    const even = planDeviceMap(4, sizes, { devices: [cpu, vulkan], layerSplit: [1, 1] });
    assert.deepEqual(names(even.blocks), ['CPU', 'CPU', vulkan.name, vulkan.name]);
    assert.equal(even.model, vulkan);
    assert.deepEqual(describeDeviceMap(even), [
      'CPU: blocks 0-1',
      `${vulkan.name}: blocks 2-3; embeddings, final norm, LM head`,
    ]);
  });

  it('device_map places every block as given', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    const cpu = cpuBackend();
    const map = planDeviceMap(4, sizes, { devices: [vulkan, cpu], deviceMap: [cpu, vulkan, vulkan, cpu] });
    assert.deepEqual(names(map.blocks), ['CPU', vulkan.name, vulkan.name, 'CPU']);
    assert.equal(map.model, cpu);
    assert.deepEqual(describeDeviceMap(map), [
      `CPU: blocks 0, 3; embeddings, final norm, LM head`,
      `${vulkan.name}: blocks 1-2`,
    ]);
  });

  it(
    'by budget: the accelerator takes what fits in 80% of its max_memory, the CPU the rest',
    { skip },
    () => {
      if (vulkan === undefined) return; // skipped
      const cpu = cpuBackend();
      // 80% of 3 MiB holds two 1 MiB blocks (a block goes where its middle stays within the target)
      setMemoryLimit(vulkan.name, 3 * MiB);
      const map = planDeviceMap(4, sizes, { devices: [vulkan, cpu] });
      assert.deepEqual(names(map.blocks), [vulkan.name, vulkan.name, 'CPU', 'CPU']);
      assert.equal(map.model, cpu);
      // listed first, the CPU takes the first 4 MiB (the overflow); the 2 MiB head fits the accelerator
      const reversed = planDeviceMap(4, sizes, { devices: [cpu, vulkan] });
      assert.deepEqual(names(reversed.blocks), ['CPU', 'CPU', 'CPU', 'CPU']);
      assert.equal(reversed.model, vulkan);
      // with room for everything, nothing goes to the CPU
      setMemoryLimit(vulkan.name, 100 * MiB);
      const all = planDeviceMap(4, sizes, { devices: [vulkan, cpu] });
      assert.deepEqual(names(all.blocks), Array(4).fill(vulkan.name));
      assert.equal(all.model, vulkan);
    },
  );

  it('refuses a model that fits nowhere, and maps that do not match the model', { skip }, () => {
    if (vulkan === undefined) return; // skipped
    const cpu = cpuBackend();
    setMemoryLimit(vulkan.name, 2 * MiB);
    setMemoryLimit('CPU', 2 * MiB);
    assert.throws(() => planDeviceMap(4, sizes, { devices: [vulkan, cpu] }), OutOfMemoryError);
    assert.throws(
      () => planDeviceMap(4, sizes, { devices: [vulkan, cpu], layerSplit: [1] }),
      (e: unknown) => e instanceof ConfigError && /layer_split/.test(e.message),
    );
    assert.throws(
      () => planDeviceMap(4, sizes, { devices: [vulkan, cpu], deviceMap: [cpu, vulkan] }),
      (e: unknown) =>
        e instanceof ConfigError && /device_map: 2 devices for a model of 4 blocks/.test(e.message),
    );
    assert.throws(() => planDeviceMap(4, sizes, { devices: [cpu, cpu] }), ConfigError);
  });
});
