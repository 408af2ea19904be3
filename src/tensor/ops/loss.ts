/**
 * Cross-entropy over a vocabulary with an ignore index, averaged over the counted tokens — what
 * causal-LM fine-tuning minimises. Labels are an i32 graph input; per-token weights and gather
 * indices are derived from them on the host whenever they are set.
 */
import { DTypeError, QtuneError, ShapeError, fmtShape } from '../../errors.js';
import type { Tensor } from '../tensor.js';
import { ggml, graphOf, requireF32, template } from './common.js';
import { contiguous, reshape } from './layout.js';

export interface CrossEntropyOptions {
  /** Label value that contributes nothing (default -100, as PyTorch and Hugging Face). */
  ignoreIndex?: number;
  /**
   * `mean` divides by the number of counted tokens in this batch; `sum` leaves the sum, for callers
   * that normalise over several micro-batches themselves.
   */
  reduction?: 'mean' | 'sum';
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
  const ignore = o.ignoreIndex ?? -100;
  const mean = (o.reduction ?? 'mean') === 'mean';

  // derived per-token inputs: the label with ignored ones replaced by 0, its index in the flattened
  // logits, and the weight
  const target = g.input([N, 1], 'i32', 'ce_target');
  const flatIndex = g.input([N], 'i32', 'ce_flat_index');
  const weight = g.input([N, 1], 'f32', 'ce_weight');
  g.onSet(labels, (data) => {
    const t = new Int32Array(N);
    const f = new Int32Array(N);
    const w = new Float32Array(N);
    let count = 0;
    for (let i = 0; i < N; i++) {
      const l = data[i]!;
      if (l === ignore) continue;
      if (!Number.isInteger(l) || l < 0 || l >= V) {
        throw new QtuneError(
          'INVALID_ARGUMENT',
          `crossEntropy: label ${l} at position ${i} is outside [0, ${V})`,
          {
            hint: `use token ids below the vocabulary size, or ${ignore} to ignore a position`,
          },
        );
      }
      t[i] = l;
      f[i] = i * V + l;
      count++;
    }
    const wi = mean ? (count > 0 ? 1 / count : 0) : 1;
    for (let i = 0; i < N; i++) if (data[i] !== ignore) w[i] = wi;
    g.set(target, t);
    g.set(flatIndex, f);
    g.set(weight, w);
  });

  const api = ggml();
  const x = contiguous(reshape(logits, [N, V])); // ne [V, N]
  const node = (make: Parameters<typeof g.node>[0], shape: number[], name = '') =>
    g.node(make, shape, 'f32', false, name);
  const x3 = node((ctx) => api.reshape_3d(ctx, x.ptr, 1, V, N), [N, V, 1]);
  const amax = g.node((ctx) => api.reshape_2d(ctx, api.argmax(ctx, x.ptr), 1, N), [N, 1], 'i32', false);
  const rowMax = node(
    (ctx) => api.reshape_2d(ctx, api.get_rows(ctx, x3.ptr, amax.ptr), 1, N),
    [N, 1],
    'ce_max',
  );
  const shifted = node((ctx) => api.sub(ctx, x.ptr, rowMax.ptr), [N, V]);
  const lse = node((ctx) => api.log(ctx, api.sum_rows(ctx, api.exp(ctx, shifted.ptr))), [N, 1], 'ce_lse');
  const s3 = node((ctx) => api.reshape_3d(ctx, shifted.ptr, 1, V, N), [N, V, 1]);
  const picked = node((ctx) => api.reshape_2d(ctx, api.get_rows(ctx, s3.ptr, target.ptr), 1, N), [N, 1]);
  const perToken = node(
    (ctx) => api.mul(ctx, api.sub(ctx, lse.ptr, picked.ptr), weight.ptr),
    [N, 1],
    'ce_tokens',
  );
  const loss = g.node((ctx) => api.sum(ctx, perToken.ptr), [], 'f32', x.requiresGrad, 'cross_entropy');

  return g.record('crossEntropy', [x], loss, (dy) => {
    const gw = node((ctx) => api.mul(ctx, weight.ptr, dy.ptr), [N, 1]); // wᵢ·dy
    const probs = node((ctx) => api.soft_max_ext(ctx, x.ptr, null, 1, 0), [N, V]);
    const spread = node((ctx) => api.mul(ctx, probs.ptr, gw.ptr), [N, V]);
    const onehot = node(
      (ctx) => api.get_rows_back(ctx, gw.ptr, flatIndex.ptr, template(g, [N * V, 1])),
      [N * V, 1],
    );
    const one2 = node((ctx) => api.reshape_2d(ctx, contiguous(onehot).ptr, V, N), [N, V]);
    return [node((ctx) => api.sub(ctx, spread.ptr, one2.ptr), [N, V])];
  });
}
