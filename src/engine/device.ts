/**
 * Devices as ggml's registry reports them, and backends (a device opened for compute). One backend
 * per device per process: ggml backends are heavyweight (thread pools, GPU queues).
 */
import { QtuneError } from '../errors.js';
import {
  GetExtraBuftsProto,
  SetNThreadsProto,
  callProc,
  koffi,
  type BackendPtr,
  type BufferTypePtr,
  type DevicePtr,
  type FnPtr,
  type TensorPtr,
} from './ggml.js';
import { getEngine } from './library.js';

export type DeviceType = 'cpu' | 'gpu' | 'igpu' | 'accel' | 'meta';
const DEVICE_TYPES: DeviceType[] = ['cpu', 'gpu', 'igpu', 'accel', 'meta'];

export interface DeviceInfo {
  /** Position in ggml's device list. */
  index: number;
  /** ggml's device name: `CPU`, `Vulkan0`, `CUDA0`, `MTL0`, ... */
  name: string;
  description: string;
  type: DeviceType;
  /** Name of the backend registry entry: `CPU`, `Vulkan`, `CUDA`, `Metal`, `BLAS`, ... */
  backend: string;
  memoryFree: number;
  memoryTotal: number;
  /** A software renderer made visible by qtune (lavapipe): correct but slow. */
  software: boolean;
}

function deviceHandle(index: number): DevicePtr {
  const { api } = getEngine();
  if (index < 0 || index >= api.backend_dev_count()) {
    throw new QtuneError('DEVICE_UNAVAILABLE', `no ggml device with index ${index}`);
  }
  return api.backend_dev_get(index);
}

/** Every device ggml's registry knows, in registry order (GPU backends first, CPU last). */
export function listDevices(): DeviceInfo[] {
  const { api, info } = getEngine();
  const out: DeviceInfo[] = [];
  const n = api.backend_dev_count();
  for (let i = 0; i < n; i++) {
    const d = api.backend_dev_get(i);
    const free: [number | bigint | null] = [null];
    const total: [number | bigint | null] = [null];
    api.backend_dev_memory(d, free, total);
    const description = api.backend_dev_description(d);
    out.push({
      index: i,
      name: api.backend_dev_name(d),
      description,
      type: DEVICE_TYPES[api.backend_dev_type(d)] ?? 'accel',
      backend: api.backend_reg_name(api.backend_dev_backend_reg(d)),
      memoryFree: Number(free[0] ?? 0),
      memoryTotal: Number(total[0] ?? 0),
      software: info.softwareVulkanDevices.includes(description),
    });
  }
  return out;
}

/** Capabilities as ggml reports them. */
export function deviceCaps(index: number): { async: boolean; hostBuffer: boolean; events: boolean } {
  const { api } = getEngine();
  const props: Record<string, unknown> = {};
  api.backend_dev_get_props(deviceHandle(index), props);
  const caps = props['caps'] as { async: boolean; host_buffer: boolean; events: boolean };
  return { async: caps.async, hostBuffer: caps.host_buffer, events: caps.events };
}

/** A device opened for compute. Get one with {@link openBackend}. */
export class Backend {
  readonly device: DeviceInfo;
  readonly ptr: BackendPtr;
  readonly devPtr: DevicePtr;
  /** Where this backend's tensors live by default. */
  readonly bufferType: BufferTypePtr;
  private setThreadsFn: FnPtr | null;
  private nThreads: number;

  /** @internal use {@link openBackend} */
  constructor(device: DeviceInfo) {
    const { api, info } = getEngine();
    this.device = device;
    this.devPtr = deviceHandle(device.index);
    const ptr = api.backend_dev_init(this.devPtr, null);
    if (ptr === null) {
      throw new QtuneError(
        'DEVICE_UNAVAILABLE',
        `ggml could not initialise device ${device.name} (${device.description})`,
        {
          hint: 'check the driver, or choose another device with --backend / QTUNE_BACKEND',
        },
      );
    }
    this.ptr = ptr;
    this.bufferType = api.backend_get_default_buffer_type(ptr);
    this.setThreadsFn = api.backend_reg_get_proc_address(
      api.backend_dev_backend_reg(this.devPtr),
      'ggml_backend_set_n_threads',
    );
    this.nThreads = info.threads;
    this.setThreads(info.threads);
  }

  get name(): string {
    return this.device.name;
  }

  get isCpu(): boolean {
    return this.device.type === 'cpu';
  }

  /** Threads used by CPU work on this backend (ignored by GPU backends that have no thread setting). */
  get threads(): number {
    return this.nThreads;
  }

  setThreads(n: number): void {
    if (!Number.isInteger(n) || n < 1) {
      throw new QtuneError('INVALID_ARGUMENT', `threads=${n} is not a positive integer`, {
        hint: 'use 1 or more threads',
      });
    }
    this.nThreads = n;
    if (this.setThreadsFn !== null) callProc(this.setThreadsFn, SetNThreadsProto, this.ptr, n);
  }

  supportsOp(t: TensorPtr): boolean {
    return getEngine().api.backend_dev_supports_op(this.devPtr, t);
  }

  /** Extra buffer types (the CPU's `CPU_REPACK` for faster quantized matmul). */
  extraBufferTypes(): { name: string; ptr: BufferTypePtr }[] {
    const { api } = getEngine();
    const fn = api.backend_reg_get_proc_address(
      api.backend_dev_backend_reg(this.devPtr),
      'ggml_backend_dev_get_extra_bufts',
    );
    if (fn === null) return [];
    const arr = callProc(fn, GetExtraBuftsProto, this.devPtr);
    if (arr === null) return [];
    const out: { name: string; ptr: BufferTypePtr }[] = [];
    for (let i = 0; i < 16; i++) {
      const p = koffi.decode(arr, i * 8, 'ggml_backend_buffer_type *') as BufferTypePtr | null;
      if (p === null) break;
      out.push({ name: api.backend_buft_name(p), ptr: p });
    }
    return out;
  }

  /** Free and total memory now, in bytes. */
  memory(): { free: number; total: number } {
    const { api } = getEngine();
    const free: [number | bigint | null] = [null];
    const total: [number | bigint | null] = [null];
    api.backend_dev_memory(this.devPtr, free, total);
    return { free: Number(free[0] ?? 0), total: Number(total[0] ?? 0) };
  }

  toString(): string {
    return `${this.device.name} (${this.device.description})`;
  }
}

const backends = new Map<number, Backend>();

/** The backend of a device, created once per process. */
export function openBackend(device: DeviceInfo): Backend {
  let b = backends.get(device.index);
  if (b === undefined) {
    b = new Backend(device);
    backends.set(device.index, b);
  }
  return b;
}

/** The CPU backend: always present. */
export function cpuBackend(): Backend {
  const cpu = listDevices().find((d) => d.type === 'cpu');
  if (cpu === undefined)
    throw new QtuneError('DEVICE_UNAVAILABLE', 'ggml reports no CPU device', { hint: 'reinstall qtune' });
  return openBackend(cpu);
}
