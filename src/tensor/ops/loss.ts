/**
 * Cross-entropy over a vocabulary with an ignore index, averaged over the counted tokens — what
 * causal-LM fine-tuning minimises. Labels are an i32 graph input; per-token weights and gather
 * indices are derived from them on the host whenever they are set.
 */
import { DTypeError, QtuneError, ShapeError, fmtShape } from '../../errors.js';
import type { Graph } from '../graph.js';
import type { Tensor } from '../tensor.js';
import { isFloatDType, isQuantDType } from '../../engine/dtype.js';
import { ggml, graphOf, requireF32, strides, zeroAfter } from './common.js';
import { dequantize } from './matmul.js';
import { contiguous, reshape } from './layout.js';
import { softcapSlope } from './nn.js';

export interface CrossEntropyOptions {
  /** Label value that contributes nothing (default -100, as PyTorch and Hugging Face). */
  ignoreIndex?: number;
  /**
   * `mean` divides by the number of counted tokens in this batch; `sum` leaves the sum, for callers
   * that normalise over several micro-batches themselves.
   */
  reduction?: 'mean' | 'sum';
  /**
   * Collects the loss's per-token tensors as the graph is built (see {@link LossTaps}): the
   * preference and RL objectives read per-token log-probs and set per-token weights through them.
   */
  taps?: LossTaps;
}

/**
 * What a loss leaves for its caller: `weights`, the `[N, 1]` f32 weight input of each loss (set from
 * the labels whenever they are set; setting it again afterwards, before the run, replaces it), and
 * `tokenLosses`, the `[n, 1]` per-token losses wᵢ·CEᵢ of each chunk in token order (mark them
 * outputs to read them: with reduction `sum`, CEᵢ = −log pᵢ for counted tokens, 0 for ignored ones).
 */
export interface LossTaps {
  weights: Tensor[];
  tokenLosses: Tensor[];
}

/**
 * loss = Σᵢ wᵢ·(logsumexp(logitsᵢ) − logitsᵢ[labelᵢ]), with wᵢ = 1/count for counted tokens, 0 for
 * ignored ones. logits `[..., V]` f32, labels an i32 input `[...]` of the same leading shape.
 *
 * Forward: logsumexp is shifted by the row maximum (picked with argmax) for stability. Backward,
 * one rule: dlogits = (softmax(logits) − onehot(label))·w·dy.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, o: CrossEntropyOptions = {}): Tensor {
  return graphOf('crossEntropy', logits, labels).label('xent', () => crossEntropyIn(logits, labels, o));
}

function crossEntropyIn(logits: Tensor, labels: Tensor, o: CrossEntropyOptions): Tensor {
  const g = graphOf('crossEntropy', logits, labels);
  requireF32('crossEntropy', logits);
  if (labels.dtype !== 'i32' || labels.kind !== 'input') {
    throw new DTypeError(`crossEntropy: labels must be an i32 input of the graph, got ${labels.toString()}`);
  }
  const V = logits.shape[logits.rank - 1]!;
  const N = logits.numel / V;
  if (labels.numel !== N || labels.shape.join() !== logits.shape.slice(0, -1).join()) {
    throw new ShapeError(
      `crossEntropy: labels ${fmtShape(labels.shape)} do not match logits ${fmtShape(logits.shape)}`,
      {
        hint: 'labels have the shape of logits without the vocabulary axis',
      },
    );
  }
  const { target, flatIndex, weight } = labelInputs(g, 'crossEntropy', labels, N, V, o, N);
  const x = contiguous(reshape(logits, [N, V])); // ne [V, N]
  const { loss, perToken } = rowsLoss(g, x, target, weight, x.requiresGrad);
  o.taps?.tokenLosses.push(perToken);
  return g.record('crossEntropy', [x], loss, (dy) => {
    const api = ggml();
    const gw = g.node((ctx) => api.mul(ctx, weight.ptr, dy.ptr), [N, 1], 'f32', false); // wᵢ·dy
    // the softmax again rather than the forward's kept: the [N, V] probabilities live only here
    const probs = g.node((ctx) => api.soft_max_ext(ctx, x.ptr, null, 1, 0), [N, V], 'f32', false);
    return [rowsGrad(g, probs, gw, target, flatIndex)];
  });
}

export interface LinearCrossEntropyOptions extends CrossEntropyOptions {
  /**
   * Token rows whose logits exist at once (default {@link DEFAULT_CHUNK_TOKENS}): the memory of the
   * loss is about 4 × chunkTokens × V floats instead of 4 × tokens × V.
   */
  chunkTokens?: number;
  /**
   * An f32 `[1]` tensor by which the caller multiplies the loss before the backward pass (fp16's loss
   * scale). The chunks' gradients, computed before the upstream gradient exists, are computed scaled
   * by it, so a low-precision head matmul sees them at the scale the unfused path's would.
   */
  gradScale?: Tensor;
  /**
   * Soft-caps the logits before the loss, cap·tanh(logits/cap) (Gemma 2's `final_logit_softcapping`);
   * each chunk's dlogits is then multiplied by 1 − (capped/cap)².
   */
  softcap?: number | null;
}

