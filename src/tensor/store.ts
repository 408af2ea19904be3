/**
 * Stored tensors: data that lives in one backend buffer across graphs (weights, adapters, optimizer
 * state). A store allocates all its tensors at once and frees them together.
 *
 * @example
 * const store = TensorStore.create(cpuBackend(), [
 *   { name: 'w', shape: [16, 32], dtype: 'q4_0' },
 *   { name: 'lora_a', shape: [4, 32], dtype: 'f32', requiresGrad: true },
 * ]);
 * store.write(store.get('w'), weights); // quantizes on the way in
 * store.dispose();
 */
import type { Backend } from '../engine/device.js';
import { GGML_TYPE_IDS, type DType } from '../engine/dtype.js';
import type { BufferTypePtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { NativeBuffer, NativeContext, assertAlive } from '../engine/memory.js';
import { DTypeError, QtuneError, ShapeError, fmtShape } from '../errors.js';
import { checkRowLength, decode, encode, tensorBytes } from './host.js';
import { checkShape, numel, sameShape, toNe, type Shape } from './shape.js';
import { Tensor } from './tensor.js';

export interface TensorSpec {
  name: string;
  shape: Shape;
  dtype: DType;
  requiresGrad?: boolean;
}

export class TensorStore {
  readonly backend: Backend;
  private readonly ctx: NativeContext;
  private readonly buffer: NativeBuffer;
  private readonly byName = new Map<string, Tensor>();

  private constructor(backend: Backend, specs: readonly TensorSpec[], bufferType: BufferTypePtr | undefined) {
    const { api } = getEngine();
    if (specs.length === 0)
      throw new QtuneError('INVALID_ARGUMENT', 'a tensor store needs at least one tensor');
    this.backend = backend;
    this.ctx = new NativeContext(specs.length + 1);
    const tensors: { spec: TensorSpec; ptr: ReturnType<typeof api.new_tensor_4d> }[] = [];
    try {
      for (const spec of specs) {
        if (this.byName.has(spec.name) || tensors.some((t) => t.spec.name === spec.name)) {
          throw new QtuneError('INVALID_ARGUMENT', `tensor name "${spec.name}" is used twice in one store`);
        }
        checkShape(spec.shape, `tensor "${spec.name}"`);
        checkRowLength(spec.dtype, spec.shape, `tensor "${spec.name}"`);
        const ne = toNe(spec.shape);
        const ptr = api.new_tensor_4d(this.ctx.ptr, GGML_TYPE_IDS[spec.dtype], ne[0], ne[1], ne[2], ne[3]);
        api.set_name(ptr, spec.name.slice(0, 63));
        tensors.push({ spec, ptr });
      }
      // stored tensors are weights to ggml's scheduler: ops that read them run on this device
      this.buffer = NativeBuffer.forContext(
        this.ctx,
        backend,
        bufferType,
        `tensors ${specs[0]!.name}${specs.length > 1 ? ` and ${specs.length - 1} more` : ''}`,
        true,
      );
    } catch (e) {
      this.ctx.free();
      throw e;
    }
    this.buffer.clear(0);
    for (const { spec, ptr } of tensors) {
      this.byName.set(
        spec.name,
        new Tensor({
          ptr,
          shape: spec.shape,
          dtype: spec.dtype,
          kind: 'stored',
          store: this,
          requiresGrad: spec.requiresGrad ?? false,
          name: spec.name,
        }),
      );
    }
  }

  /** Allocates the tensors (zero-filled) on `backend`, in its default buffer type unless one is given. */
  static create(
    backend: Backend,
    specs: readonly TensorSpec[],
    options: { bufferType?: BufferTypePtr } = {},
  ): TensorStore {
    return new TensorStore(backend, specs, options.bufferType);
  }

  /** A store of one tensor holding `data`. */
  static from(
    backend: Backend,
    data: Float32Array | Int32Array,
    shape: Shape,
    options: { dtype?: DType; name?: string; requiresGrad?: boolean } = {},
  ): Tensor {
    const dtype = options.dtype ?? (data instanceof Int32Array ? 'i32' : 'f32');
    const spec: TensorSpec = { name: options.name ?? 't', shape, dtype };
    if (options.requiresGrad !== undefined) spec.requiresGrad = options.requiresGrad;
    const store = new TensorStore(backend, [spec], undefined);
    const t = store.get(spec.name);
    store.write(t, data);
    return t;
  }

  get alive(): boolean {
    return this.buffer.alive;
  }

  /** Bytes of the backend buffer. */
  get bytes(): number {
    return this.buffer.bytes;
  }

  get tensors(): Tensor[] {
    return [...this.byName.values()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  get(name: string): Tensor {
    assertAlive(this.alive, 'tensor store');
    const t = this.byName.get(name);
    if (t === undefined) {
      throw new QtuneError('INVALID_ARGUMENT', `no tensor named "${name}" in this store`, {
        hint: `known: ${[...this.byName.keys()].slice(0, 10).join(', ')}`,
      });
    }
    return t;
  }

  /** Sets every tensor of the store to zero (one clear of its buffer). */
  zero(): void {
    assertAlive(this.alive, 'tensor store');
    this.buffer.clear(0);
  }

  /** Writes f32 values (converted or quantized to the tensor's type), int32 values, or raw bytes. */
  write(t: Tensor, data: Float32Array | Int32Array | Uint8Array): void {
    this.check(t);
    const { api } = getEngine();
    let bytes: Uint8Array;
    if (data instanceof Uint8Array) {
      bytes = data;
    } else if (data instanceof Int32Array) {
      if (t.dtype !== 'i32')
        throw new DTypeError(`cannot write int32 data into ${t.dtype} tensor "${t.name}"`);
      if (data.length !== t.numel)
        throw new ShapeError(`"${t.name}" ${fmtShape(t.shape)} needs ${t.numel} values, got ${data.length}`);
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } else {
      bytes = encode(t.dtype, data, t.shape);
    }
    const expected = api.nbytes(t.ptr);
    if (bytes.byteLength !== expected) {
      throw new ShapeError(
        `"${t.name}" ${fmtShape(t.shape)} ${t.dtype} needs ${expected} bytes, got ${bytes.byteLength}`,
      );
    }
    api.backend_tensor_set(t.ptr, bytes, 0, expected);
  }

  /** The raw bytes of a tensor in its storage type. */
  readBytes(t: Tensor): Uint8Array {
    this.check(t);
    const { api } = getEngine();
    this.assertReadable(t);
    const n = api.nbytes(t.ptr);
    const out = new Uint8Array(n);
    api.backend_tensor_get(t.ptr, out, 0, n);
    return out;
  }

  /** Reads a tensor as f32 values (dequantized when it is quantized), into `into` when given. */
  read(t: Tensor, into?: Float32Array): Float32Array {
    this.check(t);
    if (into !== undefined && into.length !== t.numel)
      throw new ShapeError(`"${t.name}" ${fmtShape(t.shape)} holds ${t.numel} values, not ${into.length}`);
    return decode(t.dtype, this.readBytes(t), numel(t.shape), into);
  }

  /** Reads an i32 tensor. */
  readInt32(t: Tensor): Int32Array {
    this.check(t);
    if (t.dtype !== 'i32') throw new DTypeError(`"${t.name}" is ${t.dtype}, not i32`);
    const b = this.readBytes(t);
    return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  }

  /** Copies every tensor into a new store on `backend` (device to device through ggml). */
  to(backend: Backend): TensorStore {
    assertAlive(this.alive, 'tensor store');
    const copy = new TensorStore(
      backend,
      this.tensors.map((t) => ({
        name: t.name,
        shape: t.shape,
        dtype: t.dtype,
        requiresGrad: t.requiresGrad,
      })),
      undefined,
    );
    const { api } = getEngine();
    for (const t of this.tensors) {
      this.assertReadable(t);
      api.backend_tensor_copy(t.ptr, copy.get(t.name).ptr);
    }
    return copy;
  }

  /** Copies the data of `src` (a stored tensor of any store, on any device) into `dst` of this store. */
  copyFrom(dst: Tensor, src: Tensor): void {
    this.check(dst);
    if (src.kind !== 'stored' || src.store === null)
      throw new QtuneError('INVALID_ARGUMENT', `copyFrom: ${src.toString()} is not a stored tensor`, {
        hint: 'read a graph output with graph.read() and write it with store.write()',
      });
    assertAlive(src.store.alive, `the tensor store of ${src.toString()}`);
    if (src.dtype !== dst.dtype || !sameShape(src.shape, dst.shape)) {
      throw new ShapeError(`cannot copy ${src.toString()} into ${dst.toString()}`, {
        hint:
          src.dtype === dst.dtype && src.numel === dst.numel
            ? 'the layouts differ: reshape in a graph, or create the target with the source shape'
            : 'shapes and types must match',
      });
    }
    getEngine().api.backend_tensor_copy(src.ptr, dst.ptr);
  }

  /** Frees the buffer. Tensors of this store must not be used afterwards. */
  dispose(): void {
    this.buffer.free();
    this.ctx.free();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private check(t: Tensor): void {
    assertAlive(this.alive, 'tensor store');
    if (t.store !== this)
      throw new QtuneError('INVALID_ARGUMENT', `${t.toString()} does not belong to this store`);
  }

  private assertReadable(t: Tensor): void {
    const { api } = getEngine();
    const buft = api.backend_buffer_get_type(this.bufferPtr());
    const name = api.backend_buft_name(buft);
    if (name.includes('REPACK')) {
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `"${t.name}" lives in the ${name} buffer, whose data cannot be read back`,
        {
          hint: 'keep a copy in a plain buffer for export, merging or DoRA norms (DESIGN.md §1, pitfall 7)',
        },
      );
    }
  }

  private bufferPtr(): NativeBuffer['ptr'] {
    return this.buffer.ptr;
  }

  static bytesFor(specs: readonly TensorSpec[]): number {
    return specs.reduce((s, t) => s + tensorBytes(t.dtype, t.shape), 0);
  }
}
