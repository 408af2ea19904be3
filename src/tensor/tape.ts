/**
 * The tape of a {@link Graph}: each recorded op's inputs, output and gradient rule, and the walk
 * that builds the backward pass from it (whole, or one checkpointed segment again). It also keeps
 * the labels and block scopes open while nodes are built, which the profiler reads
 * (src/tensor/profile.ts) and which backward nodes inherit from their forward op.
 */
import type { TensorPtr } from '../engine/ggml.js';
import { getEngine } from '../engine/library.js';
import { tensorAddress } from '../engine/nodes.js';
import { QtuneError, fmtShape } from '../errors.js';
import type { Graph } from './graph.js';
import { isContiguous, zeroAfter } from './ops/common.js';
import { sameShape } from './shape.js';
import type { Tensor } from './tensor.js';

/** Returns the gradient for each input of an op (null where none is needed). */
export type BackwardRule = (dy: Tensor) => (Tensor | null)[];

interface TapeEntry {
  op: string;
  inputs: Tensor[];
  output: Tensor;
  backward: BackwardRule;
  /** The labels and block scopes open when the forward op was built (its backward gets them too). */
  labels: LabelFrame[];
  blocks: string[];
}

/**
 * Where a node came from, for the profiler (src/tensor/profile.ts): its op label (`linear.fwd`,
 * `lora/linear.dW`, `xent.bwd`; null when none was given) and its block scope (`layers.3`).
 */
export interface NodeLabel {
  label: string | null;
  block: string | null;
}

/** A label on the stack; a weak one (the default of a backward rule) yields to any label inside it. */
interface LabelFrame {
  name: string;
  weak: boolean;
}

/** The label base of a tape op in the profile (forward `<base>.fwd`, backward `<base>.bwd`). */
const LABEL_OF_OP: Record<string, string> = { rmsNorm: 'rms_norm', crossEntropy: 'xent', embedding: 'embed' };

function joinLabels(frames: readonly LabelFrame[]): string | null {
  if (frames.length === 0) return null;
  const last = frames.length - 1;
  return frames
    .filter((f, i) => !f.weak || i === last)
    .map((f) => f.name)
    .join('/');
}

type Api = ReturnType<typeof getEngine>['api'];

export class Tape {
  /** Whether ops record gradient rules (false while the backward pass is being built). */
  recording = true;
  private entries: TapeEntry[] = [];
  private labelStack: LabelFrame[] = [];
  private blockStack: string[] = [];
  /** The label of every node built through `Graph.node`, by node address (JS only; ggml never sees it). */
  private readonly nodeLabels = new Map<bigint, NodeLabel>();
  private readonly trackers: Set<Tensor>[] = [];

  /** Gives the node at `ptr` the labels and block scope open now. */
  labelNode(ptr: TensorPtr): void {
    this.nodeLabels.set(tensorAddress(ptr), {
      label: joinLabels(this.labelStack),
      block: this.blockName(),
    });
  }

  /** Gives the node at `ptr` a label made earlier ({@link assignLabel}). */
  setLabel(ptr: TensorPtr, label: NodeLabel): void {
    this.nodeLabels.set(tensorAddress(ptr), label);
  }

  labelOf(address: bigint): NodeLabel | undefined {
    return this.nodeLabels.get(address);
  }

  /** The label of the copy that writes an assigned value back: `assign` inside the open labels. */
  assignLabel(): NodeLabel {
    return {
      label: joinLabels([...this.labelStack, { name: 'assign', weak: false }]),
      block: this.blockName(),
    };
  }

  private blockName(): string | null {
    return this.blockStack.length === 0 ? null : this.blockStack.join('.');
  }

  /** Records an op's gradient rule (while recording and when its output needs a gradient). */
  record(op: string, inputs: Tensor[], output: Tensor, backward: BackwardRule): void {
    const info = output.kind === 'node' ? this.nodeLabels.get(tensorAddress(output.ptr)) : undefined;
    if (info !== undefined && info.label === null) info.label = `${LABEL_OF_OP[op] ?? op}.fwd`;
    if (this.recording && output.requiresGrad) {
      const labels = [...this.labelStack];
      const blocks = [...this.blockStack];
      this.entries.push({ op, inputs, output, backward, labels, blocks });
    }
  }

  /** Runs `fn` with the op label `name` open. */
  withLabel<T>(name: string, fn: () => T): T {
    this.labelStack.push({ name, weak: false });
    try {
      return fn();
    } finally {
      this.labelStack.pop();
    }
  }

  /** Runs `fn` inside the block scope `name`. */
  withBlock<T>(name: string, fn: () => T): T {
    this.blockStack.push(name);
    try {
      return fn();
    } finally {
      this.blockStack.pop();
    }
  }

