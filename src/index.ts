/**
 * qtune's public API. See README.md for a tour.
 */
export * from './tensor/index.js';
export { AdamW, type AdamWOptions } from './optim/adamw.js';
export { BackendManager, probeCapabilities, type DeviceKind, type DeviceReport } from './backends/manager.js';
export { Backend, cpuBackend, listDevices, openBackend, type DeviceInfo } from './engine/device.js';
export { getEngine, type EngineInfo } from './engine/library.js';
export { buildNativeEngine, cleanNativeEngines } from './engine/native-build.js';
export { nativeMemory } from './engine/memory.js';
export type { DType, FloatDType, QuantDType } from './engine/dtype.js';
export { FLOAT_DTYPES, QUANT_DTYPES } from './engine/dtype.js';
export * from './errors.js';
export { trainQloraMlp } from './demo/qlora-mlp.js';