/** Token rows per chunk of {@link linearCrossEntropy} unless told. */
export const DEFAULT_CHUNK_TOKENS = 256;

/**
 * `crossEntropy(linear(h, w), labels, o)` (the output layer and the loss of a causal LM, fused) without
 * the `[tokens, V]` logits or their gradient ever existing whole: h `[..., C]` f32, w `[V, C]` (float
 * or quantized, as `linear` takes it), labels an i32 input of h's leading shape. Returns the same
 * scalar loss.
 *
 * The token rows go in chunks of `chunkTokens`. While the graph records gradients, each chunk computes
 * its logits, its loss and at once its gradient dlogits = (softmax − onehot)·w, then dh = dlogits·W
 * (and dW += dlogitsᵀ·h when w trains), so its `[chunk, V]` tensors die before the next chunk's
 * logits exist; the gradient rule only scales dh and dW by the upstream gradient. ggml computes a
 * graph in the order of a depth-first walk from its outputs and frees a tensor after its last
 * consumer: every chunk's input reads a zero made from the previous chunk's gradients (x + 0·dh[0]),
 * so the walk finishes a chunk, gradients included, before it starts the next (as
 * {@link Graph.recompute} orders a checkpointed block). The liger-kernel's "fused linear
 * cross-entropy", in graph nodes.
 *
 * @example
 * const loss = linearCrossEntropy(hidden, model.weight('lm_head.weight'), labels, { chunkTokens: 256 });
 */
