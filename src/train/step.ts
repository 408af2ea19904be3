/**
 * The training step's graphs, built once and run as often as needed:
 *
 *   accumulate  (per micro-batch)  forward, backward of Σ token losses × loss scale, grads += into
 *                                  one buffer per trainable tensor
 *   norm        (per step)         Σ grad², read by the host: the global norm for clipping, and the
 *                                  overflow check of fp16 loss scaling
 *   update      (per step)         grads × (1 / (target tokens × loss scale) × clip factor), then the
 *                                  optimizer's update
 *
 * and the evaluation graph beside them (the forward alone). Built on first use, with the memory each
 * phase takes measured on the way: a batch the device cannot hold fails with an OutOfMemoryError
 * before a run writes anything, and leaves nothing allocated. With dynamic padding a micro-batch's
 * length is one of a few buckets (data/batches.ts): each bucket gets its own accumulate and
 * evaluation graphs, built when a batch first needs it (the longest when the step is built), while
 * the norm and update graphs serve every bucket.
 *
 * @example
 * const step = new TrainStep(setup);
 * step.build(batches.collate(firstBatch));
 * const loss = step.accumulate(batches.collate(micro), 1);
 * step.update(1 / tokens);
 */
import type { FloatDType } from '../engine/dtype.js';
import { isQuantDType } from '../engine/dtype.js';
import { formatBytes } from '../engine/memory.js';
import { OutOfMemoryError, QtuneError } from '../errors.js';
import type { LlamaModel } from '../models/llama.js';
import type { GradScaler } from '../optim/grad-scaler.js';
import type { StepCounts } from './options.js';
import type { Optimizer } from '../optim/optimizer.js';
import { Graph, type GraphNode } from '../tensor/graph.js';
import { add, mul, sqr } from '../tensor/ops/elementwise.js';
import { sum } from '../tensor/ops/layout.js';
import { StoreGroup } from '../tensor/store-group.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Collated } from '../data/batches.js';
import { Evaluator } from './evaluate.js';
import { forwardInputs, forwardOptions, lossSum, type ForwardSetup } from './forward.js';
import { FrozenWeights, type FrozenCopies } from './frozen.js';
import { chooseGradType, type ComputeDTypeChoice, type GradTypeChoice } from './kernel-choice.js';
import type { LoraLayers } from '../peft/lora.js';
import {
  rss,
  stepMemoryError,
  type DeviceMemory,
  type MemoryReport,
  type PhaseMemory,
  type StepShape,
} from './memory.js';
import type { StepGraph, StepProfiler } from './profile.js';

export interface StepSetup {
  model: LlamaModel;
  /** The trainable tensors, and the optimizer over them. */
  params: readonly Tensor[];
  optimizer: Optimizer;
  lora: LoraLayers | null;
  /** DoRA's norms read the frozen weight itself, so its quantized weights are not repacked. */
  dora: boolean;
  /** The batch shape (a rank's share under data parallelism), for the graphs and memory messages. */
  shape: StepShape;
  /** Sequence packing: the graphs take an attention mask. */
  packed: boolean;
  /** The autocast modes' matmul type, or null. */
  computeDType: FloatDType | null;
  frozenCopies: FrozenCopies;
  quantComputeDType: ComputeDTypeChoice;
  /** Runs the graphs node by node on its step (the `profile` option), or null. */
  profiler: StepProfiler | null;
}

/** What the trainer chose for the frozen base's matmuls (see {@link TrainStep.kernelChoices}). */
export interface KernelChoices {
  frozenCopies: { count: number; bytes: number; reason: string | null };
  quantComputeDType: GradTypeChoice | null;
}

/**
 * A graph the step runs next, yielded by the step's generators (`accumulateRuns`...) to the driver:
 * {@link TrainStep.execute} computes it at once, {@link TrainStep.executeAsync} on a worker thread.
 * The same step code serves the blocking `train()` and the non-blocking `trainAsync()`.
 */
export interface GraphRun {
  graph: Graph;
  which: StepGraph;
}

/** The accumulate graph of one sequence length, with its inputs and the summed loss. */
interface AccumulateGraph {
  g: Graph;
  ids: Tensor;
  labels: Tensor;
  mask: Tensor | null;
  scale: Tensor;
  loss: Tensor;
  /** The loss's per-token weight input (1 per counted token unless the caller sets it). */
  weight: Tensor;
}

