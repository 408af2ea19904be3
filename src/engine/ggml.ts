/**
 * The ggml C API as koffi sees it: the functions of `ggml.h`, `ggml-backend.h`, `ggml-alloc.h` that
 * qtune calls, declared against the pinned release (llama.cpp v0.5.0, ggml 0.25.1).
 *
 * Handles are opaque koffi pointers with distinct types, so passing a tensor where a context is
 * expected fails in koffi, not in C. Nothing outside `src/engine` imports koffi.
 */
import koffi, { type KoffiFunc, type LibraryHandle, type TypeObject } from 'koffi';

/** Opaque native handles. The brand keeps them apart in TypeScript as koffi keeps them apart at run time. */
export type Handle<Tag extends string> = { readonly __handle: Tag };
export type CtxPtr = Handle<'ggml_context'>;
export type TensorPtr = Handle<'ggml_tensor'>;
export type GraphPtr = Handle<'ggml_cgraph'>;
export type BackendPtr = Handle<'ggml_backend'>;
export type BufferPtr = Handle<'ggml_backend_buffer'>;
export type BufferTypePtr = Handle<'ggml_backend_buffer_type'>;
export type DevicePtr = Handle<'ggml_backend_device'>;
export type RegPtr = Handle<'ggml_backend_reg'>;
export type GallocrPtr = Handle<'ggml_gallocr'>;
export type SchedPtr = Handle<'ggml_backend_sched'>;
export type FnPtr = Handle<'fn'>;

/** Bytes a host array may hand to C. */
export type HostData = ArrayBufferView;

koffi.opaque('ggml_context');
koffi.opaque('ggml_tensor');
koffi.opaque('ggml_cgraph');
koffi.opaque('ggml_backend');
koffi.opaque('ggml_backend_buffer');
koffi.opaque('ggml_backend_buffer_type');
koffi.opaque('ggml_backend_device');
koffi.opaque('ggml_backend_reg');
koffi.opaque('ggml_gallocr');
koffi.opaque('ggml_backend_sched');

koffi.struct('ggml_init_params', { mem_size: 'size_t', mem_buffer: 'void *', no_alloc: 'bool' });

export const GGML_MAX_DIMS = 4;
export const GGML_MAX_SRC = 10;
export const GGML_MAX_OP_PARAMS = 64;
export const GGML_MAX_NAME = 64;

/** `struct ggml_tensor` (ggml.h). Only read to check the layout and a tensor's sizes. */
export const TensorStruct = koffi.struct('ggml_tensor_layout', {
  type: 'int32_t',
  buffer: 'void *',
  ne: koffi.array('int64_t', GGML_MAX_DIMS),
  nb: koffi.array('size_t', GGML_MAX_DIMS),
  op: 'int32_t',
  op_params: koffi.array('int32_t', GGML_MAX_OP_PARAMS / 4),
  flags: 'int32_t',
  src: koffi.array('void *', GGML_MAX_SRC),
  view_src: 'void *',
  view_offs: 'size_t',
  data: 'void *',
  name: koffi.array('char', GGML_MAX_NAME, 'String'),
  extra: 'void *',
  padding: koffi.array('char', 8),
});

/** The head of `struct ggml_cgraph` (ggml-impl.h): its capacity and how many nodes and leafs it holds. */
export const CGraphHeadStruct = koffi.struct('ggml_cgraph_head', {
  size: 'int',
  n_nodes: 'int',
  n_leafs: 'int',
});

/**
 * The whole of `struct ggml_cgraph` (ggml-impl.h), which `ggml_graph_view` returns by value: a view of
 * nodes [i0, i1) that shares the graph's node array. Only the profiler uses it (src/engine/profile.ts).
 */
export const CGraphStruct = koffi.struct('ggml_cgraph_full', {
  size: 'int',
  n_nodes: 'int',
  n_leafs: 'int',
  nodes: 'void *',
  grads: 'void *',
  grad_accs: 'void *',
  leafs: 'void *',
  use_counts: 'void *',
  visited_hash_set: koffi.struct('ggml_hash_set_layout', { size: 'size_t', used: 'void *', keys: 'void *' }),
  order: 'int',
  uid: 'uint64_t',
});

/** `enum ggml_backend_buffer_usage`: the scheduler runs ops next to tensors in WEIGHTS buffers. */
export const BUFFER_USAGE_WEIGHTS = 1;

/** `struct ggml_object` precedes every tensor in a context: offs, size, next, type + padding. */
export const GGML_OBJECT_SIZE = 32;

export const DevPropsStruct = koffi.struct('ggml_backend_dev_props', {
  name: 'const char *',
  description: 'const char *',
  memory_free: 'size_t',
  memory_total: 'size_t',
  type: 'int',
  device_id: 'const char *',
  caps: koffi.struct({
    async: 'bool',
    host_buffer: 'bool',
    buffer_from_host_ptr: 'bool',
    events: 'bool',
    mmap_support: 'bool',
  }),
});

