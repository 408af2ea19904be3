/**
 * Native memory that qtune owns: ggml contexts (tensor metadata) and backend buffers (tensor data).
 * Every allocation goes through here, so the live total is known at any time and a test can show it
 * stays flat.
 */
import os from 'node:os';
import { OutOfMemoryError, QtuneError } from '../errors.js';
import type { Backend } from './device.js';
import {
  koffi,
  type BufferPtr,
  type BufferTypePtr,
  type CtxPtr,
  type GallocrPtr,
  type GraphPtr,
} from './ggml.js';
import { getEngine } from './library.js';

interface Live {
  bytes: number;
  device: string;
}

const live = new Map<bigint, Live>();
let contexts = 0;

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

function track(ptr: BufferPtr | GallocrPtr, bytes: number, device: string): void {
  live.set(koffi.address(ptr), { bytes, device });
}

function untrack(ptr: BufferPtr | GallocrPtr): void {
  live.delete(koffi.address(ptr));
}

/** Bytes in a message: `1.5 GiB`, `12.0 MiB`. */
export function fmtBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(1)} ${units[u]}`;
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
        `a ggml context for ${tensors} tensors needs ${fmtBytes(bytes)}, the host has ${fmtBytes(free)} available`,
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
    track(ptr, this.bytes, device);
  }

  /** Allocates one buffer for all tensors of `ctx` in `buft` (the backend's default type unless given). */
  static forContext(
    ctx: NativeContext,
    backend: Backend,
    buft: BufferTypePtr = backend.bufferType,
    what = 'tensors',
  ): NativeBuffer {
    const { api } = getEngine();
    const hint =
      'use a smaller batch or model, quantize the frozen weights, or choose a device with more memory';
    const needed = api.backend_alloc_ctx_tensors_from_buft_size(ctx.ptr, buft);
    const free = availableMemory(backend);
    if (needed > free) {
      throw new OutOfMemoryError(
        `${backend.name} has ${fmtBytes(free)} free, the ${what} need ${fmtBytes(needed)}`,
        { hint, details: { device: backend.name, needed, free } },
      );
    }
    const ptr = api.backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft);
    if (ptr === null) {
      throw new OutOfMemoryError(`${backend.name} could not allocate ${fmtBytes(needed)} for the ${what}`, {
        hint,
        details: { device: backend.name, needed, free },
      });
    }
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
    untrack(this.ptr);
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
    track(this.ptr, ok ? api.gallocr_get_buffer_size(this.ptr, 0) : 0, this.device);
    return ok;
  }

  get bytes(): number {
    return getEngine().api.gallocr_get_buffer_size(this.ptr, 0);
  }

  free(): void {
    if (this.freed) return;
    getEngine().api.gallocr_free(this.ptr);
    untrack(this.ptr);
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
