/**
 * Which device can run which quantization method, probed on each device with ggml's supports_op
 * (never written down by hand): `forward` = the matmul and row lookup of the method's type;
 * `train` = also the input-gradient path through a frozen weight of that type (what QLoRA needs).
 */
import { BackendManager, probeCapabilities } from '../backends/manager.js';
import type { DType } from '../engine/dtype.js';
import { METHODS, QUANT_METHODS, type QuantMethod } from './methods.js';

export interface MatrixEntry {
  device: string;
  kind: string;
  method: QuantMethod;
  bits: number;
  dtype: DType;
  forward: boolean;
  train: boolean;
}

export function compatibilityMatrix(manager = new BackendManager()): MatrixEntry[] {
  const out: MatrixEntry[] = [];
  const kinds = new Map(manager.report().map((r) => [r.name, r.kind]));
  for (const device of manager.devices()) {
    const caps = probeCapabilities(device);
    const fwd = new Set<DType>([...caps.dtypes, ...caps.quant_types]);
    const train = new Set<DType>([...caps.train_dtypes, ...caps.train_quant_types]);
    for (const method of QUANT_METHODS) {
      for (const [bits, dtype] of Object.entries(METHODS[method].dtypes) as [string, DType][]) {
        out.push({
          device: device.name,
          kind: kinds.get(device.name) ?? 'other',
          method,
          bits: Number(bits),
          dtype,
          forward: fwd.has(dtype),
          train: train.has(dtype),
        });
      }
    }
  }
  return out;
}