export const TypeTraitsStruct = koffi.struct('ggml_type_traits', {
  type_name: 'const char *',
  blck_size: 'int64_t',
  blck_size_interleave: 'int64_t',
  type_size: 'size_t',
  is_quantized: 'bool',
  to_float: 'void *',
  from_float_ref: 'void *',
});

export const FeatureStruct = koffi.struct('ggml_backend_feature', {
  name: 'const char *',
  value: 'const char *',
});

export const SetNThreadsProto = koffi.proto('void qtune_set_n_threads_t(ggml_backend *backend, int n)');
export const GetExtraBuftsProto = koffi.proto('void *qtune_get_extra_bufts_t(ggml_backend_device *dev)');
export const GetFeaturesProto = koffi.proto('void *qtune_get_features_t(ggml_backend_reg *reg)');
export const ToFloatProto = koffi.proto('void qtune_to_float_t(const void *x, _Out_ float *y, int64_t k)');
export const ScoreProto = koffi.proto('int qtune_backend_score_t()');
export const LogCallbackProto = koffi.proto('void qtune_log_cb(int level, const char *text, void *user)');

type Ctx = CtxPtr;
type T = TensorPtr;
type N = number; // int / int64 / size_t / float arguments

/** The typed API. Each member is the C function of the same name without the `ggml_` prefix. */
export interface GgmlApi {
  // library
  version(): string;
  commit(): string;
  log_set(cb: unknown, user: null): void;
  tensor_overhead(): N;
  graph_overhead_custom(size: N, grads: boolean): N;
  type_name(type: N): string;
  blck_size(type: N): N;
  type_size(type: N): N;
  row_size(type: N, ne: N): N;
  is_quantized(type: N): boolean;
  get_type_traits(type: N): unknown;
  quantize_chunk(
    type: N,
    src: Float32Array,
    dst: HostData,
    start: N,
    nrows: N,
    n_per_row: N,
    imatrix: Float32Array | null,
  ): N;
  quantize_requires_imatrix(type: N): boolean;
  validate_row_data(type: N, data: HostData, nbytes: N): boolean;
  fp16_to_fp32_row(src: HostData, dst: Float32Array, n: N): void;
  fp32_to_fp16_row(src: Float32Array, dst: HostData, n: N): void;
  bf16_to_fp32_row(src: HostData, dst: Float32Array, n: N): void;
  fp32_to_bf16_row(src: Float32Array, dst: HostData, n: N): void;

  // contexts and tensors
  init(params: { mem_size: N; mem_buffer: null; no_alloc: boolean }): Ctx | null;
  free(ctx: Ctx): void;
  used_mem(ctx: Ctx): N;
  get_mem_size(ctx: Ctx): N;
  new_tensor_1d(ctx: Ctx, type: N, ne0: N): T;
  new_tensor_2d(ctx: Ctx, type: N, ne0: N, ne1: N): T;
  new_tensor_3d(ctx: Ctx, type: N, ne0: N, ne1: N, ne2: N): T;
  new_tensor_4d(ctx: Ctx, type: N, ne0: N, ne1: N, ne2: N, ne3: N): T;
  set_name(t: T, name: string): T;
  get_name(t: T): string;
  op_desc(t: T): string;
  nbytes(t: T): N;
  nelements(t: T): N;
  nrows(t: T): N;
  element_size(t: T): N;
  is_contiguous(t: T): boolean;
  get_data(t: T): unknown;
  set_input(t: T): void;
  set_output(t: T): void;
  set_param(t: T): void;

