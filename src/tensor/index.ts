export { Graph, type BackwardRule, type GraphNode, type GraphOptions, type NodeLabel } from './graph.js';
export { calibrateOverhead, nodeFlops, profileRun, type GraphProfile, type ProfiledNode } from './profile.js';
export { Tensor, type TensorKind } from './tensor.js';
export { TensorStore, type TensorSpec } from './store.js';
export { StoreGroup, type PlacedSpec } from './store-group.js';
export { numel, broadcastShapes, type Shape } from './shape.js';
export { blockSize, rowBytes, tensorBytes, encode, decode } from './host.js';
export {
  add,
  sub,
  mul,
  div,
  scale,
  affine,
  neg,
  sqr,
  sqrt,
  exp,
  log,
  expand,
  reduceTo,
} from './ops/elementwise.js';
export {
  reshape,
  view,
  permute,
  transpose,
  contiguous,
  concat,
  slice,
  cast,
  sum,
  mean,
} from './ops/layout.js';
export { linear, matmul } from './ops/matmul.js';
export {
  embedding,
  rmsNorm,
  rope,
  llama3FreqFactors,
  softmax,
  softcap,
  silu,
  swiglu,
  gelu,
  dropout,
  dropoutMask,
  type RopeOptions,
  type SoftmaxOptions,
} from './ops/nn.js';
export {
  DEFAULT_CHUNK_TOKENS,
  crossEntropy,
  linearCrossEntropy,
  type CrossEntropyOptions,
  type LinearCrossEntropyOptions,
} from './ops/loss.js';
export { checkpoint } from './checkpoint.js';
export { attachTransposed, type TransposedMode } from './transposed.js';
