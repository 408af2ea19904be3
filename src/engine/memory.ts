/**
 * Native memory that qtune owns: ggml contexts (tensor metadata), backend buffers (tensor data) and
 * compute buffers (a graph's intermediate tensors, one per device when a graph spans several).
 * Every allocation goes through here, so the live total per device is known at any time, a test can
 * show it stays flat, and a per-device cap ({@link setMemoryLimit}, the CLI's `max_memory`) is
 * enforced on what was really allocated.
 */
import os from 'node:os';
import { OutOfMemoryError, QtuneError } from '../errors.js';
import type { Backend } from './device.js';
import {
  BUFFER_USAGE_WEIGHTS,
  callAsync,
  koffi,
  type BufferPtr,
  type BufferTypePtr,
  type CtxPtr,
  type GallocrPtr,
  type GraphPtr,
  type SchedPtr,
  type TensorPtr,
} from './ggml.js';
import { getEngine } from './library.js';

interface Live {
  bytes: number;
  device: string;
}

/** Live allocations by a key of their native handle (and, for a scheduler, the backend's index). */
const live = new Map<string, Live>();
let contexts = 0;
/** Per-device caps in bytes, by lower-case device name. */
const limits = new Map<string, number>();

/** Bytes of live backend buffers, in all and per device, and how many contexts are open. */
export function nativeMemory(): {
  total: number;
  byDevice: Record<string, number>;
  buffers: number;
  contexts: number;
} {
  const byDevice: Record<string, number> = {};
  let total = 0;
  for (const b of live.values()) {
    total += b.bytes;
    byDevice[b.device] = (byDevice[b.device] ?? 0) + b.bytes;
  }
  return { total, byDevice, buffers: live.size, contexts };
}

/** `12.3 MiB`, `1.50 GiB`: how qtune prints a size, in messages, reports and the CLI. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 2 ** 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 2 ** 30) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n < 2 ** 40) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  return `${(n / 2 ** 40).toFixed(2)} TiB`;
}

/**
 * Caps what qtune allocates on a device (weights, adapters, gradients, optimizer state, compute
 * buffers), like Hugging Face accelerate's `max_memory`; null removes the cap. An allocation that
 * would go over it fails with an OutOfMemoryError, as if the device were that small.
 *
 * @example
 * setMemoryLimit('Vulkan0', 200 * 2 ** 20); // then a model that needs more must be split
 */
export function setMemoryLimit(device: string, bytes: number | null): void {
  if (bytes === null) {
    limits.delete(device.toLowerCase());
    return;
  }
  if (!(Number.isFinite(bytes) && bytes > 0))
    throw new QtuneError('INVALID_ARGUMENT', `max_memory for ${device}: ${bytes} is not a positive size`, {
      hint: 'give a size such as 200MiB or 8GiB',
    });
  limits.set(device.toLowerCase(), bytes);
}

/** The cap set with {@link setMemoryLimit}, or null. */
export function memoryLimit(device: string): number | null {
  return limits.get(device.toLowerCase()) ?? null;
}

/** The device of a live buffer allocated through {@link NativeBuffer}, by its address. */
export function bufferDevice(address: bigint): string | null {
  return live.get(`${address}:0`)?.device ?? null;
}

function liveOn(device: string): number {
  let n = 0;
  for (const b of live.values()) if (b.device === device) n += b.bytes;
  return n;
}

/** Throws (after `release`) when `bytes` more on `device` would pass its cap. */
function enforceLimit(device: string, bytes: number, what: string, release: () => void): void {
  const cap = memoryLimit(device);
  if (cap === null) return;
  const used = liveOn(device);
  if (used + bytes <= cap) return;
  release();
  throw new OutOfMemoryError(
    `${device}: ${formatBytes(bytes)} for ${what} would pass its max_memory of ${formatBytes(cap)} (${formatBytes(used)} in use)`,
    {
      hint: 'spread the model over more devices (devices: [vulkan0, cpu]), raise max_memory, quantize the frozen weights, or use a smaller batch',
      details: { device, bytes, used, limit: cap },
    },
  );
}

function keyOf(ptr: BufferPtr | GallocrPtr | SchedPtr, index = 0): string {
  return `${koffi.address(ptr)}:${index}`;
}

function track(key: string, bytes: number, device: string): void {
  live.set(key, { bytes, device });
}

function untrack(key: string): void {
  live.delete(key);
}

/**
 * Bytes a device can still give: its free memory, and for the CPU what the OS reports available
 * (ggml counts all of the RAM as free; asking for more than is available gets the process killed
 * when the pages are touched, not a failed allocation).
 */
export function availableMemory(backend: Backend): number {
  const free = backend.memory().free;
  return backend.isCpu ? Math.min(free, hostAvailable()) : free;
}