  // ops (see ggml.h for each one's contract)
  dup_tensor(ctx: Ctx, a: T): T;
  add(ctx: Ctx, a: T, b: T): T;
  sub(ctx: Ctx, a: T, b: T): T;
  mul(ctx: Ctx, a: T, b: T): T;
  div(ctx: Ctx, a: T, b: T): T;
  sqr(ctx: Ctx, a: T): T;
  sqrt(ctx: Ctx, a: T): T;
  log(ctx: Ctx, a: T): T;
  exp(ctx: Ctx, a: T): T;
  tanh(ctx: Ctx, a: T): T;
  neg(ctx: Ctx, a: T): T;
  sgn(ctx: Ctx, a: T): T;
  step(ctx: Ctx, a: T): T;
  sum(ctx: Ctx, a: T): T;
  sum_rows(ctx: Ctx, a: T): T;
  mean(ctx: Ctx, a: T): T;
  argmax(ctx: Ctx, a: T): T;
  repeat(ctx: Ctx, a: T, b: T): T;
  repeat_back(ctx: Ctx, a: T, b: T): T;
  concat(ctx: Ctx, a: T, b: T, dim: N): T;
  scale(ctx: Ctx, a: T, s: N): T;
  scale_bias(ctx: Ctx, a: T, s: N, b: N): T;
  fill(ctx: Ctx, a: T, c: N): T;
  clamp(ctx: Ctx, a: T, min: N, max: N): T;
  silu(ctx: Ctx, a: T): T;
  silu_back(ctx: Ctx, a: T, b: T): T;
  gelu(ctx: Ctx, a: T): T;
  gelu_erf(ctx: Ctx, a: T): T;
  swiglu_split(ctx: Ctx, a: T, b: T): T;
  rms_norm(ctx: Ctx, a: T, eps: N): T;
  rms_norm_back(ctx: Ctx, a: T, b: T, eps: N): T;
  mul_mat(ctx: Ctx, a: T, b: T): T;
  out_prod(ctx: Ctx, a: T, b: T): T;
  cpy(ctx: Ctx, a: T, b: T): T;
  opt_step_adamw(ctx: Ctx, a: T, grad: T, m: T, v: T, params: T): T;
  cast(ctx: Ctx, a: T, type: N): T;
  cont(ctx: Ctx, a: T): T;
  reshape_1d(ctx: Ctx, a: T, ne0: N): T;
  reshape_2d(ctx: Ctx, a: T, ne0: N, ne1: N): T;
  reshape_3d(ctx: Ctx, a: T, ne0: N, ne1: N, ne2: N): T;
  reshape_4d(ctx: Ctx, a: T, ne0: N, ne1: N, ne2: N, ne3: N): T;
  view_4d(ctx: Ctx, a: T, ne0: N, ne1: N, ne2: N, ne3: N, nb1: N, nb2: N, nb3: N, offset: N): T;
  permute(ctx: Ctx, a: T, ax0: N, ax1: N, ax2: N, ax3: N): T;
  transpose(ctx: Ctx, a: T): T;
  get_rows(ctx: Ctx, a: T, b: T): T;
  get_rows_back(ctx: Ctx, a: T, b: T, c: T): T;
  set_rows(ctx: Ctx, a: T, b: T, c: T): T;
  diag_mask_inf(ctx: Ctx, a: T, n_past: N): T;
  soft_max_ext(ctx: Ctx, a: T, mask: T | null, scale: N, max_bias: N): T;
  soft_max_ext_back(ctx: Ctx, a: T, b: T, scale: N, max_bias: N): T;
  rope_ext(
    ctx: Ctx,
    a: T,
    b: T,
    c: T | null,
    n_dims: N,
    mode: N,
    n_ctx_orig: N,
    freq_base: N,
    freq_scale: N,
    ext_factor: N,
    attn_factor: N,
    beta_fast: N,
    beta_slow: N,
  ): T;
  rope_ext_back(
    ctx: Ctx,
    a: T,
    b: T,
    c: T | null,
    n_dims: N,
    mode: N,
    n_ctx_orig: N,
    freq_base: N,
    freq_scale: N,
    ext_factor: N,
    attn_factor: N,
    beta_fast: N,
    beta_slow: N,
  ): T;
  pad_ext(ctx: Ctx, a: T, lp0: N, rp0: N, lp1: N, rp1: N, lp2: N, rp2: N, lp3: N, rp3: N): T;

  // graphs
  new_graph_custom(ctx: Ctx, size: N, grads: boolean): GraphPtr;
  build_forward_expand(g: GraphPtr, t: T): void;
  graph_n_nodes(g: GraphPtr): N;
  graph_node(g: GraphPtr, i: N): T;
  /** A view of nodes [i0, i1) (ggml-impl.h), returned by value as a {@link CGraphStruct} object. */
  graph_view(g: GraphPtr, i0: N, i1: N): Record<string, unknown>;
  op_name(op: N): string;

  // allocation
  gallocr_new(buft: BufferTypePtr): GallocrPtr | null;
  gallocr_free(g: GallocrPtr): void;
  gallocr_reserve(g: GallocrPtr, graph: GraphPtr): boolean;
  gallocr_alloc_graph(g: GallocrPtr, graph: GraphPtr): boolean;
  gallocr_get_buffer_size(g: GallocrPtr, id: N): N;
  /** The buffer size gallocr_reserve would allocate for a graph, without allocating it. */
  gallocr_reserve_n_size(
    g: GallocrPtr,
    graph: GraphPtr,
    nodeIds: null,
    leafIds: null,
    sizes: [number | bigint | null],
  ): void;
  backend_alloc_ctx_tensors_from_buft(ctx: Ctx, buft: BufferTypePtr): BufferPtr | null;
  /** The bytes backend_alloc_ctx_tensors_from_buft would allocate, without allocating them. */
  backend_alloc_ctx_tensors_from_buft_size(ctx: Ctx, buft: BufferTypePtr): N;

