/**
 * Gradient checkpointing: a segment (a decoder block) keeps only its input from the forward pass;
 * its activations are recomputed when the backward pass reaches it. Memory for activations falls
 * from every block's intermediates to one block's, for about one more forward pass of compute.
 *
 * @example
 * x = checkpoint([x], (h) => block(h));
 */
import { QtuneError } from '../errors.js';
import { ggml, graphOf, strides } from './ops/common.js';
import { toNe } from './shape.js';
import type { Tensor } from './tensor.js';

/**
 * `fn(...inputs)`, computed without keeping its intermediate tensors for the backward pass. `fn` must
 * be a pure function of its inputs and of stored tensors (the same ops when built again); the
 * trainable stored tensors it reads get their gradients as usual.
 */
export function checkpoint(inputs: readonly Tensor[], fn: (...xs: Tensor[]) => Tensor): Tensor {
  const g = graphOf('checkpoint', ...inputs);
  if (!g.isRecording) return g.build(() => fn(...inputs));
  const { result: y, used: read } = g.track(() => g.noGrad(() => fn(...inputs)));
  // an input that is itself a stored tensor gets its gradient as an input, not a second time as a read
  const used = read.filter((t) => !inputs.includes(t));
  if (!inputs.some((x) => x.requiresGrad) && used.length === 0) return y;
  if (y.graph !== g)
    throw new QtuneError('GRAPH', 'checkpoint: the segment must return a node of the same graph');
  // a view of y that carries the segment's gradient rule
  const ne = toNe(y.shape);
  const nb = strides(y);
  const out = g.node(
    (ctx) => ggml().view_4d(ctx, y.ptr, ne[0], ne[1], ne[2], ne[3], nb[1], nb[2], nb[3], 0),
    y.shape,
    y.dtype,
    true,
    'checkpoint',
  );
  return g.record('checkpoint', [...inputs, ...used], out, (dy) => g.recompute(inputs, used, fn, dy));
}
