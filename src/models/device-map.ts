/**
 * Where a model's weights live when it is split over several devices: whole decoder blocks per
 * device, as llama.cpp's layer split does. ggml's backend scheduler then runs each op on the device
 * of the weights it reads and copies the activations between devices (src/tensor/graph.ts).
 *
 * - The blocks go to the devices in the order the devices are listed, contiguously: with
 *   `[vulkan0, cpu]` the first blocks run on the GPU and the last ones on the CPU.
 * - The embeddings, the final norm and the LM head (one weight group, since tied models share the
 *   embedding matrix with the head) come after the last block, on the output side, as llama.cpp
 *   treats its output layer as one more layer.
 * - Without an explicit map, the blocks are shared in proportion to each device's budget: its free
 *   memory, or less when `max_memory` caps it. The CPU, listed with accelerators, takes only what does
 *   not fit on them (llama.cpp's `-ngl`, accelerate's `device_map="auto"`).
 * - 20% of each budget is left for what the planner cannot size up front (activations, compute buffers).
 *
 * @example
 * const map = planDeviceMap(4, (group) => bytes[group], { devices: [vulkan, cpu] });
 * map.blocks; // [Vulkan0, Vulkan0, CPU, CPU]
 */
import type { Backend } from '../engine/device.js';
import { formatBytes, memoryLimit } from '../engine/memory.js';
import { ConfigError, OutOfMemoryError } from '../errors.js';

export interface DeviceMap {
  /** The device of each decoder block, by index. */
  readonly blocks: readonly Backend[];
  /** The device of the embeddings, the final norm and the LM head (weight group `model`). */
  readonly model: Backend;
}

export interface DevicePlanOptions {
  /** The devices, in block order. */
  devices: readonly Backend[];
  /** Proportions of the blocks per device, in the order of `devices` (llama.cpp's --tensor-split). */
  layerSplit?: readonly number[];
  /** The device of every block (explicit); the head goes with the last block. */
  deviceMap?: readonly Backend[];
}

/** The share of a device's budget the planner fills with weights. */
const FILL = 0.8;

/** Every group on one device. */
export function singleDeviceMap(backend: Backend, layers: number): DeviceMap {
  return { blocks: Array.from({ length: layers }, () => backend), model: backend };
}

/** The device of a weight group (`layer.N` or `model`, see `weightGroup`). */
export function deviceOfGroup(map: DeviceMap, group: string): Backend {
  const m = /^layer\.(\d+)$/.exec(group);
  if (m === null) return map.model;
  const b = map.blocks[Number(m[1])];
  if (b === undefined) throw new ConfigError(`the device map has no block ${m[1]}`);
  return b;
}

/** The distinct devices of a map in block order, the head's last. */
export function mapDevices(map: DeviceMap): Backend[] {
  return [...new Set([...map.blocks, map.model])];
}

/** Bytes a device may hold: its free memory, or its `max_memory` cap when that is lower. */
export function deviceBudget(backend: Backend): number {
  const cap = memoryLimit(backend.name) ?? Infinity;
  const free = backend.memory().free;
  // a device that reports no free memory does not know it: only the cap limits it
  return Math.min(cap, free > 0 ? free : Infinity);
}

/**
 * Places `layers` decoder blocks and the head group on `o.devices`. `bytesOf(group)` is what a group
 * will occupy (`layer.N`, `model`): its weights, plus gradients and optimizer state when it trains.
 */