  // backend: buffers
  backend_buft_name(buft: BufferTypePtr): string;
  backend_buft_is_host(buft: BufferTypePtr): boolean;
  backend_buft_get_alignment(buft: BufferTypePtr): N;
  backend_buffer_free(buf: BufferPtr): void;
  backend_buffer_get_size(buf: BufferPtr): N;
  backend_buffer_clear(buf: BufferPtr, value: N): void;
  backend_buffer_get_type(buf: BufferPtr): BufferTypePtr;
  backend_buffer_name(buf: BufferPtr): string;
  backend_buffer_set_usage(buf: BufferPtr, usage: N): void;
  backend_tensor_set(t: T, data: HostData, offset: N, size: N): void;
  backend_tensor_get(t: T, data: HostData, offset: N, size: N): void;
  backend_tensor_copy(src: T, dst: T): void;
  backend_tensor_memset(t: T, value: N, offset: N, size: N): void;

  // backend: backends, devices, registry
  backend_name(b: BackendPtr): string;
  backend_free(b: BackendPtr): void;
  backend_get_default_buffer_type(b: BackendPtr): BufferTypePtr;
  backend_graph_compute(b: BackendPtr, g: GraphPtr): N;
  backend_synchronize(b: BackendPtr): void;
  backend_get_device(b: BackendPtr): DevicePtr;
  backend_dev_name(d: DevicePtr): string;
  backend_dev_description(d: DevicePtr): string;
  backend_dev_memory(d: DevicePtr, free: [number | bigint | null], total: [number | bigint | null]): void;
  backend_dev_type(d: DevicePtr): N;
  backend_dev_get_props(d: DevicePtr, props: Record<string, unknown>): void;
  backend_dev_backend_reg(d: DevicePtr): RegPtr;
  backend_dev_init(d: DevicePtr, params: string | null): BackendPtr | null;
  backend_dev_buffer_type(d: DevicePtr): BufferTypePtr;
  backend_dev_supports_op(d: DevicePtr, op: T): boolean;
  backend_dev_supports_buft(d: DevicePtr, buft: BufferTypePtr): boolean;
  backend_reg_name(r: RegPtr): string;
  backend_reg_get_proc_address(r: RegPtr, name: string): FnPtr | null;
  backend_reg_count(): N;
  backend_reg_get(i: N): RegPtr;
  backend_dev_count(): N;
  backend_dev_get(i: N): DevicePtr;
  backend_load(path: string): RegPtr | null;

  // scheduler (several backends over one graph)
  backend_sched_new(
    backends: BackendPtr[],
    bufts: BufferTypePtr[] | null,
    n: N,
    graphSize: N,
    parallel: boolean,
    opOffload: boolean,
  ): SchedPtr | null;
  backend_sched_free(s: SchedPtr): void;
  backend_sched_alloc_graph(s: SchedPtr, g: GraphPtr): boolean;
  backend_sched_graph_compute(s: SchedPtr, g: GraphPtr): N;
  backend_sched_reset(s: SchedPtr): void;
  backend_sched_set_tensor_backend(s: SchedPtr, t: T, b: BackendPtr): void;
  backend_sched_get_tensor_backend(s: SchedPtr, t: T): BackendPtr | null;
  backend_sched_get_buffer_size(s: SchedPtr, b: BackendPtr): N;
  backend_sched_get_n_splits(s: SchedPtr): N;
}

