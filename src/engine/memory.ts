/**
 * Native memory that qtune owns: ggml contexts (tensor metadata) and backend buffers (tensor data).
 * Every allocation goes through here, so the live total is known at any time and a test can show it
 * stays flat.
 */
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

/** A ggml context: metadata for up to `capacity` tensors (and a graph, when asked). */
export class NativeContext {
  readonly ptr: CtxPtr;
  private freed = false;

  constructor(tensors: number, graphNodes = 0) {
    const { api } = getEngine();
    const bytes =
      tensors * api.tensor_overhead() + (graphNodes > 0 ? api.graph_overhead_custom(graphNodes, false) : 0);
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
    const ptr = api.backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft);
    if (ptr === null) {
      throw new OutOfMemoryError(`${backend.name} could not allocate a buffer for the ${what}`, {
        hint: 'use a smaller batch or model, quantize the frozen weights, or choose a device with more memory',
        details: { device: backend.name, free: backend.memory().free },
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

  /** Allocates every node of `graph`; false when the device is out of memory. */
  allocate(graph: GraphPtr): boolean {
    const { api } = getEngine();
    const ok = api.gallocr_alloc_graph(this.ptr, graph);
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
