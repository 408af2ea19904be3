/**
 * The devices a test runs on: the CPU always, and every other device ggml reports (Vulkan on
 * lavapipe in CI). Devices that are missing are listed with the reason, so a skip is never silent.
 * QTUNE_TEST_DEVICES=CPU,Vulkan0 limits the run to those devices.
 */
import { BackendManager } from '../../src/backends/manager.js';
import { openBackend, type Backend } from '../../src/engine/device.js';

export interface TestDevice {
  name: string;
  backend: Backend;
}

let cached: { devices: TestDevice[]; skipped: string[] } | undefined;

export function testDevices(): { devices: TestDevice[]; skipped: string[] } {
  if (cached) return cached;
  const manager = new BackendManager();
  const only = process.env['QTUNE_TEST_DEVICES']?.split(',').map((s) => s.trim().toLowerCase());
  const all = manager.devices();
  const devices = all
    .filter((d) => only === undefined || only.includes(d.name.toLowerCase()))
    .map((d) => ({ name: d.name, backend: openBackend(d) }));
  devices.sort((a, b) => Number(b.backend.isCpu) - Number(a.backend.isCpu)); // CPU first
  const skipped = manager
    .report()
    .filter((r) => !r.available)
    .map((r) => `${r.name}: ${r.reason ?? 'unavailable'}`);
  for (const d of all) {
    if (!devices.some((x) => x.name === d.name))
      skipped.push(`${d.name}: left out by QTUNE_TEST_DEVICES=${process.env['QTUNE_TEST_DEVICES']}`);
  }
  if (!all.some((d) => d.name.startsWith('Vulkan')) && !skipped.some((s) => s.startsWith('vulkan'))) {
    skipped.push(
      'vulkan: no Vulkan backend installed (npm install --no-save @node-llama-cpp/linux-x64-vulkan@3.22.1 and apt-get install mesa-vulkan-drivers libvulkan1)',
    );
  }
  cached = { devices, skipped };
  return cached;
}