  /** Runs `fn` and returns, with its result, the stored tensors with requiresGrad its ops read. */
  track<T>(fn: () => T): { result: T; used: Tensor[] } {
    const used = new Set<Tensor>();
    this.trackers.push(used);
    try {
      return { result: fn(), used: [...used] };
    } finally {
      this.trackers.pop();
    }
  }

  noteOperand(t: Tensor): void {
    if (t.kind === 'stored' && t.requiresGrad) for (const s of this.trackers) s.add(t);
  }

  /** Every input of a recorded op (the stored ones must live on the graph's devices). */
  operands(): Tensor[] {
    return this.entries.flatMap((e) => e.inputs);
  }

  /**
   * Builds the backward pass of the whole tape into `g`: `grads` holds the loss's seed gradient and
   * gets the gradient of every tensor the loss depends on.
   */
  backward(g: Graph, grads: Map<Tensor, Tensor>): void {
    this.recording = false;
    try {
      g.build(() => this.propagate(g, this.entries, grads));
    } finally {
      this.recording = true;
    }
  }

  /**
   * The gradient rule of a checkpointed segment (see `Graph.recompute`): builds `fn` again from
   * `inputs` with a tape of its own and returns the gradients of `inputs` and of `params` for `dy`.
   */
  recompute(
    g: Graph,
    inputs: readonly Tensor[],
    params: readonly Tensor[],
    fn: (...xs: Tensor[]) => Tensor,
    dy: Tensor,
  ): (Tensor | null)[] {
    const { api } = getEngine();
    const outerEntries = this.entries;
    const wasRecording = this.recording;
    this.entries = [];
    this.recording = true;
    try {
      return g.build(() => {
        // x + 0·dy[0]: the recomputation depends on dy, so ggml orders it after the gradient of the
        // segment's output exists instead of keeping its activations alive from the forward pass
        const dep = zeroAfter(g, [dy], 'recompute_dep');
        const fresh = inputs.map((x) =>
          g.record(
            'recompute_input',
            [x],
            g.node((ctx) => api.add(ctx, x.ptr, dep.ptr), x.shape, x.dtype, x.requiresGrad),
            (d) => [d],
          ),
        );
        const y = fn(...fresh);
        const grads = new Map<Tensor, Tensor>([[y, dy]]);
        this.recording = false;
        this.propagate(g, this.entries, grads);
        return [...inputs.map((x) => grads.get(x) ?? null), ...params.map((p) => grads.get(p) ?? null)];
      });
    } finally {
      this.entries = outerEntries;
      this.recording = wasRecording;
    }
  }

  /** Walks `entries` backwards, adding each op's input gradients into `grads`. */
  private propagate(g: Graph, entries: readonly TapeEntry[], grads: Map<Tensor, Tensor>): void {
    const { api } = getEngine();
    const outerLabels = this.labelStack;
    const outerBlocks = this.blockStack;
    try {
      for (let i = entries.length - 1; i >= 0; i--) this.propagateOne(g, entries[i]!, grads, api);
    } finally {
      this.labelStack = outerLabels;
      this.blockStack = outerBlocks;
    }
  }

  /** One op's gradient rule, built under its forward's labels and block, its default label `<op>.bwd`. */
  private propagateOne(g: Graph, entry: TapeEntry, grads: Map<Tensor, Tensor>, api: Api): void {
    const dy = grads.get(entry.output);
    if (dy === undefined) return;
    this.blockStack = entry.blocks;
    const base = LABEL_OF_OP[entry.op] ?? entry.op;
    // an op that labelled its own forward (crossEntropy: `xent`) gets `xent.bwd`, not `xent/xent.bwd`
    const own = entry.labels[entry.labels.length - 1]?.name;
    const outer = own === base || own === `${base}.fwd` ? entry.labels.slice(0, -1) : entry.labels;
    this.labelStack = [...outer, { name: `${base}.bwd`, weak: true }];
    const dxs = entry.backward(dy);
    this.labelStack = [...entry.labels, { name: 'grad.accumulate', weak: false }];
    entry.inputs.forEach((x, k) => {
      const raw = dxs[k] ?? null;
      if (raw === null || !x.requiresGrad) return;
      // ggml's elementwise kernels need contiguous rows: views (transpose, slice) are copied
      const dx = isContiguous(raw)
        ? raw
        : g.node((ctx) => api.cont(ctx, raw.ptr), raw.shape, raw.dtype, false);
      if (!sameShape(dx.shape, x.shape)) {
        throw new QtuneError(
          'GRAPH',
          `gradient rule of ${entry.op} returned ${fmtShape(dx.shape)} for input ${fmtShape(x.shape)}`,
        );
      }
      const prev = grads.get(x);
      grads.set(
        x,
        prev === undefined ? dx : g.node((ctx) => api.add(ctx, prev.ptr, dx.ptr), x.shape, 'f32', false),
      );
    });
  }
}
