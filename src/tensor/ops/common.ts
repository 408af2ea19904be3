/** What every op needs: find the graph, check operands, and wrap ggml calls. */
import { GGML_TYPE_IDS, isFloatDType } from '../../engine/dtype.js';
import { tensorStrides, type TensorPtr } from '../../engine/ggml.js';
import { getEngine } from '../../engine/library.js';
import { assertAlive } from '../../engine/memory.js';
import { DTypeError, QtuneError } from '../../errors.js';
import { Graph } from '../graph.js';
import { toNe, type Shape } from '../shape.js';
import type { Tensor } from '../tensor.js';

export const ggml = () => getEngine().api;

/** The graph an op builds into: that of its first graph operand, else {@link Graph.current}. */
export function graphOf(op: string, ...ts: (Tensor | null | undefined)[]): Graph {
  let g: Graph | undefined;
  for (const t of ts) {
    if (t?.graph) {
      if (g !== undefined && t.graph !== g)
        throw new QtuneError('GRAPH', `${op}: operands belong to different graphs`);
      g = t.graph;
    }
  }
  g ??= Graph.current();
  if (g === undefined) {
    throw new QtuneError(
      'GRAPH',
      `${op}: all operands are stored tensors, so there is no graph to build into`,
      {
        hint: 'call it inside graph.build(() => ...)',
      },
    );
  }
  for (const t of ts) {
    if (t?.kind === 'stored') assertAlive(t.store!.alive, `the tensor store of ${t.toString()}`);
    if (t != null) g.noteOperand(t);
    if (t?.kind === 'stored' && !g.holds(t.store!.backend)) {
      throw new QtuneError(
        'GRAPH',
        `${op}: ${t.toString()} lives on ${t.store!.backend.name}, the graph runs on ${g.backends.map((b) => b.name).join(', ')}`,
        {
          hint: 'copy the store to the graph backend with store.to(backend)',
        },
      );
    }
  }
  return g;
}

export function anyGrad(...ts: (Tensor | null | undefined)[]): boolean {
  return ts.some((t) => t?.requiresGrad === true);
}

export function requireFloat(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    if (!isFloatDType(t.dtype)) {
      throw new DTypeError(`${op}: ${t.toString()} is ${t.dtype}; this op computes on f32/f16/bf16`, {
        hint: 'dequantize with cast(t, "f32") first',
      });
    }
  }
}

export function requireF32(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    if (t.dtype !== 'f32') {
      throw new DTypeError(`${op}: ${t.toString()} is ${t.dtype}; this op needs f32 activations`, {
        hint: 'cast(t, "f32") first',
      });
    }
  }
}

export function requireSameDType(op: string, a: Tensor, b: Tensor): void {
  if (a.dtype !== b.dtype) {
    throw new DTypeError(`${op}: operands have different types (${a.dtype} and ${b.dtype})`, {
      hint: 'cast one of them',
    });
  }
}

/**
 * Contiguous in memory, in the sense ggml's kernels assert: ggml_is_contiguous ignores the stride of
 * a size-1 dimension, but the CPU kernels still check nb[0], so a transposed `[n, 1]` view is not.
 */
export function isContiguous(t: Tensor): boolean {
  const api = ggml();
  return api.is_contiguous(t.ptr) && strides(t)[0] === api.type_size(GGML_TYPE_IDS[t.dtype]);
}

/** Byte strides `nb` of a ggml tensor, read from its struct (views have their own). */
export function strides(t: Tensor): [number, number, number, number] {
  return tensorStrides(t.ptr);
}

/** A metadata-only tensor of a shape, used by ggml ops that take a shape template (repeat, repeat_back). */
export function template(g: Graph, shape: Shape): TensorPtr {
  const ne = toNe(shape);
  return g.node((ctx) => ggml().new_tensor_4d(ctx, 0, ne[0], ne[1], ne[2], ne[3]), shape, 'f32', false).ptr;
}

export function sameNe(a: Shape, b: Shape): boolean {
  const x = toNe(a);
  const y = toNe(b);
  return x.every((d, i) => d === y[i]);
}

/**
 * A `[1]` f32 zero computed from every tensor of `ts` (0·t[0], summed): a node that orders what reads
 * it after all of them, since ggml computes a graph depth-first from its outputs (gradient
 * checkpointing's recompute, the fused loss's chunks).
 */
export function zeroAfter(g: Graph, ts: readonly Tensor[], name: string): Tensor {
  const api = ggml();
  let z = null as Tensor | null;
  for (const t of ts) {
    const es = api.type_size(GGML_TYPE_IDS[t.dtype]);
    const zt = g.node(
      (ctx) => api.scale(ctx, api.view_4d(ctx, t.ptr, 1, 1, 1, 1, es, es, es, 0), 0),
      [1],
      'f32',
      false,
      name,
    );
    const prev: Tensor | null = z;
    z = prev === null ? zt : g.node((ctx) => api.add(ctx, prev.ptr, zt.ptr), [1], 'f32', false, name);
  }
  if (z === null) throw new QtuneError('GRAPH', 'zeroAfter: no tensors to order after');
  return z;
}