/** Host memory the process can still get: the OS's available memory, within a cgroup's limit. */
function hostAvailable(): number {
  // process.availableMemory (Node 20.13+) also applies a container's memory limit
  const p = process as { availableMemory?: () => number };
  return typeof p.availableMemory === 'function' ? p.availableMemory() : os.freemem();
}

/** A ggml context: metadata for up to `capacity` tensors (and a graph, when asked). */
export class NativeContext {
  readonly ptr: CtxPtr;
  private freed = false;

  constructor(tensors: number, graphNodes = 0) {
    const { api } = getEngine();
    const bytes =
      tensors * api.tensor_overhead() + (graphNodes > 0 ? api.graph_overhead_custom(graphNodes, false) : 0);
    // ggml_init aborts when its malloc fails: refuse what the host cannot give first
    const free = hostAvailable();
    if (!(bytes <= free))
      throw new OutOfMemoryError(
        `a ggml context for ${tensors} tensors needs ${formatBytes(bytes)}, the host has ${formatBytes(free)} available`,
        { hint: 'use fewer tensors per context', details: { needed: bytes, free } },
      );
    const ptr = api.init({ mem_size: bytes, mem_buffer: null, no_alloc: true });
    if (ptr === null) throw new OutOfMemoryError(`could not allocate a ggml context of ${bytes} bytes`);
    this.ptr = ptr;
    contexts++;
  }

  /** Whether `n` more tensors fit; ggml aborts when a context overflows, so callers check first. */
  hasRoom(n: number): boolean {
    const { api } = getEngine();
    return api.used_mem(this.ptr) + n * api.tensor_overhead() <= api.get_mem_size(this.ptr);
  }

  get alive(): boolean {
    return !this.freed;
  }

  free(): void {
    if (this.freed) return;
    getEngine().api.free(this.ptr);
    this.freed = true;
    contexts--;
  }
}

/** A backend buffer holding the data of every tensor of a context. */
export class NativeBuffer {
  readonly ptr: BufferPtr;
  readonly bytes: number;
  readonly device: string;
  private freed = false;

  private constructor(ptr: BufferPtr, device: string) {
    this.ptr = ptr;
    this.bytes = getEngine().api.backend_buffer_get_size(ptr);
    this.device = device;
    track(keyOf(ptr), this.bytes, device);
  }

  /**
   * Allocates one buffer for all tensors of `ctx` in `buft` (the backend's default type unless given).
   * `weights` marks it as holding long-lived tensors, so that ggml's scheduler runs the ops that read
   * them on this device.
   */
  static forContext(
    ctx: NativeContext,
    backend: Backend,
    buft: BufferTypePtr = backend.bufferType,
    what = 'tensors',
    weights = false,
  ): NativeBuffer {
    const { api } = getEngine();
    const hint =
      'use a smaller batch or model, quantize the frozen weights, or choose a device with more memory';
    const needed = api.backend_alloc_ctx_tensors_from_buft_size(ctx.ptr, buft);
    const free = availableMemory(backend);
    if (needed > free) {
      throw new OutOfMemoryError(
        `${backend.name} has ${formatBytes(free)} free, the ${what} need ${formatBytes(needed)}`,
        { hint, details: { device: backend.name, needed, free } },
      );
    }
    const ptr = api.backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft);
    if (ptr === null) {
      throw new OutOfMemoryError(
        `${backend.name} could not allocate ${formatBytes(needed)} for the ${what}`,
        {
          hint,
          details: { device: backend.name, needed, free },
        },
      );
    }
    enforceLimit(backend.name, api.backend_buffer_get_size(ptr), `the ${what}`, () =>
      api.backend_buffer_free(ptr),
    );
    if (weights) api.backend_buffer_set_usage(ptr, BUFFER_USAGE_WEIGHTS);
    return new NativeBuffer(ptr, backend.name);
  }

  get alive(): boolean {
    return !this.freed;
  }

  clear(value = 0): void {
    getEngine().api.backend_buffer_clear(this.ptr, value);
  }

  free(): void {
    if (this.freed) return;
    getEngine().api.backend_buffer_free(this.ptr);
    untrack(keyOf(this.ptr));
    this.freed = true;
  }
}

/** ggml's graph allocator: places a graph's intermediate tensors in one reusable compute buffer. */
export class GraphAllocator {
  readonly ptr: GallocrPtr;
  private readonly device: string;
  private freed = false;

  constructor(backend: Backend) {
    const ptr = getEngine().api.gallocr_new(backend.bufferType);
    if (ptr === null) throw new OutOfMemoryError(`could not create a graph allocator on ${backend.name}`);
    this.ptr = ptr;
    this.device = backend.name;
  }