export class TrainStep {
  /** One f32 gradient buffer per trainable tensor, on its device: `grad${i}` for params[i]. */
  readonly grads: StoreGroup;
  /**
   * Seconds each graph has run since {@link startStep} (the Trainer reports them as
   * StepResult.graphSeconds).
   */
  readonly seconds: Record<StepGraph, number> = { accumulate: 0, norm: 0, update: 0 };
  private stepNumber = 1;
  /** Per sequence length: the accumulate and evaluation graphs (the first built is the longest). */
  private readonly buckets = new Map<number, { acc: AccumulateGraph; ev: Evaluator }>();
  private norm: { g: Graph; sumsq: Tensor } | null = null;
  private upd: { g: Graph; factor: Tensor } | null = null;
  /** The forward every graph shares (with the frozen copies), once built. */
  private forward: ForwardSetup | null = null;
  private frozen: FrozenWeights | null = null;
  private gradType: GradTypeChoice | null = null;
  private report: MemoryReport | null = null;

  constructor(private readonly s: StepSetup) {
    this.grads = StoreGroup.create(
      s.params.map((p, i) => ({
        name: `grad${i}`,
        shape: p.shape,
        dtype: 'f32' as const,
        backend: p.backend,
      })),
    );
  }

  get built(): boolean {
    return this.norm !== null;
  }

  /**
   * Builds every graph and allocates its memory, measuring memory after each phase: loading, the
   * forward (the evaluation graph run once on `probe`: a batch of the longest bucket), the backward. A step that cannot fit frees
   * what it made and throws an OutOfMemoryError that names the batch and the ways out.
   */
  build(probe: Collated): void {
    if (this.built) return;
    try {
      this.buildGraphs(probe);
    } catch (e) {
      this.disposeGraphs();
      // the frozen weights' copies were made for these graphs: a refused step keeps none of them
      this.frozen?.dispose();
      this.frozen = null;
      const { needed, free } = e instanceof OutOfMemoryError ? e.details : {};
      if (typeof needed === 'number' && typeof free === 'number')
        throw stepMemoryError(this.s.shape, this.s.model.backend.name, needed, free, true);
      throw e;
    }
  }

  /**
   * Runs the accumulate graph on one micro-batch: the gradients of its summed token losses × `lossScale`
   * are added into {@link grads}. Returns the loss sum (not finite: fp16 overflowed). `weights`
   * (`[batch × seqLen]`, one per position): the token losses' weights instead of 1 per counted
   * token, so the gradient is that of Σ wᵢ·CEᵢ (the objectives' weighted step).
   */
  accumulate(c: Collated, lossScale: number, weights?: Float32Array): number {
    return this.runNow(this.accumulateRuns(c, lossScale, weights));
  }

  /** {@link accumulate}, yielding its graph run to the caller's driver ({@link GraphRun}). */
  *accumulateRuns(c: Collated, lossScale: number, weights?: Float32Array): Generator<GraphRun, number> {
    const { acc } = this.bucket(c.seqLen);
    acc.g.set(acc.ids, c.ids);
    acc.g.set(acc.labels, c.labels);
    if (weights !== undefined) acc.g.set(acc.weight, weights); // after the labels' own
    acc.g.set(acc.scale, Float32Array.of(lossScale));
    if (acc.mask !== null) acc.g.set(acc.mask, c.mask!); // packing
    yield { graph: acc.g, which: 'accumulate' };
    if (this.report !== null && this.report.backward.rssBytes === 0) this.report.backward.rssBytes = rss();
    return acc.g.read(acc.loss)[0]!;
  }

  /** The summed loss of one micro-batch, forward only (evaluation). */
  evalLoss(c: Collated): number {
    return this.bucket(c.seqLen).ev.lossSum(c);
  }

  /** The forward the graphs share, at `seqLen` positions (the step must be built). */
  forwardAt(seqLen: number): ForwardSetup {
    if (this.forward === null) throw new QtuneError('GRAPH', 'forwardAt: build() the step first');
    return { ...this.forward, seqLen };
  }

  /** Every trainable tensor's gradient × `factor` on the host, by tensor name. */
  readGradients(factor: number): Map<string, Float32Array> {
    const out = new Map<string, Float32Array>();
    this.s.params.forEach((p, i) =>
      out.set(
        p.name,
        this.grads.read(this.grads.get(`grad${i}`)).map((x) => x * factor),
      ),
    );
    return out;
  }

  /** Σ grad² over every gradient buffer. */
  gradNormSquared(): number {
    return this.runNow(this.gradNormRuns());
  }

  /** {@link gradNormSquared}, yielding its graph run. */
  *gradNormRuns(): Generator<GraphRun, number> {
    yield { graph: this.norm!.g, which: 'norm' };
    return this.norm!.g.read(this.norm!.sumsq)[0]!;
  }