export function linearCrossEntropy(
  h: Tensor,
  w: Tensor,
  labels: Tensor,
  o: LinearCrossEntropyOptions = {},
): Tensor {
  const op = 'linearCrossEntropy';
  const g = graphOf(op, h, w, labels);
  requireF32(op, h);
  if (labels.dtype !== 'i32' || labels.kind !== 'input') {
    throw new DTypeError(`${op}: labels must be an i32 input of the graph, got ${labels.toString()}`);
  }
  if (!isFloatDType(w.dtype) && !isQuantDType(w.dtype)) {
    throw new DTypeError(`${op}: weight ${w.toString()} has type ${w.dtype}`, {
      hint: 'weights are float or quantized',
    });
  }
  const C = h.shape[h.rank - 1]!;
  if (w.rank !== 2 || w.shape[1] !== C) {
    throw new ShapeError(
      `${op}: hidden ${fmtShape(h.shape)} and weight ${fmtShape(w.shape)} do not fit: h[..., ${C}] needs w[V, ${C}]`,
      { hint: 'the weight is stored [vocab, hidden], as lm_head.weight' },
    );
  }
  if (labels.shape.join() !== h.shape.slice(0, -1).join()) {
    throw new ShapeError(`${op}: labels ${fmtShape(labels.shape)} do not match hidden ${fmtShape(h.shape)}`, {
      hint: 'labels have the shape of the hidden state without its last axis',
    });
  }
  if (o.gradScale !== undefined && (o.gradScale.dtype !== 'f32' || o.gradScale.numel !== 1)) {
    throw new ShapeError(
      `${op}: gradScale must be an f32 tensor of one element, got ${o.gradScale.toString()}`,
    );
  }
  const cap = o.softcap ?? null;
  if (cap !== null && !(cap > 0 && Number.isFinite(cap)))
    throw new QtuneError('INVALID_ARGUMENT', `${op}: softcap ${cap} is not a positive number`);
  const chunk = o.chunkTokens ?? DEFAULT_CHUNK_TOKENS;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new QtuneError('INVALID_ARGUMENT', `${op}: chunkTokens ${chunk} is not a positive integer`, {
      hint: `use a whole number of token rows such as ${DEFAULT_CHUNK_TOKENS}`,
    });
  }
  const V = w.shape[0]!;
  const N = h.numel / C;
  const rows = Math.min(chunk, N);
  const { target, targetStride, flatIndex, weight } = labelInputs(g, op, labels, N, V, o, rows);
  const x = contiguous(reshape(h, [N, C])); // ne [C, N]
  const grad = g.isRecording && (x.requiresGrad || w.requiresGrad);
  const wantDh = grad && x.requiresGrad;
  const wantDw = grad && w.requiresGrad;
  const api = ggml();
  const f32 = (make: Parameters<typeof g.node>[0], shape: number[], name = '') =>
    g.node(make, shape, 'f32', false, name);
  // rows [r0, r0 + n) of a 2-D tensor, a view
  const rowsOf = (t: Tensor, r0: number, n: number): Tensor => {
    const nb1 = strides(t)[1];
    const cols = t.shape[1]!;
    return g.node(
      (ctx) => api.view_4d(ctx, t.ptr, cols, n, 1, 1, nb1, nb1 * n, nb1 * n, r0 * nb1),
      [n, cols],
      t.dtype,
      false,
    );
  };
  // Wᵀ once for every chunk's dh (linear's input gradient would make one per chunk)
  let wt: Tensor | null = w.transposed;
  const transposedW = (): Tensor => {
    wt ??= g.label('wT', () => {
      const src = isQuantDType(w.dtype) ? g.label('dequant', () => dequantize(g, w)) : w;
      return g.node((ctx) => api.cont(ctx, api.transpose(ctx, src.ptr)), [C, V], src.dtype, false, 'wT');
    });
    return wt;
  };

  let loss = null as Tensor | null;
  let dep = null as Tensor | null; // 0, computed from the previous chunk's gradients
  const dhs: Tensor[] = [];
  let dw = null as Tensor | null;
  for (let r0 = 0; r0 < N; r0 += rows) {
    const n = Math.min(rows, N - r0);
    const view = rowsOf(x, r0, n);
    const dz = dep;
    const xc = dz === null ? view : f32((ctx) => api.add(ctx, view.ptr, dz.ptr), [n, C]);
    const product = g.label('linear.fwd', () =>
      f32((ctx) => api.mul_mat(ctx, w.ptr, xc.ptr), [n, V], 'linear'),
    );
    const logits =
      cap === null
        ? product
        : f32(
            (ctx) => api.scale(ctx, api.tanh(ctx, api.scale(ctx, product.ptr, 1 / cap)), cap),
            [n, V],
            'softcap',
          );
    const wc = rowsOf(weight, r0, n);
    const gs = o.gradScale;
    const gwc = gs === undefined ? wc : f32((ctx) => api.mul(ctx, wc.ptr, gs.ptr), [n, 1]); // wᵢ·scale
    const tc = rowsOf(target, (r0 / rows) * targetStride, n);
    const part = g.label('xent', () => rowsLoss(g, logits, tc, wc, grad));
    const lc = part.loss;
    o.taps?.tokenLosses.push(part.perToken);
    const sofar: Tensor | null = loss;
    loss =
      sofar === null
        ? lc
        : g.label('xent', () => g.node((ctx) => api.add(ctx, sofar.ptr, lc.ptr), [], 'f32', grad));
    // what the next chunk waits for: this chunk's loss and gradients, every reader of its logits
    const done: Tensor[] = [lc];
    if (grad) {
      const fi = g.node(
        (ctx) => api.view_4d(ctx, flatIndex.ptr, n, 1, 1, 1, 4 * n, 4 * n, 4 * n, r0 * 4),
        [n],
        'i32',
        false,
      );
      // (n, V), from the forward's softmax
      const dl = g.label('xent.bwd', () => {
        const d = rowsGrad(g, part.probs, gwc, tc, fi);
        // through the cap: dlogits·(1 − (capped/cap)²)
        return cap === null
          ? d
          : f32((ctx) => api.mul(ctx, d.ptr, softcapSlope(ctx, logits.ptr, cap)), [n, V]);
      });
      if (wantDh) {
        const wT = transposedW();
        const dh = g.label('linear.dX', () =>
          f32((ctx) => api.mul_mat(ctx, wT.ptr, dl.ptr), [n, C], 'linear_dx'),
        );
        dhs.push(dh);
        done.push(dh);
      }
      if (wantDw) {
        const dwc = g.label('linear.dW', () => {
          const xt = f32((ctx) => api.cont(ctx, api.transpose(ctx, xc.ptr)), [C, n]);
          const dt = f32((ctx) => api.cont(ctx, api.transpose(ctx, dl.ptr)), [V, n]);
          return f32((ctx) => api.mul_mat(ctx, xt.ptr, dt.ptr), [V, C], 'linear_dw');
        });
        const prev: Tensor | null = dw;
        dw =
          prev === null
            ? dwc
            : g.label('linear.dW', () => f32((ctx) => api.add(ctx, prev.ptr, dwc.ptr), [V, C]));
        done.push(dw);
      }
    }
    dep = r0 + n < N ? zeroAfter(g, done, 'xent_dep') : null;
  }

  return g.record(op, [x, w], loss!, (dy) =>
    g.label('xent.bwd', () => {
      const gs = o.gradScale;
      const factor = gs === undefined ? dy : f32((ctx) => api.div(ctx, dy.ptr, gs.ptr), [1]); // dy / scale
      const scaled = (t: Tensor) => f32((ctx) => api.mul(ctx, t.ptr, factor.ptr), t.shape.slice());
      let dh = null as Tensor | null;
      for (const d of dhs) {
        const sofar: Tensor | null = dh;
        dh =
          sofar === null
            ? d
            : f32((ctx) => api.concat(ctx, sofar.ptr, d.ptr, 1), [sofar.shape[0]! + d.shape[0]!, C]);
      }
      return [dh === null ? null : scaled(dh), dw === null ? null : scaled(dw)];
    }),
  );
}