  /**
   * The bytes {@link allocate} would take for `graph` (its tensors without data, graph inputs
   * included), measured without allocating them.
   */
  measure(graph: GraphPtr): number {
    const sizes: [number | bigint | null] = [null];
    getEngine().api.gallocr_reserve_n_size(this.ptr, graph, null, null, sizes);
    return Number(sizes[0] ?? 0);
  }

  /** Allocates every node of `graph`; false when the device is out of memory. */
  allocate(graph: GraphPtr): boolean {
    const { api } = getEngine();
    // reserve first: after measure() the allocator holds a plan but no buffer, which
    // gallocr_alloc_graph alone does not notice
    const ok = api.gallocr_reserve(this.ptr, graph) && api.gallocr_alloc_graph(this.ptr, graph);
    const bytes = ok ? api.gallocr_get_buffer_size(this.ptr, 0) : 0;
    untrack(keyOf(this.ptr));
    enforceLimit(this.device, bytes, "a graph's intermediate tensors", () => undefined);
    track(keyOf(this.ptr), bytes, this.device);
    return ok;
  }

  get bytes(): number {
    return getEngine().api.gallocr_get_buffer_size(this.ptr, 0);
  }

  free(): void {
    if (this.freed) return;
    getEngine().api.gallocr_free(this.ptr);
    untrack(keyOf(this.ptr));
    this.freed = true;
  }
}

/**
 * ggml's backend scheduler: runs one graph over several backends. Each op runs on the device of the
 * weights it reads (or next to its neighbours), and the scheduler copies activations between
 * devices; it keeps one compute buffer per device. How llama.cpp splits layers across GPUs.
 */
export class Scheduler {
  readonly ptr: SchedPtr;
  /** In priority order; the CPU is last, as ggml requires. */
  readonly backends: readonly Backend[];
  private freed = false;

  constructor(backends: readonly Backend[], graphSize: number) {
    if (backends.length < 2 || !backends[backends.length - 1]!.isCpu)
      throw new QtuneError('INVALID_ARGUMENT', 'a scheduler needs several backends with the CPU last');
    const ptr = getEngine().api.backend_sched_new(
      backends.map((b) => b.ptr),
      null,
      backends.length,
      graphSize,
      false,
      false, // op_offload: keep each op next to its weights, as the device map says
    );
    if (ptr === null) throw new OutOfMemoryError('could not create a backend scheduler');
    this.ptr = ptr;
    this.backends = backends;
  }

  /** Assigns every node a device, splits the graph and allocates it; false when a device is out of memory. */
  allocate(graph: GraphPtr): boolean {
    const { api } = getEngine();
    if (!api.backend_sched_alloc_graph(this.ptr, graph)) return false;
    this.backends.forEach((b, i) => {
      const bytes = api.backend_sched_get_buffer_size(this.ptr, b.ptr);
      untrack(keyOf(this.ptr, i));
      enforceLimit(b.name, bytes, "a graph's intermediate tensors", () => undefined);
      track(keyOf(this.ptr, i), bytes, b.name);
    });
    return true;
  }

  /** Bytes of the compute buffer on `backend`. */
  bytes(backend: Backend): number {
    return this.backends.includes(backend)
      ? getEngine().api.backend_sched_get_buffer_size(this.ptr, backend.ptr)
      : 0;
  }

  /** Parts of the last graph that run on one device each (a copy between devices starts a new one). */
  get splits(): number {
    return getEngine().api.backend_sched_get_n_splits(this.ptr);
  }

  /** The device a node of the allocated graph runs on. */
  deviceOf(node: TensorPtr): Backend | null {
    const p = getEngine().api.backend_sched_get_tensor_backend(this.ptr, node);
    if (p === null) return null;
    return this.backends.find((b) => koffi.address(b.ptr) === koffi.address(p)) ?? null;
  }

  compute(graph: GraphPtr): number {
    return getEngine().api.backend_sched_graph_compute(this.ptr, graph);
  }

  /** {@link compute} on a worker thread (koffi's async call): the event loop runs meanwhile. */
  computeAsync(graph: GraphPtr): Promise<number> {
    return callAsync(getEngine().api, 'backend_sched_graph_compute', this.ptr, graph);
  }

  free(): void {
    if (this.freed) return;
    getEngine().api.backend_sched_free(this.ptr);
    this.backends.forEach((_, i) => untrack(keyOf(this.ptr, i)));
    this.freed = true;
  }
}

/** Throws a uniform error for use after dispose. */
export function assertAlive(alive: boolean, what: string): void {
  if (!alive)
    throw new QtuneError('DISPOSED', `${what} was disposed and cannot be used`, {
      hint: 'keep it alive until its last use',
    });
}
