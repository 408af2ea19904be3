/**
 * BackendManager: which devices exist, what each can do (probed with ggml's supports_op, never
 * hard-coded), choosing one, and moving tensors between them.
 *
 * @example
 * const manager = new BackendManager();
 * console.table(manager.report());
 * const backend = manager.select('auto'); // or 'cpu', 'vulkan', 'cuda0', 'mps', QTUNE_BACKEND
 */
import { listDevices, openBackend, type Backend, type DeviceInfo } from '../engine/device.js';
import {
  FLOAT_DTYPES,
  GGML_TYPE_IDS,
  QUANT_DTYPES,
  type DType,
  type FloatDType,
  type QuantDType,
} from '../engine/dtype.js';
import type { TensorPtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { NODE_LLAMA_CPP_VERSION } from '../engine/paths.js';
import { NativeContext } from '../engine/memory.js';
import { DeviceUnavailableError, QtuneError } from '../errors.js';
import { TensorStore } from '../tensor/store.js';
import type { Tensor } from '../tensor/tensor.js';

export type DeviceKind = 'cpu' | 'cuda' | 'metal' | 'vulkan' | 'other';

/** What `qtune backends --json` prints for each device. */
export interface DeviceReport {
  name: string;
  kind: DeviceKind;
  description: string;
  available: boolean;
  /** Why a device is listed but unavailable (its backend failed to load). */
  reason: string | null;
  /** A software renderer (lavapipe): runs the GPU code path on the CPU, slowly. */
  software: boolean;
  memory_total: number;
  memory_free: number;
  /** bf16 weights run forward. */
  bf16: boolean;
  /** Float types whose weights run forward (matmul and row lookup). */
  dtypes: FloatDType[];
  /** Quantized types whose frozen weights run forward. */
  quant_types: QuantDType[];
  /** Float types whose weights also run the backward pass (gradient to the input through them). */
  train_dtypes: FloatDType[];
  /** Quantized types whose frozen weights also run the backward pass (QLoRA). */
  train_quant_types: QuantDType[];
}

const KIND_BY_REG: Record<string, DeviceKind> = {
  CPU: 'cpu',
  CUDA: 'cuda',
  Vulkan: 'vulkan',
  Metal: 'metal',
  MTL: 'metal',
};

/** `auto` prefers a real GPU: CUDA, then Metal, then Vulkan; software Vulkan is only used when asked for. */
const AUTO_ORDER: DeviceKind[] = ['cuda', 'metal', 'vulkan', 'cpu'];

function kindOf(d: DeviceInfo): DeviceKind {
  return KIND_BY_REG[d.backend] ?? 'other';
}

export class BackendManager {
  private reports: DeviceReport[] | undefined;

  /** Devices ggml can compute on (accelerator-only entries such as BLAS are not listed). */
  devices(): DeviceInfo[] {
    return listDevices().filter((d) => kindOf(d) !== 'other' || d.type === 'gpu');
  }

  /** Every device with its probed capabilities, plus GPU backends that are installed but failed to load. */
  report(): DeviceReport[] {
    if (this.reports !== undefined) return this.reports;
    const out: DeviceReport[] = this.devices().map((d) => {
      const caps = probeCapabilities(d);
      const mem = openBackend(d).memory();
      return {
        name: d.name,
        kind: kindOf(d),
        description: d.description,
        available: true,
        reason: null,
        software: d.software,
        memory_total: mem.total,
        memory_free: mem.free,
        bf16: caps.dtypes.includes('bf16'),
        ...caps,
      };
    });
    for (const gpu of getEngine().info.gpuBackends) {
      if (gpu.loaded && out.some((r) => r.kind === gpu.kind)) continue;
      out.push({
        name: gpu.kind,
        kind: gpu.kind,
        description: gpu.package,
        available: false,
        reason:
          gpu.note ?? (gpu.loaded ? 'the backend loaded but reports no device' : 'the backend did not load'),
        software: false,
        memory_total: 0,
        memory_free: 0,
        bf16: false,
        dtypes: [],
        quant_types: [],
        train_dtypes: [],
        train_quant_types: [],
      });
    }
    this.reports = out;
    return out;
  }

  /**
   * Opens a device: `auto` (CUDA > Metal > Vulkan > CPU, real GPUs only), a kind (`cpu`, `cuda`,
   * `vulkan`, `metal`, or `mps` for Metal), or a device name (`Vulkan0`, `cuda1`, `CPU`).
   * Defaults to QTUNE_BACKEND, else `auto`.
   */
  select(request: string = process.env['QTUNE_BACKEND'] ?? 'auto'): Backend {
    const devices = this.devices();
    const req = request.trim().toLowerCase().replace(/^mps/, 'metal');
    let found: DeviceInfo | undefined;
    if (req === 'auto' || req === '') {
      for (const kind of AUTO_ORDER) {
        found = devices.find((d) => kindOf(d) === kind && !d.software);
        if (found) break;
      }
    } else if ((['cpu', 'cuda', 'metal', 'vulkan'] as string[]).includes(req)) {
      found = devices.find((d) => kindOf(d) === req);
    } else {
      const metalName = req.replace(/^metal/, 'mtl');
      found = devices.find((d) => d.name.toLowerCase() === req || d.name.toLowerCase() === metalName);
    }
    if (found === undefined) {
      const names = devices
        .map((d) => `${d.name} (${kindOf(d)}${d.software ? ', software' : ''})`)
        .join(', ');
      const missing = getEngine().info.gpuBackends.find((g) => req.startsWith(g.kind) && !g.loaded);
      throw new DeviceUnavailableError(`backend "${request}" is not available; available: ${names}`, {
        hint:
          missing?.note ??
          `choose one of them with --backend or QTUNE_BACKEND; GPU backends need their package (npm install @node-llama-cpp/<platform>-vulkan|cuda@${NODE_LLAMA_CPP_VERSION})`,
        details: { requested: request, available: devices.map((d) => d.name) },
      });
    }
    return openBackend(found);
  }

  /**
   * The devices `devices: auto` splits a model over: every device that is not a software renderer
   * (GPUs first, the CPU last). Software Vulkan (lavapipe) is used only when named.
   */
  usableDevices(): Backend[] {
    return this.devices()
      .filter((d) => !d.software)
      .map((d) => openBackend(d))
      .sort((a, b) => Number(a.isCpu) - Number(b.isCpu));
  }

  /** Sets the CPU thread count of every backend opened so far and of later ones. */
  setThreads(n: number): void {
    if (!Number.isInteger(n) || n < 1) {
      throw new QtuneError('INVALID_ARGUMENT', `threads=${n} is not a positive integer`, {
        hint: 'use 1 or more',
      });
    }
    getEngine().info.threads = n;
    for (const d of this.devices()) openBackend(d).setThreads(n);
  }

  /** Copies a whole set of tensors to another device; the original stays valid. */
  transfer(store: TensorStore, to: Backend): TensorStore {
    return store.to(to);
  }

  /** Copies one stored tensor to another device, into a store of its own (dispose it with `t.store.dispose()`). */
  copy(t: Tensor, to: Backend): Tensor {
    if (t.kind !== 'stored')
      throw new QtuneError('INVALID_ARGUMENT', `copy: ${t.toString()} is not a stored tensor`);
    if (!t.alive) throw new QtuneError('DISPOSED', `copy: the tensor store of ${t.toString()} was disposed`);
    const spec = { name: t.name || 't', shape: t.shape, dtype: t.dtype, requiresGrad: t.requiresGrad };
    const store = TensorStore.create(to, [spec]);
    const out = store.get(spec.name);
    store.copyFrom(out, t);
    return out;
  }
}

interface Capabilities {
  dtypes: FloatDType[];
  quant_types: QuantDType[];
  train_dtypes: FloatDType[];
  train_quant_types: QuantDType[];
}

/**
 * Builds, without allocating, the ops that a weight of each type takes part in, and asks the device
 * whether it supports them: forward = matmul and row lookup; backward = the input-gradient path of
 * `linear` (dequantize to f32 for quantized types, transpose, matmul).
 */
export function probeCapabilities(device: DeviceInfo): Capabilities {
  const { api } = getEngine();
  const backend = openBackend(device);
  const ctx = new NativeContext(512);
  const supported = (t: TensorPtr) => backend.supportsOp(t);
  try {
    const K = 256;
    const N = 64;
    const M = 8;
    const x = api.new_tensor_2d(ctx.ptr, GGML_TYPE_IDS.f32, K, M);
    const dy = api.new_tensor_2d(ctx.ptr, GGML_TYPE_IDS.f32, N, M);
    const ids = api.new_tensor_1d(ctx.ptr, GGML_TYPE_IDS.i32, M);
    const test = (dtype: DType): { forward: boolean; backward: boolean } => {
      if (!ctx.hasRoom(8)) throw new QtuneError('GRAPH', 'capability probe ran out of context space');
      const w = api.new_tensor_2d(ctx.ptr, GGML_TYPE_IDS[dtype], K, N);
      const forward = supported(api.mul_mat(ctx.ptr, w, x)) && supported(api.get_rows(ctx.ptr, w, ids));
      if (!forward) return { forward, backward: false };
      let src = w;
      if (!FLOAT_DTYPES.includes(dtype as FloatDType)) {
        // linear's input gradient dequantizes with a cast, or with a lookup of every row (see dequantize())
        src = api.cast(ctx.ptr, w, GGML_TYPE_IDS.f32);
        if (!supported(src)) src = api.get_rows(ctx.ptr, w, api.new_tensor_1d(ctx.ptr, GGML_TYPE_IDS.i32, N));
        if (!supported(src)) return { forward, backward: false };
      }
      const wt = api.cont(ctx.ptr, api.transpose(ctx.ptr, src));
      return { forward, backward: supported(wt) && supported(api.mul_mat(ctx.ptr, wt, dy)) };
    };
    const caps: Capabilities = { dtypes: [], quant_types: [], train_dtypes: [], train_quant_types: [] };
    for (const t of FLOAT_DTYPES) {
      const r = test(t);
      if (r.forward) caps.dtypes.push(t);
      if (r.backward) caps.train_dtypes.push(t);
    }
    for (const t of QUANT_DTYPES) {
      const r = test(t);
      if (r.forward) caps.quant_types.push(t);
      if (r.backward) caps.train_quant_types.push(t);
    }
    return caps;
  } finally {
    ctx.free();
  }
}