/** Row r's element i[r] of t `[n, V]`, for i an `[n, 1]` i32 index: an `[n, 1]` node. */
function pickRows(g: Graph, t: Tensor, i: Tensor, name = ''): Tensor {
  const api = ggml();
  const [n, V] = t.shape as [number, number];
  return g.node(
    (ctx) => api.reshape_2d(ctx, api.get_rows(ctx, api.reshape_3d(ctx, t.ptr, 1, V, n), i.ptr), 1, n),
    [n, 1],
    'f32',
    false,
    name,
  );
}

/**
 * Σᵢ wᵢ·(logsumexp(xᵢ) − xᵢ[targetᵢ]) over the rows of x `[n, V]` (a scalar node), with the rows'
 * softmax; target `[n, 1]` i32, w `[n, 1]` f32.
 *
 * One softmax pass gives both: with m the row maximum (picked with argmax) and S = Σⱼ exp(xⱼ − m),
 * softmax(x)[argmax] = 1/S exactly as ggml computes it (exp(0) scaled by 1/S), so logsumexp(x) =
 * m − log(softmax(x)[argmax]), and 1/S ≥ 1/V never underflows. ggml's softmax evaluates exp with
 * SIMD; its `exp` op calls expf once per element (measured: the loss's exp passes were most of its
 * time).
 */
function rowsLoss(
  g: Graph,
  x: Tensor,
  target: Tensor,
  w: Tensor,
  requiresGrad: boolean,
): { loss: Tensor; probs: Tensor; perToken: Tensor } {
  const api = ggml();
  const [n, V] = x.shape as [number, number];
  const node = (make: Parameters<typeof g.node>[0], shape: number[], name = '') =>
    g.node(make, shape, 'f32', false, name);
  const probs = node((ctx) => api.soft_max_ext(ctx, x.ptr, null, 1, 0), [n, V], 'ce_softmax');
  const amax = g.node((ctx) => api.reshape_2d(ctx, api.argmax(ctx, x.ptr), 1, n), [n, 1], 'i32', false);
  const rowMax = pickRows(g, x, amax, 'ce_max');
  const pMax = pickRows(g, probs, amax, 'ce_pmax');
  const picked = pickRows(g, x, target, 'ce_picked');
  const perToken = node(
    (ctx) => api.mul(ctx, api.sub(ctx, api.sub(ctx, rowMax.ptr, api.log(ctx, pMax.ptr)), picked.ptr), w.ptr),
    [n, 1],
    'ce_tokens',
  );
  const loss = g.node((ctx) => api.sum(ctx, perToken.ptr), [], 'f32', requiresGrad, 'cross_entropy');
  return { loss, probs, perToken };
}

/**
 * The gradient of {@link rowsLoss} with respect to its x `[n, V]`: (probs − onehot(target))·gw, with
 * probs = softmax(x), gw `[n, 1]` the row weights (times the upstream gradient), target `[n, 1]` and
 * flatIndex `[n]` the targets' indices in the flattened x. probs·gw in one pass, then each row's
 * target element set to pₜ·gw − gw (`set_rows` over one-element rows) in place: no one-hot tensor.
 */
function rowsGrad(g: Graph, probs: Tensor, gw: Tensor, target: Tensor, flatIndex: Tensor): Tensor {
  const api = ggml();
  const [n, V] = probs.shape as [number, number];
  const node = (make: Parameters<typeof g.node>[0], shape: number[]) => g.node(make, shape, 'f32', false);
  const spread = node((ctx) => api.mul(ctx, probs.ptr, gw.ptr), [n, V]);
  const pt = pickRows(g, probs, target);
  const at = node((ctx) => api.sub(ctx, api.mul(ctx, pt.ptr, gw.ptr), gw.ptr), [n, 1]); // (pₜ − 1)·gw
  return node(
    (ctx) =>
      api.reshape_2d(
        ctx,
        api.set_rows(ctx, api.reshape_2d(ctx, spread.ptr, 1, n * V), at.ptr, flatIndex.ptr),
        V,
        n,
      ),
    [n, V],
  );
}

