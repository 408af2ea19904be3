/** Seeing a run: progress, metrics.jsonl, TensorBoard, Weights & Biases, the loss chart. */
export {
  CombinedLogger,
  createRunLoggers,
  LOG_TARGETS,
  LossChartLogger,
  TensorBoardLogger,
  type LogTarget,
  type RunLogger,
  type RunLoggersConfig,
} from './logger.js';
export { ConsoleProgress, formatDuration, type ConsoleProgressOptions, type TextSink } from './console.js';
export { METRICS_FILE, MetricsJsonl, metricsRow, type MetricsRow } from './jsonl.js';
export { TensorBoardWriter, crc32c, maskedCrc32c } from './tensorboard.js';
export { recordScalars, type Scalar } from './scalars.js';
export { renderLossPng, renderLossSvg, type LossPoint, type LossSeries } from './chart.js';
export { Canvas, encodePng } from './png.js';
// W&B: `await import('qtune/dist/src/report/wandb.js')` or through createRunLoggers (loaded on demand)
export type { WandbLoggerOptions } from './wandb.js';