  /**
   * The step's update from the summed gradients: their global norm ÷ (`divisor` × loss scale),
   * clipped to `maxGradNorm` (0: off), the optimizer's update at `lr`. An overflow (`overflow`, or a
   * norm not finite) skips the update: fp16 halves the loss scale, as PyTorch's GradScaler; without
   * a scaler `diverged` stops the run. Returns the norm and whether the update was skipped.
   */
  *applyRuns(
    divisor: number,
    o: { scaler: GradScaler; lr: number; maxGradNorm: number; overflow: boolean },
    diverged: (value: number, what: string) => never,
  ): Generator<GraphRun, { gradNorm: number; overflow: boolean }> {
    const scale = o.scaler.scale;
    const gradNorm = Math.sqrt(yield* this.gradNormRuns()) / (divisor * scale);
    const overflow = o.overflow || !Number.isFinite(gradNorm);
    if (overflow && !o.scaler.enabled) diverged(gradNorm, 'gradient norm');
    if (!overflow) {
      const max = o.maxGradNorm;
      const clip = max > 0 && gradNorm > max ? max / (gradNorm + 1e-6) : 1;
      this.s.optimizer.lr = o.lr;
      yield* this.updateRuns(clip / (divisor * scale));
    }
    if (o.scaler.enabled && o.scaler.update(overflow).exhausted)
      diverged(NaN, 'loss scale fell below 1 and the gradients still overflow:');
    return { gradNorm, overflow };
  }

  /**
   * The mean loss and the gradients (by tensor name) of an accumulate `run` over fresh gradient
   * buffers, zeroed again after: the Trainer's gradients().
   */
  gradientsOf(
    run: Generator<GraphRun, StepCounts>,
    lossScale: number,
  ): { loss: number; tokens: number; grads: Map<string, Float32Array> } {
    this.grads.zero();
    const { tokens, lossSum } = this.runNow(run);
    const grads = this.readGradients(1 / (tokens * lossScale));
    this.grads.zero();
    return { loss: lossSum / tokens, tokens, grads };
  }

  /** The optimizer's update from the gradients × `factor` (at the optimizer's current lr). */
  update(factor: number): void {
    this.runNow(this.updateRuns(factor));
  }

  /** {@link update}, yielding its graph run. */
  *updateRuns(factor: number): Generator<GraphRun, void> {
    const up = this.upd!;
    up.g.set(up.factor, Float32Array.of(factor));
    yield { graph: up.g, which: 'update' };
    if (this.report !== null && this.report.optimizer.rssBytes === 0) {
      this.report.optimizer = this.phase();
      this.report.backward.rssBytes ||= rss();
    }
  }

  /** Drives a generator of graph runs to its end, computing each run here and now. */
  runNow<T>(runs: Generator<GraphRun, T>): T {
    for (;;) {
      const r = runs.next();
      if (r.done === true) return r.value;
      this.execute(r.value);
    }
  }

  /** Computes a graph run: plainly, or through the profiler; timed either way. */
  execute(r: GraphRun): void {
    const t0 = performance.now();
    if (this.s.profiler === null) r.graph.run();
    else this.s.profiler.run(r.graph, r.which, this.stepNumber);
    this.seconds[r.which] += (performance.now() - t0) / 1000;
  }

  /**
   * {@link execute} on a worker thread (koffi's async call), the event loop running meanwhile; the
   * profiled step runs here, node by node, as in {@link execute}.
   */
  async executeAsync(r: GraphRun): Promise<void> {
    if (this.s.profiler !== null) {
      this.execute(r);
      return;
    }
    const t0 = performance.now();
    await r.graph.runAsync();
    this.seconds[r.which] += (performance.now() - t0) / 1000;
  }

  /** Starts optimizer step `n` (1-based, the profiler's clock): the timings start from 0. */
  startStep(n: number): void {
    this.stepNumber = n;
    this.seconds.accumulate = this.seconds.norm = this.seconds.update = 0;
  }

  /** The nodes of the compiled accumulate and update graphs. */
  nodes(): { accumulate: GraphNode[]; update: GraphNode[] } {
    const [longest] = this.buckets.values();
    return { accumulate: longest!.acc.g.nodes(), update: this.upd!.g.nodes() };
  }

  /**
   * The persistent copies of the frozen weights (`auto` says why) and a quantized base's
   * input-gradient type (measured or set). Null before the graphs are built.
   */
  kernelChoices(): KernelChoices | null {
    if (this.frozen === null) return null;
    const { count, bytes, reason } = this.frozen;
    return { frozenCopies: { count, bytes, reason }, quantComputeDType: this.gradType };
  }

