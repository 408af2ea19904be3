/**
 * The forward pass every training and evaluation graph shares: the model with its adapter and the
 * frozen weights' persistent copies on the linear layers, the low-precision matmuls of the autocast
 * modes, and the summed cross-entropy of the output layer fused with the loss.
 *
 * @example
 * const f: ForwardSetup = { model, adapter: lora.hook(), computeDType: null, frozen: null,
 *   crossEntropyChunk: 256, batch: 1, seqLen: 64, packed: false };
 * const { ids, labels, mask } = forwardInputs(g, f);
 * const loss = lossSum(f, g, ids, labels, forwardOptions(f, mask));
 */
import type { FloatDType } from '../engine/dtype.js';
import type { ForwardOptions, LinearHook, LlamaModel } from '../models/llama.js';
import type { Graph } from '../tensor/graph.js';
import { cast } from '../tensor/ops/layout.js';
import { crossEntropy, linearCrossEntropy, type LossTaps } from '../tensor/ops/loss.js';
import { linear } from '../tensor/ops/matmul.js';
import type { Tensor } from '../tensor/tensor.js';
import type { FrozenWeights } from './frozen.js';
import { crossEntropyRows } from './memory.js';

export interface ForwardSetup {
  model: LlamaModel;
  /** The adapter's linear hook (LoRA/DoRA in training, or a loaded adapter). */
  adapter?: LinearHook | undefined;
  /** The autocast modes' matmul type (f32 weights are cast to it in the graph), or null. */
  computeDType: FloatDType | null;
  /** The frozen weights' persistent copies (Wᵀ, and W in the matmul type), or null. */
  frozen: FrozenWeights | null;
  /** Token rows per chunk of the fused output layer and loss; 0: the logits whole. */
  crossEntropyChunk: number;
  /** The graphs' batch and sequence length. */
  batch: number;
  seqLen: number;
  /** Sequence packing: the graphs take an attention mask input. */
  packed: boolean;
}

/** A graph's inputs: ids and labels `[batch, seqLen]`, and the packed sequences' attention mask. */
export function forwardInputs(
  g: Graph,
  f: ForwardSetup,
): { ids: Tensor; labels: Tensor; mask: Tensor | null } {
  return {
    ids: g.input([f.batch, f.seqLen], 'i32', 'ids'),
    labels: g.input([f.batch, f.seqLen], 'i32', 'labels'),
    mask: f.packed ? g.input([f.batch, 1, f.seqLen, f.seqLen], 'f32', 'attn_mask') : null,
  };
}

/** The model's forward options: the linear hook, the output layer's matmul, the mask. */
export function forwardOptions(f: ForwardSetup, mask: Tensor | null): ForwardOptions {
  const hook = linearHook(f);
  return {
    ...(hook === undefined ? {} : { linear: hook }),
    ...headOption(f),
    ...(mask === null ? {} : { mask }),
  };
}

/** The forward's linear hook: the adapter, and the low-precision matmuls of autocast modes. */
function linearHook(f: ForwardSetup): LinearHook | undefined {
  const lowp = f.computeDType;
  const { adapter, frozen } = f;
  if (lowp === null && (frozen === null || frozen.count === 0)) return adapter;
  return (module, x, w) => {
    // a frozen weight's persistent copy (in the matmul type, with Wᵀ), else the cast in the graph
    const copy = frozen?.weightFor(w) ?? w;
    const wc = copy === w && lowp !== null && w.dtype === 'f32' ? cast(w, lowp) : copy;
    return adapter?.(module, x, wc) ?? linear(x, wc);
  };
}

/** The low-precision modes run the output layer's matmul in their type too. */
function headOption(f: ForwardSetup): { headDType?: 'f16' | 'bf16'; headWeight?: Tensor } {
  const m = f.model;
  const head = m.weight(m.config.tie_word_embeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
  const copy = f.frozen?.weightFor(head) ?? head;
  if (copy !== head || head.transposed !== null) return { headWeight: copy };
  const lowp = f.computeDType;
  return lowp === null || lowp === 'f32' ? {} : { headDType: lowp };
}

/**
 * The summed cross-entropy of a micro-batch: the output layer fused with the loss in chunks of token
 * rows (linearCrossEntropy; at most MAX_CROSS_ENTROPY_CHUNKS of them, which bounds the graph's nodes),
 * or the whole logits, then the loss: with a chunk of 0, or where the chunks would need more.
 * `scale` (fp16's loss scale) reaches the chunks' gradients before a low-precision head matmul;
 * `taps` collects the loss's weight input and per-token losses (the objectives' log-probs).
 */
export function lossSum(
  f: ForwardSetup,
  g: Graph,
  ids: Tensor,
  labels: Tensor,
  o: ForwardOptions,
  scale?: Tensor,
  taps?: LossTaps,
): Tensor {
  const { hidden, head } = f.model.forwardHidden(g, ids, o);
  const tokens = labels.numel;
  const rows = crossEntropyRows(tokens, f.crossEntropyChunk);
  // A trainable head (full fine-tuning) adds a chunk's dW partial ([vocab, hidden]) to the running
  // sum. Measured compute buffers, in floats: whole ≈ Wᵀ + dW + 2.65·tokens·vocab, chunked ≈ Wᵀ + dW +
  // hidden·vocab + 3·rows·vocab; so a few chunks of a short batch would need more than the logits.
  const headTrains = g.isRecording && head.requiresGrad;
  const fused = f.crossEntropyChunk > 0 && (!headTrains || 2.5 * tokens >= hidden.shape[2]! + 3 * rows);
  if (!fused)
    return crossEntropy(
      g.build(() => f.model.logits(hidden, head)),
      labels,
      { reduction: 'sum', ...(taps === undefined ? {} : { taps }) },
    );
  return linearCrossEntropy(hidden, head, labels, {
    reduction: 'sum',
    chunkTokens: rows,
    softcap: f.model.config.final_logit_softcapping,
    ...(taps === undefined ? {} : { taps }),
    ...(scale === undefined ? {} : { gradScale: scale }),
  });
}
