/**
 * The multi-device options of the training config: devices, layer_split, device_map and max_memory,
 * from YAML values and from flags, and the one-line errors for values that cannot work.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { deviceRequest } from '../../src/cli/commands/train.js';
import { parseSize, resolveTrainConfig } from '../../src/cli/train-config.js';
import { ConfigError } from '../../src/errors.js';

const base = { model: 'm', dataset: 'd.jsonl' };

function configError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof ConfigError && pattern.test(e.message));
}

describe('multi-device config', () => {
  it('reads sizes in binary and decimal units', () => {
    assert.equal(parseSize('200MiB'), 200 * 2 ** 20);
    assert.equal(parseSize('512M'), 512 * 2 ** 20);
    assert.equal(parseSize('1.5 GB'), 1.5e9);
    assert.equal(parseSize('4kb'), 4000);
    assert.equal(parseSize(1024), 1024);
    assert.ok(Number.isNaN(parseSize('0')));
    assert.ok(Number.isNaN(parseSize('lots')));
    assert.ok(Number.isNaN(parseSize('3 parsecs')));
  });

  it('takes the same values from YAML and from flags', () => {
    const fromFile = resolveTrainConfig({
      ...base,
      devices: ['vulkan0', 'cpu'],
      layer_split: [3, 1],
      max_memory: { vulkan0: '200MiB', cpu: '8GB' },
    });
    const fromFlags = resolveTrainConfig(base, {
      devices: 'vulkan0,cpu',
      layer_split: '3,1',
      max_memory: 'vulkan0=200MiB,cpu=8GB',
    });
    for (const c of [fromFile, fromFlags]) {
      assert.deepEqual(c.devices, ['vulkan0', 'cpu']);
      assert.deepEqual(c.layer_split, [3, 1]);
      assert.deepEqual(c.max_memory, { vulkan0: 200 * 2 ** 20, cpu: 8e9 });
      assert.deepEqual(deviceRequest(c), { devices: ['vulkan0', 'cpu'], layerSplit: [3, 1] });
    }
    const explicit = resolveTrainConfig(base, { device_map: 'vulkan0,vulkan0,cpu' });
    assert.deepEqual(deviceRequest(explicit), { deviceMap: ['vulkan0', 'vulkan0', 'cpu'] });
    assert.deepEqual(deviceRequest(resolveTrainConfig(base, { devices: 'auto' })), { devices: 'auto' });
    assert.equal(deviceRequest(resolveTrainConfig(base)), null, 'one device unless devices are given');
  });

  it('names the option and the fix for values that cannot work', () => {
    configError(
      () => resolveTrainConfig(base, { max_memory: 'vulkan0=lots' }),
      /^max_memory: "vulkan0=lots"/,
    );
    configError(() => resolveTrainConfig({ ...base, max_memory: ['200MiB'] }), /^max_memory:.*mapping/);
    configError(
      () => resolveTrainConfig(base, { layer_split: '3,-1', devices: 'a,b' }),
      /^layer_split:.*numbers ≥ 0/,
    );
    configError(
      () => resolveTrainConfig(base, { devices: 'vulkan0,cpu', layer_split: '1,1,1' }),
      /layer_split: \[1, 1, 1\] has 3 proportions for 2 devices/,
    );
    configError(
      () => resolveTrainConfig(base, { devices: 'vulkan0,cpu', layer_split: '1,1', device_map: 'cpu' }),
      /layer_split and device_map are both set/,
    );
    configError(
      () => resolveTrainConfig(base, { devices: 'vulkan0,cpu', backend: 'cpu' }),
      /backend: cpu is set with devices/,
    );
    configError(() => resolveTrainConfig(base, { devices: 'auto,cpu' }), /mixes auto with device names/);
  });
});