  /** The engine memory the run holds now: model, copies, adapters, gradients, optimizer, graphs. */
  phase(): PhaseMemory {
    const { model, lora, optimizer } = this.s;
    let engineBytes =
      model.bytes +
      (this.frozen?.bytes ?? 0) +
      this.grads.bytes +
      (lora?.store.bytes ?? 0) +
      optimizer.stateBytes;
    for (const g of this.graphs()) engineBytes += g.memory().compute + g.memory().inputs;
    for (const { ev } of this.buckets.values()) engineBytes += ev.bytes();
    return { engineBytes, rssBytes: rss() };
  }

  /** Memory per phase, as measured when the graphs were built and first run. */
  memoryReport(): MemoryReport {
    return this.report!;
  }

  /** What the run holds on each device (one entry unless the model is split). */
  memoryByDevice(): DeviceMemory[] {
    const { model, lora, optimizer } = this.s;
    const map = model.deviceMap;
    return model.backends.map((b) => {
      const weights = model.bytesOn(b) + (this.frozen?.bytesOn(b) ?? 0); // the frozen weights' copies too
      const adapters = lora?.store.bytesOn(b) ?? 0;
      const gradients = this.grads.bytesOn(b);
      const optimizerState = optimizer.stateBytesOn(b);
      let compute = 0;
      for (const g of this.graphs()) compute += g.memoryOn(b).compute + g.memoryOn(b).inputs;
      for (const { ev } of this.buckets.values()) compute += ev.bytes(b);
      return {
        device: b.name,
        blocks: map.blocks.flatMap((d, i) => (d === b ? [i] : [])),
        head: map.model === b,
        weights,
        adapters,
        gradients,
        optimizerState,
        compute,
        total: weights + adapters + gradients + optimizerState + compute,
      };
    });
  }

  dispose(): void {
    this.disposeGraphs();
    this.grads.dispose();
    this.frozen?.dispose();
    this.frozen = null;
  }

  // ------------------------------------------------------------------------------ building

  private graphs(): Graph[] {
    const accs = [...this.buckets.values()].map((b) => b.acc.g);
    return [...accs, this.norm?.g, this.upd?.g].filter((g) => g !== undefined);
  }

  private disposeGraphs(): void {
    for (const g of this.graphs()) g.dispose();
    for (const { ev } of this.buckets.values()) ev.dispose();
    this.buckets.clear();
    this.norm = this.upd = this.forward = null;
  }

  /** The graphs of sequence length `seqLen`, built (and allocated) on first use. */
  private bucket(seqLen: number): { acc: AccumulateGraph; ev: Evaluator } {
    const b = this.buckets.get(seqLen);
    if (b !== undefined) return b;
    const f = { ...this.forward!, seqLen };
    const acc = this.buildAccumulate(f);
    try {
      acc.g.compile();
      const built = { acc, ev: Evaluator.build(f) };
      this.buckets.set(seqLen, built);
      return built;
    } catch (e) {
      acc.g.dispose();
      const { needed, free } = e instanceof OutOfMemoryError ? e.details : {};
      if (typeof needed === 'number' && typeof free === 'number')
        throw stepMemoryError({ ...this.s.shape, seqLen }, this.s.model.backend.name, needed, free, true);
      throw e;
    }
  }

  private buildGraphs(probe: Collated): void {
    const load = this.phase();
    const f = { ...this.forwardSetup(this.makeFrozenCopies()), seqLen: probe.seqLen };
    // the accumulate graph is the largest: it is measured (planned) before anything is allocated,
    // and allocated after the forward phase was measured
    const acc = this.buildAccumulate(f);
    let forward: PhaseMemory;
    try {
      const ev = Evaluator.build(f);
      this.buckets.set(f.seqLen, { acc, ev });
      ev.lossSum(probe);
      forward = this.phase();
      acc.g.compile();
    } catch (e) {
      acc.g.dispose();
      this.buckets.get(f.seqLen)?.ev.dispose();
      this.buckets.clear();
      throw e;
    }
    this.forward = f;
    const backward = { engineBytes: this.phase().engineBytes, rssBytes: 0 };
    this.norm = this.buildNorm();
    this.upd = this.buildUpdate();
    this.report = {
      load,
      forward,
      backward,
      optimizer: { engineBytes: 0, rssBytes: 0 },
      peakRssBytes: 0,
      devices: [],
      parts: {
        weights: this.s.model.bytes + (this.frozen?.bytes ?? 0),
        trainable: this.s.params.reduce((n, p) => n + p.numel * 4, 0),
        gradients: this.grads.bytes,
        optimizerState: this.s.optimizer.stateBytes,
        activations: acc.g.memory().compute,
      },
    };
  }

