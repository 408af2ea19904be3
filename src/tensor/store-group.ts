/**
 * Stored tensors spread over several devices and addressed as one store: one {@link TensorStore} per
 * device, each tensor on the device its spec names. A model split over devices keeps its LoRA
 * adapters, gradients, optimizer state and KV cache next to the weights they belong to.
 *
 * @example
 * const grads = StoreGroup.create(params.map((p, i) => ({ name: `grad${i}`, shape: p.shape, dtype: 'f32', backend: p.backend })));
 * grads.get('grad0'); // on the device of params[0]
 * grads.dispose();
 */
import type { Backend } from '../engine/device.js';
import { QtuneError } from '../errors.js';
import { TensorStore, type TensorSpec } from './store.js';
import type { Tensor } from './tensor.js';

/** A tensor spec and the device it lives on. */
export type PlacedSpec = TensorSpec & { backend: Backend };

export class StoreGroup {
  /** One store per device, in the order the devices first appear in the specs. */
  readonly stores: readonly TensorStore[];
  private readonly byName: ReadonlyMap<string, Tensor>;
  private readonly order: readonly string[];

  private constructor(stores: TensorStore[], order: string[]) {
    this.stores = stores;
    this.order = order;
    const byName = new Map<string, Tensor>();
    for (const st of stores) for (const t of st.tensors) byName.set(t.name, t);
    this.byName = byName;
  }

  /** Allocates every tensor (zero-filled) on its device. */
  static create(specs: readonly PlacedSpec[]): StoreGroup {
    if (specs.length === 0)
      throw new QtuneError('INVALID_ARGUMENT', 'a store group needs at least one tensor');
    const byDevice = new Map<Backend, TensorSpec[]>();
    for (const { backend, ...spec } of specs) byDevice.set(backend, [...(byDevice.get(backend) ?? []), spec]);
    const stores: TensorStore[] = [];
    try {
      for (const [backend, list] of byDevice) stores.push(TensorStore.create(backend, list));
    } catch (e) {
      for (const st of stores) st.dispose();
      throw e;
    }
    return new StoreGroup(
      stores,
      specs.map((s) => s.name),
    );
  }

  /** Every tensor, in the order of the specs. */
  get tensors(): Tensor[] {
    return this.order.map((n) => this.byName.get(n)!);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  get(name: string): Tensor {
    const t = this.byName.get(name);
    if (t === undefined)
      throw new QtuneError('INVALID_ARGUMENT', `no tensor named "${name}" in this store group`, {
        hint: `known: ${this.order.slice(0, 10).join(', ')}`,
      });
    return t;
  }

  /** Bytes of every buffer. */
  get bytes(): number {
    return this.stores.reduce((n, st) => n + st.bytes, 0);
  }

  /** Bytes of the buffer on `backend` (0 when none of the tensors lives there). */
  bytesOn(backend: Backend): number {
    return this.stores.filter((st) => st.backend === backend).reduce((n, st) => n + st.bytes, 0);
  }

  /** Writes a tensor's data (as {@link TensorStore.write}) into the store that holds it. */
  write(t: Tensor, data: Float32Array | Int32Array | Uint8Array): void {
    this.storeOf(t).write(t, data);
  }

  /** Reads a tensor as f32 values (as {@link TensorStore.read}), into `into` when given. */
  read(t: Tensor, into?: Float32Array): Float32Array {
    return this.storeOf(t).read(t, into);
  }

  private storeOf(t: Tensor): TensorStore {
    const st = this.stores.find((s) => s === t.store);
    if (st === undefined)
      throw new QtuneError('INVALID_ARGUMENT', `${t.toString()} is not a tensor of this store group`);
    return st;
  }

  /** Sets every tensor to zero. */
  zero(): void {
    for (const st of this.stores) st.zero();
  }

  get alive(): boolean {
    return this.stores.every((st) => st.alive);
  }

  dispose(): void {
    for (const st of this.stores) st.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
