/**
 * qtune's public API. See README.md for a tour.
 */
export * from './tensor/index.js';
export { AdamW, Adam, type AdamWOptions } from './optim/adamw.js';
export { SGD } from './optim/sgd.js';
export { Adadelta } from './optim/adadelta.js';
export { Lion } from './optim/lion.js';
export {
  createOptimizer,
  defaultDecays,
  OPTIMIZER_NAMES,
  type Optimizer,
  type OptimizerConfig,
  type OptimizerName,
} from './optim/optimizer.js';
export { createSchedule, SCHEDULE_NAMES, type Schedule, type ScheduleConfig } from './optim/schedule.js';
export { GradScaler, type GradScalerOptions } from './optim/grad-scaler.js';
export {
  Trainer,
  TrainingError,
  prepareModel,
  prepareModelWeights,
  quantizeForTraining,
  trainingLoadOptions,
  PRECISIONS,
  type LogRecord,
  type Precision,
  type PreparedModel,
  type PrepareOptions,
  type StepResult,
  type TrainerOptions,
  type CreateOptions,
  type Settings,
  type SettingChange,
  type TrainResult,
} from './train/trainer.js';
export type { SampleRecord, StopOptions, TrainerEvents } from './train/control.js';
export type { EvalGeneration, EvalPrompt, EvalPromptFormat } from './train/samples.js';
export { dataFingerprint, type DataFingerprint } from './data/fingerprint.js';
export { Evaluator, type Evaluation } from './train/evaluate.js';
export { OBJECTIVES, type ObjectiveName, type WeightedMicroBatch } from './train/objective.js';
export type { WeightedStepOptions } from './train/objective.js';
export type { TokenLogProbOptions } from './train/logprobs.js';
export type { ForwardSetup } from './train/forward.js';
export { Batches, type BatchOptions, type Collated } from './data/batches.js';
export { LoraLayers, LINEAR_MODULES, type LoraOptions } from './peft/lora.js';
export { LoraLinear, fuseLora, type LoraShape } from './peft/lora-linear.js';
export { resolveTrainType, TRAIN_TYPES, type ResolvedTrainType } from './train/train-type.js';
export { expandModel, planExpansion, readExpansion, type Expansion } from './peft/expand.js';
export type { DeviceMemory, MemoryReport } from './train/memory.js';
export {
  StepProfiler,
  chromeTrace,
  formatProfile,
  groupNodes,
  writeProfileTrace,
  type ProfileFormat,
  type ProfileOptions,
  type ProfileRow,
  type StepGraph,
  type StepProfile,
} from './train/profile.js';
export { savePeftAdapter, loadPeftAdapter } from './peft/peft.js';
export { saveGgufLoraAdapter, loadGgufLoraAdapter } from './peft/gguf-lora.js';
export { saveMlxAdapter, mlxAdapterConfig, MLX_LM_VERSION } from './peft/mlx-lora.js';
export { mergeAdapter } from './peft/merge.js';
export { saveModel } from './models/save.js';
export { loadAdapter, createAdapterHook, type AdapterHook } from './peft/apply.js';
export { loraScale, type LoraAdapterData, type LoraModule } from './peft/lora-weights.js';
export { BackendManager, probeCapabilities, type DeviceKind, type DeviceReport } from './backends/manager.js';
export { Backend, cpuBackend, listDevices, openBackend, type DeviceInfo } from './engine/device.js';
export { getEngine, type EngineInfo } from './engine/library.js';
export { buildNativeEngine, cleanNativeEngines } from './engine/native-build.js';
export { nativeMemory, setMemoryLimit, memoryLimit, formatBytes } from './engine/memory.js';
export type { DType, FloatDType, QuantDType } from './engine/dtype.js';
export { FLOAT_DTYPES, QUANT_DTYPES } from './engine/dtype.js';
export * from './errors.js';
export { trainQloraMlp } from './demo/qlora-mlp.js';
export {
  loadModel,
  loadWeights,
  readConfig,
  type DeviceRequest,
  type LoadOptions,
  type LoadedModel,
  type LoadStrategy,
} from './models/load.js';
export {
  LlamaModel,
  KVCache,
  llamaWeights,
  type ForwardOptions,
  type LinearHook,
  type WeightSpec,
} from './models/llama.js';
export {
  planDeviceMap,
  describeDeviceMap,
  deviceBudget,
  singleDeviceMap,
  type DeviceMap,
  type DevicePlanOptions,
} from './models/device-map.js';
export { parseLlamaConfig, configToJson, type LlamaConfig, type ModelType } from './models/config.js';
export { generate, sampleToken, type GenerateOptions, type GenerateResult } from './models/generate.js';
export { createTinyModel, type TinyModelOptions, type TinyTokenizer } from './models/tiny.js';
export { writeLlamaGguf } from './models/llama-gguf.js';
export { Tokenizer, DEFAULT_CHAT_TEMPLATE, type ChatMessage } from './io/tokenizer.js';
export { SafetensorsFile, SafetensorsCheckpoint, writeSafetensors } from './io/safetensors.js';
export { readGguf, readGgufTensor, writeGguf } from './io/gguf.js';
export { downloadModel, downloadDataset } from './io/hub.js';
export {
  loadDataset,
  validateDatasetConfig,
  recordsToExamples,
  type DatasetConfig,
  type ResolvedDatasetConfig,
} from './data/dataset.js';
export {
  DATASET_FORMATS,
  FORMAT_FIELDS,
  recordSample,
  dummyRecords,
  type DatasetFormat,
} from './data/formats.js';
export { loadRecords, readRecords, type DataRecord } from './data/records.js';
export type { Example, TrainData } from './data/example.js';
export { packSamples, packedAttentionMask } from './data/packing.js';
export { tokenizeChat, tokenizeParts, toExample, type Sample, type TextPart } from './data/tokenize.js';
export {
  METHODS,
  QUANT_METHODS,
  methodDType,
  recommendQuantization,
  type QuantMethod,
} from './quant/methods.js';
export {
  validateQuantizationConfig,
  modulePlan,
  type QuantizationConfig,
  type ConfigProblem,
} from './quant/config.js';
export { quantizeValues, QuantizedLinear } from './quant/linear.js';
export { createQuantizer, type Quantizer, type QuantizeReport } from './train/quantize.js';
export { compatibilityMatrix, type MatrixEntry } from './quant/matrix.js';
export { hqqQuantize } from './quant/hqq.js';
export * from './report/index.js';
export { splitGlobalBatch, shareOf, type Collectives, type BatchSplit } from './train/parallel.js';
export {
  connect,
  launchedUnderMpi,
  SingleProcess,
  MpiCommunicator,
  MpiLibrary,
  MpiError,
  MpiUnavailableError,
  TIMEOUT_EXIT_CODE,
  type Communicator,
} from './dist/index.js';
export { GrpoObjective, resolveGrpoOptions, type GrpoOptions, type GrpoSettings } from './train/grpo.js';
export type { CompletionSample, GrpoTrainer } from './train/grpo.js';
export { groupAdvantages, grpoLoss, sampleStd, GRPO_LOSS_TYPES, SCALE_REWARDS } from './train/grpo-loss.js';
export type {
  GrpoLoss,
  GrpoLossOptions,
  GrpoLossType,
  GrpoSequence,
  ScaleRewards,
} from './train/grpo-loss.js';
export {
  exactMatchReward,
  formatReward,
  loadRewardFunctions,
  matches,
  scoreCompletions,
} from './train/rewards.js';
export type { NamedReward, RewardFn, RewardRecord } from './train/rewards.js';
export { isPromptExample, loadPromptDataset, promptExamples, recordPrompt } from './data/prompts.js';
export type { Prompt, PromptDatasetConfig, PromptExample } from './data/prompts.js';
export { padId } from './data/tokenize.js';