export function planDeviceMap(
  layers: number,
  bytesOf: (group: string) => number,
  o: DevicePlanOptions,
): DeviceMap {
  const devices = o.devices;
  if (devices.length === 0) throw new ConfigError('devices: the list is empty', { hint: 'name a device' });
  if (new Set(devices).size !== devices.length)
    throw new ConfigError(`devices: ${devices.map((d) => d.name).join(', ')} names a device twice`, {
      hint: 'list each device once',
    });
  if (o.deviceMap !== undefined && o.layerSplit !== undefined)
    throw new ConfigError('device_map and layer_split are both set', { hint: 'give one of them' });
  if (o.deviceMap !== undefined) {
    if (o.deviceMap.length !== layers)
      throw new ConfigError(`device_map: ${o.deviceMap.length} devices for a model of ${layers} blocks`, {
        hint: `give one device per decoder block (${layers})`,
      });
    return { blocks: [...o.deviceMap], model: o.deviceMap[layers - 1]! };
  }
  if (devices.length === 1) return singleDeviceMap(devices[0]!, layers);

  // the head group is item `layers`, after the last block
  const items = [...Array.from({ length: layers }, (_, i) => bytesOf(`layer.${i}`)), bytesOf('model')];
  const total = items.reduce((a, b) => a + b, 0);
  let targets: number[];
  if (o.layerSplit !== undefined) {
    const split = o.layerSplit;
    if (split.length !== devices.length || split.some((x) => !(x >= 0) || !Number.isFinite(x)))
      throw new ConfigError(
        `layer_split: [${split.join(', ')}] needs one proportion ≥ 0 per device (${devices.length})`,
        { hint: 'e.g. layer_split: [3, 1] puts three quarters of the blocks on the first device' },
      );
    const sum = split.reduce((a, b) => a + b, 0);
    if (sum <= 0)
      throw new ConfigError('layer_split: the proportions add up to 0', { hint: 'use e.g. [1, 1]' });
    // proportions of the blocks, counted in blocks as llama.cpp does; the head goes with the last block
    const counts = blockCounts(
      layers,
      split.map((x) => x / sum),
    );
    const blocks: Backend[] = [];
    counts.forEach((n, d) => {
      for (let k = 0; k < n; k++) blocks.push(devices[d]!);
    });
    return { blocks, model: blocks[layers - 1]! };
  }

  // a device of unknown size (no free memory reported, no cap) counts as holding the whole model
  const budgets = devices.map((d) => {
    const b = deviceBudget(d);
    return Number.isFinite(b) ? FILL * b : total;
  });
  const accel = devices.map((d) => !d.isCpu);
  const mixed = accel.some((a) => a) && accel.some((a) => !a);
  targets = devices.map(() => 0);
  if (mixed) {
    // accelerators first, in proportion to their budgets; the CPU takes the rest
    const accelBudget = budgets.reduce((s, b, d) => s + (accel[d] ? b : 0), 0);
    const onAccel = Math.min(total, accelBudget);
    targets = budgets.map((b, d) => (accel[d] ? (b / accelBudget) * onAccel : 0));
    const cpu = accel.indexOf(false);
    targets[cpu] = total - onAccel;
  } else {
    const all = budgets.reduce((a, b) => a + b, 0);
    targets = budgets.map((b) => (b / all) * total);
  }
  // contiguous fill: an item goes to the current device while its middle stays within the target
  const owner: number[] = [];
  const load = devices.map(() => 0);
  let d = 0;
  for (const bytes of items) {
    while (d < devices.length - 1 && load[d]! + bytes / 2 > targets[d]!) d++;
    owner.push(d);
    load[d] = load[d]! + bytes;
  }
  const over = devices.findIndex((_, k) => load[k]! > budgets[k]!);
  if (over >= 0) {
    throw new OutOfMemoryError(
      `the model needs ${formatBytes(total)}; ${devices.map((dev, k) => `${dev.name} can take ${formatBytes(budgets[k]!)}`).join(', ')} (${Math.round(FILL * 100)}% of free memory or max_memory)`,
      {
        hint: 'add a device, raise max_memory, or quantize the frozen weights',
        details: Object.fromEntries(
          devices.map((dev, k) => [dev.name, { planned: load[k], budget: budgets[k] }]),
        ),
      },
    );
  }
  return {
    blocks: owner.slice(0, layers).map((k) => devices[k]!),
    model: devices[owner[layers]!]!,
  };
}

/** Blocks per device for proportions `shares` (summing to 1): block i goes where i/n first falls below the cumulative share. */
function blockCounts(layers: number, shares: readonly number[]): number[] {
  const counts = shares.map(() => 0);
  let cum = 0;
  const bounds = shares.map((s) => (cum += s));
  for (let i = 0; i < layers; i++) {
    const d = bounds.findIndex((b) => (i + 0.5) / layers < b + 1e-9);
    counts[d < 0 ? shares.length - 1 : d]! += 1;
  }
  return counts;
}

/** One line per device: which blocks (and the head) live there, e.g. `Vulkan0: blocks 0-1`. */
export function describeDeviceMap(map: DeviceMap): string[] {
  return mapDevices(map).map((dev) => {
    const idx = map.blocks.flatMap((b, i) => (b === dev ? [i] : []));
    const parts: string[] = [];
    if (idx.length > 0) parts.push(`${idx.length === 1 ? 'block' : 'blocks'} ${ranges(idx)}`);
    if (map.model === dev) parts.push('embeddings, final norm, LM head');
    return `${dev.name}: ${parts.join('; ')}`;
  });
}

function ranges(idx: readonly number[]): string {
  const out: string[] = [];
  let start = idx[0]!;
  for (let k = 1; k <= idx.length; k++) {
    if (k === idx.length || idx[k] !== idx[k - 1]! + 1) {
      const end = idx[k - 1]!;
      out.push(start === end ? `${start}` : `${start}-${end}`);
      start = idx[k]!;
    }
  }
  return out.join(', ');
}