/** C declarations, `ggml_` prefix and all; the key of each is the member of {@link GgmlApi}. */
const BASE_DECLS: Record<keyof GgmlApi, string> = {
  version: 'const char *ggml_version()',
  commit: 'const char *ggml_commit()',
  log_set: 'void ggml_log_set(qtune_log_cb *cb, void *user)',
  tensor_overhead: 'size_t ggml_tensor_overhead()',
  graph_overhead_custom: 'size_t ggml_graph_overhead_custom(size_t size, bool grads)',
  type_name: 'const char *ggml_type_name(int type)',
  blck_size: 'int64_t ggml_blck_size(int type)',
  type_size: 'size_t ggml_type_size(int type)',
  row_size: 'size_t ggml_row_size(int type, int64_t ne)',
  is_quantized: 'bool ggml_is_quantized(int type)',
  get_type_traits: 'const ggml_type_traits *ggml_get_type_traits(int type)',
  quantize_chunk:
    'size_t ggml_quantize_chunk(int type, const float *src, _Out_ void *dst, int64_t start, int64_t nrows, int64_t n_per_row, const float *imatrix)',
  quantize_requires_imatrix: 'bool ggml_quantize_requires_imatrix(int type)',
  validate_row_data: 'bool ggml_validate_row_data(int type, const void *data, size_t nbytes)',
  fp16_to_fp32_row: 'void ggml_fp16_to_fp32_row(const void *x, _Out_ float *y, int64_t n)',
  fp32_to_fp16_row: 'void ggml_fp32_to_fp16_row(const float *x, _Out_ void *y, int64_t n)',
  bf16_to_fp32_row: 'void ggml_bf16_to_fp32_row(const void *x, _Out_ float *y, int64_t n)',
  fp32_to_bf16_row: 'void ggml_fp32_to_bf16_row(const float *x, _Out_ void *y, int64_t n)',

  init: 'ggml_context *ggml_init(ggml_init_params params)',
  free: 'void ggml_free(ggml_context *ctx)',
  used_mem: 'size_t ggml_used_mem(const ggml_context *ctx)',
  get_mem_size: 'size_t ggml_get_mem_size(const ggml_context *ctx)',
  new_tensor_1d: 'ggml_tensor *ggml_new_tensor_1d(ggml_context *ctx, int type, int64_t ne0)',
  new_tensor_2d: 'ggml_tensor *ggml_new_tensor_2d(ggml_context *ctx, int type, int64_t ne0, int64_t ne1)',
  new_tensor_3d:
    'ggml_tensor *ggml_new_tensor_3d(ggml_context *ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2)',
  new_tensor_4d:
    'ggml_tensor *ggml_new_tensor_4d(ggml_context *ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3)',
  set_name: 'ggml_tensor *ggml_set_name(ggml_tensor *t, const char *name)',
  get_name: 'const char *ggml_get_name(const ggml_tensor *t)',
  op_desc: 'const char *ggml_op_desc(const ggml_tensor *t)',
  nbytes: 'size_t ggml_nbytes(const ggml_tensor *t)',
  nelements: 'int64_t ggml_nelements(const ggml_tensor *t)',
  nrows: 'int64_t ggml_nrows(const ggml_tensor *t)',
  element_size: 'size_t ggml_element_size(const ggml_tensor *t)',
  is_contiguous: 'bool ggml_is_contiguous(const ggml_tensor *t)',
  get_data: 'void *ggml_get_data(const ggml_tensor *t)',
  set_input: 'void ggml_set_input(ggml_tensor *t)',
  set_output: 'void ggml_set_output(ggml_tensor *t)',
  set_param: 'void ggml_set_param(ggml_tensor *t)',

  dup_tensor: 'ggml_tensor *ggml_dup_tensor(ggml_context *ctx, const ggml_tensor *a)',
  add: 'ggml_tensor *ggml_add(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  sub: 'ggml_tensor *ggml_sub(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  mul: 'ggml_tensor *ggml_mul(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  div: 'ggml_tensor *ggml_div(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  sqr: 'ggml_tensor *ggml_sqr(ggml_context *ctx, ggml_tensor *a)',
  sqrt: 'ggml_tensor *ggml_sqrt(ggml_context *ctx, ggml_tensor *a)',
  log: 'ggml_tensor *ggml_log(ggml_context *ctx, ggml_tensor *a)',
  exp: 'ggml_tensor *ggml_exp(ggml_context *ctx, ggml_tensor *a)',
  tanh: 'ggml_tensor *ggml_tanh(ggml_context *ctx, ggml_tensor *a)',
  neg: 'ggml_tensor *ggml_neg(ggml_context *ctx, ggml_tensor *a)',
  sgn: 'ggml_tensor *ggml_sgn(ggml_context *ctx, ggml_tensor *a)',
  step: 'ggml_tensor *ggml_step(ggml_context *ctx, ggml_tensor *a)',
  sum: 'ggml_tensor *ggml_sum(ggml_context *ctx, ggml_tensor *a)',
  sum_rows: 'ggml_tensor *ggml_sum_rows(ggml_context *ctx, ggml_tensor *a)',
  mean: 'ggml_tensor *ggml_mean(ggml_context *ctx, ggml_tensor *a)',
  argmax: 'ggml_tensor *ggml_argmax(ggml_context *ctx, ggml_tensor *a)',
  repeat: 'ggml_tensor *ggml_repeat(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  repeat_back: 'ggml_tensor *ggml_repeat_back(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  concat: 'ggml_tensor *ggml_concat(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, int dim)',
  scale: 'ggml_tensor *ggml_scale(ggml_context *ctx, ggml_tensor *a, float s)',
  scale_bias: 'ggml_tensor *ggml_scale_bias(ggml_context *ctx, ggml_tensor *a, float s, float b)',
  fill: 'ggml_tensor *ggml_fill(ggml_context *ctx, ggml_tensor *a, float c)',
  clamp: 'ggml_tensor *ggml_clamp(ggml_context *ctx, ggml_tensor *a, float min, float max)',
  silu: 'ggml_tensor *ggml_silu(ggml_context *ctx, ggml_tensor *a)',
  silu_back: 'ggml_tensor *ggml_silu_back(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  gelu: 'ggml_tensor *ggml_gelu(ggml_context *ctx, ggml_tensor *a)',
  gelu_erf: 'ggml_tensor *ggml_gelu_erf(ggml_context *ctx, ggml_tensor *a)',
  swiglu_split: 'ggml_tensor *ggml_swiglu_split(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  rms_norm: 'ggml_tensor *ggml_rms_norm(ggml_context *ctx, ggml_tensor *a, float eps)',
  rms_norm_back:
    'ggml_tensor *ggml_rms_norm_back(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, float eps)',
  mul_mat: 'ggml_tensor *ggml_mul_mat(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  out_prod: 'ggml_tensor *ggml_out_prod(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  cpy: 'ggml_tensor *ggml_cpy(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  opt_step_adamw:
    'ggml_tensor *ggml_opt_step_adamw(ggml_context *ctx, ggml_tensor *a, ggml_tensor *grad, ggml_tensor *m, ggml_tensor *v, ggml_tensor *adamw_params)',
  cast: 'ggml_tensor *ggml_cast(ggml_context *ctx, ggml_tensor *a, int type)',
  cont: 'ggml_tensor *ggml_cont(ggml_context *ctx, ggml_tensor *a)',
  reshape_1d: 'ggml_tensor *ggml_reshape_1d(ggml_context *ctx, ggml_tensor *a, int64_t ne0)',
  reshape_2d: 'ggml_tensor *ggml_reshape_2d(ggml_context *ctx, ggml_tensor *a, int64_t ne0, int64_t ne1)',
  reshape_3d:
    'ggml_tensor *ggml_reshape_3d(ggml_context *ctx, ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2)',
  reshape_4d:
    'ggml_tensor *ggml_reshape_4d(ggml_context *ctx, ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3)',
  view_4d:
    'ggml_tensor *ggml_view_4d(ggml_context *ctx, ggml_tensor *a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3, size_t nb1, size_t nb2, size_t nb3, size_t offset)',
  permute: 'ggml_tensor *ggml_permute(ggml_context *ctx, ggml_tensor *a, int ax0, int ax1, int ax2, int ax3)',
  transpose: 'ggml_tensor *ggml_transpose(ggml_context *ctx, ggml_tensor *a)',
  get_rows: 'ggml_tensor *ggml_get_rows(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b)',
  get_rows_back:
    'ggml_tensor *ggml_get_rows_back(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, ggml_tensor *c)',
  set_rows: 'ggml_tensor *ggml_set_rows(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, ggml_tensor *c)',
  diag_mask_inf: 'ggml_tensor *ggml_diag_mask_inf(ggml_context *ctx, ggml_tensor *a, int n_past)',
  soft_max_ext:
    'ggml_tensor *ggml_soft_max_ext(ggml_context *ctx, ggml_tensor *a, ggml_tensor *mask, float scale, float max_bias)',
  soft_max_ext_back:
    'ggml_tensor *ggml_soft_max_ext_back(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, float scale, float max_bias)',
  rope_ext:
    'ggml_tensor *ggml_rope_ext(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, ggml_tensor *c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)',
  rope_ext_back:
    'ggml_tensor *ggml_rope_ext_back(ggml_context *ctx, ggml_tensor *a, ggml_tensor *b, ggml_tensor *c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)',
  pad_ext:
    'ggml_tensor *ggml_pad_ext(ggml_context *ctx, ggml_tensor *a, int lp0, int rp0, int lp1, int rp1, int lp2, int rp2, int lp3, int rp3)',

  new_graph_custom: 'ggml_cgraph *ggml_new_graph_custom(ggml_context *ctx, size_t size, bool grads)',
  build_forward_expand: 'void ggml_build_forward_expand(ggml_cgraph *g, ggml_tensor *t)',
  graph_n_nodes: 'int ggml_graph_n_nodes(ggml_cgraph *g)',
  graph_node: 'ggml_tensor *ggml_graph_node(ggml_cgraph *g, int i)',
  graph_view: 'ggml_cgraph_full ggml_graph_view(ggml_cgraph *g, int i0, int i1)',
  op_name: 'const char *ggml_op_name(int op)',

  gallocr_new: 'ggml_gallocr *ggml_gallocr_new(ggml_backend_buffer_type *buft)',
  gallocr_free: 'void ggml_gallocr_free(ggml_gallocr *g)',
  gallocr_reserve: 'bool ggml_gallocr_reserve(ggml_gallocr *g, ggml_cgraph *graph)',
  gallocr_alloc_graph: 'bool ggml_gallocr_alloc_graph(ggml_gallocr *g, ggml_cgraph *graph)',
  gallocr_get_buffer_size: 'size_t ggml_gallocr_get_buffer_size(ggml_gallocr *g, int id)',
  gallocr_reserve_n_size:
    'void ggml_gallocr_reserve_n_size(ggml_gallocr *g, ggml_cgraph *graph, const int *node_ids, const int *leaf_ids, _Out_ size_t *sizes)',
  backend_alloc_ctx_tensors_from_buft:
    'ggml_backend_buffer *ggml_backend_alloc_ctx_tensors_from_buft(ggml_context *ctx, ggml_backend_buffer_type *buft)',
  backend_alloc_ctx_tensors_from_buft_size:
    'size_t ggml_backend_alloc_ctx_tensors_from_buft_size(ggml_context *ctx, ggml_backend_buffer_type *buft)',

  backend_buft_name: 'const char *ggml_backend_buft_name(ggml_backend_buffer_type *buft)',
  backend_buft_is_host: 'bool ggml_backend_buft_is_host(ggml_backend_buffer_type *buft)',
  backend_buft_get_alignment: 'size_t ggml_backend_buft_get_alignment(ggml_backend_buffer_type *buft)',
  backend_buffer_free: 'void ggml_backend_buffer_free(ggml_backend_buffer *buf)',
  backend_buffer_get_size: 'size_t ggml_backend_buffer_get_size(ggml_backend_buffer *buf)',
  backend_buffer_clear: 'void ggml_backend_buffer_clear(ggml_backend_buffer *buf, uint8_t value)',
  backend_buffer_get_type: 'ggml_backend_buffer_type *ggml_backend_buffer_get_type(ggml_backend_buffer *buf)',
  backend_buffer_name: 'const char *ggml_backend_buffer_name(ggml_backend_buffer *buf)',
  backend_buffer_set_usage: 'void ggml_backend_buffer_set_usage(ggml_backend_buffer *buf, int usage)',
  backend_tensor_set:
    'void ggml_backend_tensor_set(ggml_tensor *t, const void *data, size_t offset, size_t size)',
  backend_tensor_get:
    'void ggml_backend_tensor_get(const ggml_tensor *t, _Out_ void *data, size_t offset, size_t size)',
  backend_tensor_copy: 'void ggml_backend_tensor_copy(const ggml_tensor *src, ggml_tensor *dst)',
  backend_tensor_memset:
    'void ggml_backend_tensor_memset(ggml_tensor *t, uint8_t value, size_t offset, size_t size)',

  backend_name: 'const char *ggml_backend_name(ggml_backend *b)',
  backend_free: 'void ggml_backend_free(ggml_backend *b)',
  backend_get_default_buffer_type:
    'ggml_backend_buffer_type *ggml_backend_get_default_buffer_type(ggml_backend *b)',
  backend_graph_compute: 'int ggml_backend_graph_compute(ggml_backend *b, ggml_cgraph *g)',
  backend_synchronize: 'void ggml_backend_synchronize(ggml_backend *b)',
  backend_get_device: 'ggml_backend_device *ggml_backend_get_device(ggml_backend *b)',
  backend_dev_name: 'const char *ggml_backend_dev_name(ggml_backend_device *d)',
  backend_dev_description: 'const char *ggml_backend_dev_description(ggml_backend_device *d)',
  backend_dev_memory:
    'void ggml_backend_dev_memory(ggml_backend_device *d, _Out_ size_t *free, _Out_ size_t *total)',
  backend_dev_type: 'int ggml_backend_dev_type(ggml_backend_device *d)',
  backend_dev_get_props:
    'void ggml_backend_dev_get_props(ggml_backend_device *d, _Out_ ggml_backend_dev_props *props)',
  backend_dev_backend_reg: 'ggml_backend_reg *ggml_backend_dev_backend_reg(ggml_backend_device *d)',
  backend_dev_init: 'ggml_backend *ggml_backend_dev_init(ggml_backend_device *d, const char *params)',
  backend_dev_buffer_type: 'ggml_backend_buffer_type *ggml_backend_dev_buffer_type(ggml_backend_device *d)',
  backend_dev_supports_op: 'bool ggml_backend_dev_supports_op(ggml_backend_device *d, const ggml_tensor *op)',
  backend_dev_supports_buft:
    'bool ggml_backend_dev_supports_buft(ggml_backend_device *d, ggml_backend_buffer_type *buft)',
  backend_reg_name: 'const char *ggml_backend_reg_name(ggml_backend_reg *r)',
  backend_reg_get_proc_address:
    'void *ggml_backend_reg_get_proc_address(ggml_backend_reg *r, const char *name)',
  backend_reg_count: 'size_t ggml_backend_reg_count()',
  backend_reg_get: 'ggml_backend_reg *ggml_backend_reg_get(size_t i)',
  backend_dev_count: 'size_t ggml_backend_dev_count()',
  backend_dev_get: 'ggml_backend_device *ggml_backend_dev_get(size_t i)',
  backend_load: 'ggml_backend_reg *ggml_backend_load(const char *path)',

  backend_sched_new:
    'ggml_backend_sched *ggml_backend_sched_new(ggml_backend **backends, ggml_backend_buffer_type **bufts, int n, size_t graph_size, bool parallel, bool op_offload)',
  backend_sched_free: 'void ggml_backend_sched_free(ggml_backend_sched *s)',
  backend_sched_alloc_graph: 'bool ggml_backend_sched_alloc_graph(ggml_backend_sched *s, ggml_cgraph *g)',
  backend_sched_graph_compute: 'int ggml_backend_sched_graph_compute(ggml_backend_sched *s, ggml_cgraph *g)',
  backend_sched_reset: 'void ggml_backend_sched_reset(ggml_backend_sched *s)',
  backend_sched_set_tensor_backend:
    'void ggml_backend_sched_set_tensor_backend(ggml_backend_sched *s, ggml_tensor *t, ggml_backend *b)',
  backend_sched_get_tensor_backend:
    'ggml_backend *ggml_backend_sched_get_tensor_backend(ggml_backend_sched *s, ggml_tensor *t)',
  backend_sched_get_buffer_size:
    'size_t ggml_backend_sched_get_buffer_size(ggml_backend_sched *s, ggml_backend *b)',
  backend_sched_get_n_splits: 'int ggml_backend_sched_get_n_splits(ggml_backend_sched *s)',
};

/** Functions that live in `libggml` (the registry) rather than `libggml-base`. */
const REGISTRY_FUNCS = new Set<keyof GgmlApi>([
  'backend_reg_count',
  'backend_reg_get',
  'backend_dev_count',
  'backend_dev_get',
  'backend_load',
]);

/**
 * Binds every declaration. `base` is libggml-base, `registry` is libggml (which owns the backend
 * registry and the loader).
 */
export function bindGgml(base: LibraryHandle, registry: LibraryHandle): GgmlApi {
  const api: Record<string, unknown> = {};
  for (const [key, decl] of Object.entries(BASE_DECLS) as [keyof GgmlApi, string][]) {
    const lib = REGISTRY_FUNCS.has(key) ? registry : base;
    api[key] = lib.func(decl);
  }
  return api as unknown as GgmlApi;
}

/**
 * Calls a bound function on one of koffi's worker threads (its `.async`): the event loop runs on
 * while it computes. The caller must not touch what the call uses until the promise settles.
 */
export function callAsync<K extends keyof GgmlApi>(
  api: GgmlApi,
  name: K,
  ...args: Parameters<GgmlApi[K]>
): Promise<ReturnType<GgmlApi[K]>> {
  type Fn = (...a: Parameters<GgmlApi[K]>) => ReturnType<GgmlApi[K]>;
  // a koffi function object: it uses no `this`, and its `.async` runs it on a worker thread
  const f = api[name] as unknown as KoffiFunc<Fn>;
  return new Promise((resolve, reject) => {
    f.async(...args, (err: unknown, result: ReturnType<GgmlApi[K]>) => {
      if (err === null || err === undefined) resolve(result);
      else reject(err instanceof Error ? err : new Error(JSON.stringify(err)));
    });
  });
}

/** Calls a function pointer obtained with `ggml_backend_reg_get_proc_address`. */
export function callProc(fn: FnPtr, proto: TypeObject, ...args: unknown[]): unknown {
  return koffi.call(fn, proto, ...args);
}

/** Byte strides `nb` of a ggml tensor, read from its struct (views have their own). */
export function tensorStrides(ptr: TensorPtr): [number, number, number, number] {
  const s = koffi.decode(ptr, TensorStruct) as { nb: (number | bigint)[] };
  return [Number(s.nb[0]), Number(s.nb[1]), Number(s.nb[2]), Number(s.nb[3])];
}

/**
 * The row dequantization function of a ggml type (`to_float` of `ggml_get_type_traits`), to call with
 * {@link callProc} and {@link ToFloatProto}; null where ggml has none.
 */
export function typeToFloat(api: GgmlApi, type: number): FnPtr | null {
  const traits = koffi.decode(api.get_type_traits(type), TypeTraitsStruct) as { to_float: FnPtr | null };
  return traits.to_float;
}

export { koffi, type LibraryHandle, type TypeObject };