/**
 * Index rows per chunk in {@link LabelInputs.target} are a multiple of this, so that every chunk's
 * view starts 256 bytes apart: the largest `minStorageBufferOffsetAlignment` Vulkan allows. The
 * Vulkan backend of node-llama-cpp 3.21.1 (macOS and Windows' release) aborts on a `get_rows` whose
 * index is a view at an offset that is not a multiple of the device's alignment (3.22.1 handles it).
 */
export const TARGET_ALIGN_ROWS = 64;

/** The per-token inputs derived from the labels on the host (see {@link labelInputs}). */
export interface LabelInputs {
  /**
   * i32: the label, with ignored positions replaced by 0; chunk k's `rowsPerChunk` labels start at
   * row k·targetStride (`[N, 1]` when there is one chunk). `get_rows` reads a chunk's view as its index.
   */
  target: Tensor;
  /**
   * Rows from one chunk's labels to the next's in `target`: rowsPerChunk, rounded up to a multiple of
   * {@link TARGET_ALIGN_ROWS} when there are several chunks (the default 256 rows stays as it is).
   */
  targetStride: number;
  /** `[N]` i32: the label's index in its chunk's flattened `[rows, V]` logits. */
  flatIndex: Tensor;
  /** `[N, 1]` f32: 1/count (mean) or 1 (sum) for counted tokens, 0 for ignored ones. */
  weight: Tensor;
}

/**
 * Inputs derived from `labels` whenever they are set: targets, flat indices into logits that come
 * in chunks of `rowsPerChunk` rows (token i's index is `(i mod rowsPerChunk)·V + label`), and the
 * weights. A label outside [0, V) that is not the ignore index is an error naming its position.
 */
export function labelInputs(
  g: Graph,
  op: string,
  labels: Tensor,
  N: number,
  V: number,
  o: CrossEntropyOptions,
  rowsPerChunk: number,
): LabelInputs {
  const ignore = o.ignoreIndex ?? -100;
  const mean = (o.reduction ?? 'mean') === 'mean';
  if (rowsPerChunk * V > 2 ** 31 - 1) {
    throw new ShapeError(
      `${op}: ${rowsPerChunk} token rows × vocabulary ${V} exceed the int32 indices of the loss's gradient`,
      { hint: 'use linearCrossEntropy with a smaller chunkTokens' },
    );
  }
  const chunks = Math.ceil(N / rowsPerChunk);
  const stride =
    chunks === 1 ? rowsPerChunk : Math.ceil(rowsPerChunk / TARGET_ALIGN_ROWS) * TARGET_ALIGN_ROWS;
  const at = (i: number) => Math.floor(i / rowsPerChunk) * stride + (i % rowsPerChunk); // token i's row
  const target = g.input([chunks === 1 ? N : chunks * stride, 1], 'i32', 'ce_target');
  const flatIndex = g.input([N], 'i32', 'ce_flat_index');
  const weight = g.input([N, 1], 'f32', 'ce_weight');
  o.taps?.weights.push(weight);
  g.onSet(labels, (data) => {
    const t = new Int32Array(target.numel); // padding rows stay 0: no chunk reads them
    const f = new Int32Array(N);
    const w = new Float32Array(N);
    let count = 0;
    for (let i = 0; i < N; i++) {
      const l = data[i]!;
      // an ignored token's gradient row is all zeros: its index names its own row's first element,
      // which rowsGrad's set_rows sets to (p·0 − 0) = 0, as it is
      f[i] = (i % rowsPerChunk) * V;
      if (l === ignore) continue;
      if (!Number.isInteger(l) || l < 0 || l >= V) {
        throw new QtuneError('INVALID_ARGUMENT', `${op}: label ${l} at position ${i} is outside [0, ${V})`, {
          hint: `use token ids below the vocabulary size, or ${ignore} to ignore a position`,
        });
      }
      t[at(i)] = l;
      f[i] = (i % rowsPerChunk) * V + l;
      count++;
    }
    const wi = mean ? (count > 0 ? 1 / count : 0) : 1;
    for (let i = 0; i < N; i++) if (data[i] !== ignore) w[i] = wi;
    g.set(target, t);
    g.set(flatIndex, f);
    g.set(weight, w);
  });
  return { target, targetStride: stride, flatIndex, weight };
}