  /** The frozen weights' persistent copies (`frozen_weight_copies`), made before the first graph. */
  private makeFrozenCopies(): FrozenWeights {
    const { model } = this.s;
    const trainable = new Set(model.tensors().filter((t) => t.requiresGrad));
    const quantized = model.tensors().some((t) => !trainable.has(t) && t.rank === 2 && isQuantDType(t.dtype));
    this.gradType = quantized ? chooseGradType(model.backend, this.s.quantComputeDType) : null;
    this.frozen = FrozenWeights.create(model, trainable, {
      mode: this.s.frozenCopies,
      computeDType: this.s.computeDType,
      quantGradType: this.gradType?.type ?? 'f32',
      repack: !this.s.dora, // DoRA's norms read the weight itself
    });
    return this.frozen;
  }

  private forwardSetup(frozen: FrozenWeights): ForwardSetup {
    const { shape } = this.s;
    return {
      model: this.s.model,
      adapter: this.s.lora?.hook(),
      computeDType: this.s.computeDType,
      frozen,
      crossEntropyChunk: shape.crossEntropyChunk ?? 0,
      batch: shape.batchSize,
      seqLen: shape.seqLen,
      packed: this.s.packed,
    };
  }

  private buildAccumulate(f: ForwardSetup): AccumulateGraph {
    const g = new Graph(f.model.backends);
    try {
      const { ids, labels, mask } = forwardInputs(g, f);
      const scale = g.input([1], 'f32', 'loss_scale');
      const o = { ...forwardOptions(f, mask), checkpoint: this.s.shape.gradientCheckpointing };
      const taps = { weights: [] as Tensor[], tokenLosses: [] as Tensor[] };
      const loss = lossSum(f, g, ids, labels, o, scale, taps);
      const grads = g.backward(mul(loss, scale), this.s.params);
      // ggml orders the nodes depth-first from each assignment in turn: the last block's gradients
      // first, so that every block's weight gradients run as soon as its output gradient exists and
      // its activations (recomputed ones, with gradient checkpointing) are freed block by block,
      // rather than all kept until the first block's input gradient is done
      for (let i = this.s.params.length - 1; i >= 0; i--) {
        const p = this.s.params[i]!;
        const sum = this.grads.get(`grad${i}`);
        const grad = grads.get(p);
        if (grad === undefined) throw new QtuneError('GRAPH', `no gradient reaches ${p.name}`);
        g.label('grad.accumulate', () => g.assign(sum, add(sum, grad)));
      }
      const out = g.output(loss);
      g.plan(); // compiled (allocated) by buildGraphs, after the forward phase
      return { g, ids, labels, mask, scale, loss: out, weight: taps.weights[0]! };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  private buildNorm(): NonNullable<TrainStep['norm']> {
    const g = new Graph(this.s.model.backends);
    try {
      const sumsq = g.label('grad.norm', () => {
        let total: Tensor | null = null;
        for (const t of this.grads.tensors) {
          const s = sum(sqr(t));
          total = total === null ? s : add(total, s);
        }
        return g.output(total!);
      });
      g.compile();
      return { g, sumsq };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }

  private buildUpdate(): NonNullable<TrainStep['upd']> {
    const g = new Graph(this.s.model.backends);
    try {
      const factor = g.input([1], 'f32', 'grad_factor');
      const grads = new Map<Tensor, Tensor>();
      g.noGrad(() =>
        g.label('grad.scale', () =>
          this.s.params.forEach((p, i) => grads.set(p, mul(this.grads.get(`grad${i}`), factor))),
        ),
      );
      this.s.optimizer.build(g, grads);
      g.compile();
      return { g, factor };
    } catch (e) {
      g.dispose();
      throw e;
    }
  }
}

/** Kernel choices in a line each, for a run's log (nothing before the first graph). */
export function kernelChoiceLines(k: KernelChoices | null): string[] {
  if (k === null) return [];
  const c = k.frozenCopies;
  const lines = [
    `frozen weight copies: ${c.reason ?? (c.count === 0 ? 'off' : `${c.count} weights, ${formatBytes(c.bytes)}`)}`,
  ];
  const q = k.quantComputeDType;
  if (q !== null)
    lines.push(
      `quant compute dtype: ${q.type} (${q.speeds === null ? 'set' : `${q.source}: bf16 ${q.speeds.bf16.toFixed(0)} GFLOP/s, f32 ${q.speeds.f32.toFixed(0)}`})`,
    );
  return lines;
}
