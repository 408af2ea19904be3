/**
 * The Trainer: every train type over one loop, as llm.c's: take the step's micro-batches, run
 * forward and backward on each (the gradients accumulate), sum across ranks, take the global norm,
 * clip, update, log; evaluate and checkpoint now and then. Dividing by the step's target tokens (not
 * per micro-batch) makes 4 micro-batches of 1 equal one batch of 4, and data parallelism exact. Its
 * parts: prepare.ts (the model), assemble.ts and options.ts (the options, checked once),
 * data/batches.ts (order, micro-batches, collation), step.ts (the step's graphs and memory),
 * evaluate.ts, optim/grad-scaler.ts, parallel.ts, checkpoint.ts, peft/outputs.ts; events, pause and
 * stop: control.ts (the Trainer's base class); samples of evalPrompts: samples.ts.
 *
 * @example
 * const trainer = await Trainer.create('tiny-model', data, { trainType: 'lora', maxSteps: 100 });
 * const result = trainer.train();
 * trainer.saveOutputs('out/adapter');
 * trainer.dispose();
 */
import path from 'node:path';
import type { LoraAdapterData } from '../peft/lora-weights.js';
import type { LlamaModel } from '../models/llama.js';
import type { GradScaler } from '../optim/grad-scaler.js';
import type { Optimizer } from '../optim/optimizer.js';
import type { Schedule } from '../optim/schedule.js';
import type { Tensor } from '../tensor/tensor.js';
import type { Batches, Collated } from '../data/batches.js';
import type { Example, TrainData } from '../data/example.js';
import { assembleTrainer, type TrainerParts } from './assemble.js';
import type { LoopItem } from './control.js';
import { TrainerViews } from './views.js';
import * as ckpt from './checkpoint.js';
import { evaluateExamples, type Evaluation } from './evaluate.js';
import type { LoraLayers } from '../peft/lora.js';
import { peakRss } from './memory.js';
import { checkOptionNames, divergedError, oneProcessOnly, requiredTrainType } from './options.js';
import { accumulateMicroBatches } from './micro-batches.js';
import { stepRecord, type LogRecord, type RunOptions, type Settings, type StepResult } from './options.js';
import type { CreateOptions, MicroBatches, SettingChange, TrainerOptions, TrainResult } from './options.js';
import { adapterData, saveTrainedOutputs, type SaveOutputsOptions } from '../peft/outputs.js';
import { syncFromRank0, type Collectives, type GradientAllReduce } from './parallel.js';
import { prepareModel, type PreparedModel } from './prepare.js';
import type { StepProfiler } from './profile.js';
import type { GraphRun, TrainStep } from './step.js';
import { LogProbs, weightedArgs, type TokenLogProbOptions, type Weighted } from './logprobs.js';
import { blockingObjectiveError, createObjective, type Objective } from './objective.js';
import type { WeightedMicroBatch, WeightedStepOptions } from './objective.js';
import type { ResolvedTrainType } from './train-type.js';

export { DEFAULT_CHUNK_TOKENS } from '../tensor/ops/loss.js';
export { TrainingError } from '../errors.js';
export * from './options.js';
export * from './prepare.js';

export class Trainer extends TrainerViews {
  readonly model: LlamaModel;
  readonly tokenizer: PreparedModel['tokenizer'];
  readonly trainType: ResolvedTrainType;
  readonly lora: LoraLayers | null;
  readonly params: readonly Tensor[];
  readonly optimizer: Optimizer;
  readonly schedule: Schedule;
  readonly totalSteps: number;
  /** The options, checked, with their defaults (precision, batch sizes, seed...). */
  readonly settings: Settings;
  /** Whether each decoder block is recomputed in the backward (the option, or the train type's default). */
  readonly gradientCheckpointing: boolean;
  /** The option was not given: {@link gradientCheckpointing} is the train type's default. */
  readonly gradientCheckpointingByDefault: boolean;
  private readonly o: TrainerOptions;
  private readonly prepared: PreparedModel;
  private readonly data: TrainData;
  private readonly batches: Batches;
  protected readonly graphs: TrainStep;
  private readonly scaler: GradScaler;
  /** What checkpoints are written from and checked against. */
  private readonly run: ckpt.RunSetup;
  /** Data parallelism: the job's ranks (null: this process alone). */
  private readonly comm: Collectives | null;
  private readonly allReduce: GradientAllReduce;
  protected readonly profiler: StepProfiler | null;
  private readonly samples: TrainerParts['samples'];
  /** Rank 0's state has reached every rank since the last construction or checkpoint load. */
  private synced = false;
  private stepCount = 0;
  /** Micro-batches run so far (dropout masks derive from it). */
  private microStep = 0;
  private lastCheckpoint: string | null = null;
  private readonly logProbs: LogProbs;
  private readonly objective: Objective | null; // null: sft

  /**
   * A trainer over a model already loaded with {@link prepareModel}. The trainer owns it from here
   * and frees it in {@link dispose}.
   */
  constructor(prepared: PreparedModel, data: TrainData, o: TrainerOptions) {
    super(o.outputDir);
    [this.prepared, this.data, this.o, this.onLog, this.comm] = [prepared, data, o, o.onLog, o.comm ?? null];
    [this.model, this.tokenizer, this.trainType] = [prepared.model, prepared.tokenizer, prepared.trainType];
    const p = assembleTrainer(prepared, data, o);
    [this.settings, this.scaler, this.batches] = [p.settings, p.scaler, p.batches];
    [this.totalSteps, this.samples] = [p.totalSteps, p.samples];
    [this.profiler, this.lora, this.params, this.optimizer] = [p.profiler, p.lora, p.params, p.optimizer];
    [this.schedule, this.graphs, this.allReduce, this.run] = [p.schedule, p.graphs, p.allReduce, p.run];
    this.gradientCheckpointing = p.settings.gradientCheckpointing;
    this.gradientCheckpointingByDefault = p.settings.gradientCheckpointingByDefault;
    const at = () => ({ microStep: this.microStep, steps: this.stepCount, comm: this.comm });
    this.logProbs = new LogProbs({ ...p, collate: (b) => this.batches.collate(b), at });
    this.objective = createObjective(o, this, { rows: p.rows, data });
    if (this.objective !== null) this.logProbs.keepReference();
  }

  /** Loads `source` for the options' train type and precision and returns a trainer over it. */
  static async create(source: string, data: TrainData, o: CreateOptions): Promise<Trainer> {
    checkOptionNames(o); // a misspelt option fails before the model is loaded
    return new Trainer(await prepareModel(source, { ...o, trainType: requiredTrainType(o) }), data, o);
  }

  /** Optimizer steps taken so far (updates, and fp16 steps skipped for overflow). */
  get globalStep(): number {
    return this.stepCount;
  }

  get currentLossScale(): number {
    return this.scaler.scale;
  }

  /**
   * Trains to the last step: steps, periodic evaluation and checkpoints, a final evaluation and
   * checkpoint. An aborted `signal` stops it at the next step boundary (see {@link trainAsync}).
   */
  train(o: RunOptions = {}): TrainResult {
    if (this.objective?.async === true) throw blockingObjectiveError();
    return this.runBlocking(this.loop(o.signal), this.graphs);
  }

  /**
   * {@link train} without blocking the event loop (graphs compute on a worker thread, or with
   * `offThread: false` on this one, yielding at step boundaries: control.ts), so it can pause and stop; an aborted `signal` or stop() ends it at the next step boundary with a
   * checkpoint of that step in outputDir (to resume from), and its result says `aborted`.
   */
  trainAsync(o: RunOptions = {}): Promise<TrainResult> {
    return this.runAsync(this.loop(o.signal), this.graphs, o.offThread ?? true);
  }

  /** The training loop: yields each graph to compute (or an objective's step promise), and undefined after every step. */
  private *loop(signal: AbortSignal | undefined): Generator<LoopItem, TrainResult, StepResult | undefined> {
    if (signal !== undefined) oneProcessOnly(this.comm, 'signal', 'stop a job with its launcher');
    const { outputDir: dir, evalEvery = 0, saveEvery = 0 } = this.o;
    if (dir !== undefined) ckpt.cleanCheckpointLeftovers(dir);
    const [losses, evals]: [number[], TrainResult['evals']] = [[], []];
    const [t0, end] = [performance.now(), this.totalSteps];
    const due = (every: number) => (every > 0 && this.stepCount % every === 0) || this.stepCount === end;
    let tokens = 0;
    while (this.stepCount < this.totalSteps && signal?.aborted !== true && this.control.stopping === null) {
      const r = this.objective === null ? yield* this.stepRuns() : yield* this.objectiveStep();
      tokens += r.tokens;
      losses.push(r.loss);
      this.logStep(r);
      if (due(evalEvery)) this.evaluation(evals);
      if (dir !== undefined && due(saveEvery)) this.checkpointInto(dir);
      yield;
    }
    const aborted = this.stepCount < end;
    const keep = aborted && (this.control.stopping?.save ?? true) && losses.length > 0;
    // stopped by the signal or stop(): the step reached is kept (unless just saved), to resume from
    if (keep && dir !== undefined && !due(saveEvery)) this.checkpointInto(dir);
    const [seconds, memory] = [(performance.now() - t0) / 1000, this.memory()];
    return { steps: this.stepCount, losses, evals, memory, tokensPerS: tokens / seconds, seconds, aborted };
  }

  /** At each evaluation: the validation loss (given validation data), and the evalPrompts' samples. */
  private evaluation(evals: TrainResult['evals']): void {
    const step = this.stepCount;
    if ((this.data.validation?.length ?? 0) > 0) {
      const { loss, perplexity } = this.evaluate();
      evals.push({ step, loss, perplexity });
      this.log({ kind: 'eval', step, loss, perplexity });
    }
    for (const s of this.samples?.generate(this.lora) ?? []) this.log({ kind: 'sample', step, ...s });
  }

  /** Writes checkpoint-N of the step reached into `outputDir` (data parallelism: rank 0 writes it). */
  private checkpointInto(outputDir: string): void {
    const dir = path.join(outputDir, `checkpoint-${this.stepCount}`);
    if ((this.comm?.rank ?? 0) !== 0) this.lastCheckpoint = dir;
    else this.log({ kind: 'checkpoint', step: this.stepCount, path: this.saveCheckpoint(dir) });
  }

  /**
   * One optimizer step over `gradientAccumulationSteps` micro-batches: the next ones of the training
   * data, or those given (with a communicator: this rank's share of the step, of at most
   * {@link microBatchSize} examples each). Every rank of a job calls it together.
   */
  step(microBatches?: MicroBatches): StepResult {
    return this.graphs.runNow(this.stepRuns(microBatches));
  }

  /** An objective's step (objective.ts): GRPO's is a promise (its reward functions), which the driver awaits. */
  private *objectiveStep(): Generator<LoopItem, StepResult, StepResult | undefined> {
    const next = this.objective!.step(this.batches.next());
    return next instanceof Promise ? (yield next)! : next;
  }

  /** {@link step}, or with `w` {@link weightedStep}, yielding each graph to compute to the loop's driver. */
  private *stepRuns(microBatches?: MicroBatches, w: Weighted | null = null): Generator<GraphRun, StepResult> {
    this.ensureGraphs();
    if (!this.synced) this.syncFromRank0();
    const t0 = performance.now();
    this.graphs.startStep(this.stepCount + 1);
    const batches = microBatches ?? this.batches.next();
    const mine = yield* this.accumulate(batches, this.microStep, w);
    this.microStep += microBatches === undefined ? this.settings.accumulation : batches.length;
    const sums = this.allReduce.sumStep(mine); // data parallelism: the whole global batch's
    const { tokens, inputTokens, ms: allreduceMs, bytes: allreduceBytes } = sums;
    const [norm, lossSum] = w === null ? [tokens, sums.lossSum] : [w.count, w.loss * w.count];
    let overflow = !Number.isFinite(sums.lossSum) || !Number.isFinite(lossSum);
    if (overflow && !this.scaler.enabled) this.diverged(lossSum);
    const lr = this.schedule.lrAt(this.stepCount);
    let gradNorm = 0;
    if (tokens > 0) {
      const u = { scaler: this.scaler, lr, maxGradNorm: this.settings.maxGradNorm, overflow };
      ({ gradNorm, overflow } = yield* this.graphs.applyRuns(norm, u, (v, what) => this.diverged(v, what)));
    }
    this.graphs.grads.zero();
    this.stepCount++;
    const [seconds, graphSeconds] = [(performance.now() - t0) / 1000, { ...this.graphs.seconds }];
    const skipped = overflow || tokens === 0; // tokens 0: nothing to learn from, no update
    const r = { step: this.stepCount, loss: lossSum / norm, lr, gradNorm, tokens, inputTokens, skipped };
    const metrics = w?.metrics === undefined ? {} : { metrics: w.metrics };
    return { ...r, seconds, graphSeconds, allreduceMs, allreduceBytes, ...metrics };
  }

  /** Runs the accumulate graph over `batches` (× `w`'s weights): their gradients are added into the gradient buffers. */
  private accumulate(batches: MicroBatches, firstMicroStep: number, w: Weighted | null = null) {
    const [rank, size, lossScale] = [this.comm?.rank ?? 0, this.comm?.size ?? 1, this.scaler.scale];
    const p = { graphs: this.graphs, batches: this.batches, lora: this.lora, settings: this.settings };
    const parts = { ...p, rank, size, lossScale, rows: this.logProbs.rows, ...this.logProbs.weightsFor(w) };
    return accumulateMicroBatches(parts, batches, firstMicroStep);
  }

  /** One step of Σₜ wₜ·∇(−log pₜ) / count, clipped and applied as {@link step}'s (docs/objectives.md). */
  weightedStep(microBatches: WeightedMicroBatch[], o: WeightedStepOptions): StepResult {
    return this.graphs.runNow(this.stepRuns(...weightedArgs(microBatches, o)));
  }

  /** Per example, the log-prob of each counted label token (`adapters: false`: the reference model). */
  tokenLogProbs(examples: Example[], o?: TokenLogProbOptions): Float64Array[] {
    this.ensureGraphs();
    return this.logProbs.tokenLogProbs(examples, o);
  }

  /**
   * The mean loss and its gradients for the trainable tensors over `microBatches` (default: the next
   * micro-batches of the data), computed by the step's own accumulate graph, without an update: the
   * gradients a {@link step} would clip and hand to the optimizer, by tensor name. The weights,
   * optimizer and step count are left as they were.
   *
   * @example
   * const { loss, grads } = trainer.gradients([[example]]);
   * grads.get('model.layers.0.self_attn.q_proj.lora_A'); // Float32Array [r * in]
   */
  gradients(microBatches?: MicroBatches): { loss: number; tokens: number; grads: Map<string, Float32Array> } {
    oneProcessOnly(this.comm, 'gradients()', 'call it in a job of one process');
    this.ensureGraphs();
    const run = this.accumulate(microBatches ?? this.batches.next(), this.microStep);
    return this.graphs.gradientsOf(run, this.scaler.scale);
  }

  /** Mean loss and perplexity over the validation data (or its first `evalExamples`). */
  evaluate(examples: readonly Example[] = this.data.validation ?? []): Evaluation {
    if (examples.length > 0) this.ensureGraphs(); // (none: the error, with nothing built)
    const o = { batch: this.settings.microBatchSize, limit: this.o.evalExamples, comm: this.comm };
    const loss = (c: Collated) => this.graphs.evalLoss(c);
    return evaluateExamples(examples, (b) => this.batches.collate(b), loss, o);
  }

  /**
   * Builds the step's graphs and allocates their memory now (the first step does it otherwise), so
   * that a batch the device cannot hold fails with an OutOfMemoryError before a run writes anything.
   */
  allocate(): void {
    this.ensureGraphs();
  }

  protected ensureGraphs(): void {
    // built for the longest bucket: a step that cannot fit fails here, before a run writes anything
    const first = this.data.train.slice(0, this.settings.microBatchSize);
    this.graphs.build(this.batches.collate(first, this.batches.maxSeqLen));
  }

  /** Makes every rank start from rank 0's weights, optimizer state and progress. */
  private syncFromRank0(): void {
    this.synced = true;
    if (this.comm !== null && this.comm.size > 1)
      this.restore(syncFromRank0(this.comm, this.params, this.optimizer, this.progress()));
  }

  /** Where the run stands (what a checkpoint keeps). */
  private progress(): ckpt.Progress {
    return ckpt.progressOf(this.stepCount, this.microStep, this.scaler, this.batches);
  }

  private restore(p: ckpt.Progress): void {
    [this.stepCount, this.microStep] = [p.step, p.micro_step];
    ckpt.restoreProgress(p, this.scaler, this.batches);
  }

  private logStep(r: StepResult): void {
    const memory = { ...this.graphs.phase(), peakRssBytes: peakRss() };
    this.log(stepRecord(r, { scaler: this.scaler, memory, worldSize: this.comm?.size ?? null }));
    for (const s of r.samples ?? []) this.log({ kind: 'sample', step: r.step, ...s }); // GRPO's
  }

  /** Sends a record, stamped with the epoch, to onLog and the listeners. */
  private log(r: Omit<LogRecord, 'epoch'>): void {
    this.emitRecord(r, this.batches.epochFloat);
  }

  private diverged(value: number, what = 'loss'): never {
    throw divergedError(this.stepCount + 1, `the ${what} is ${value}`, this.lastCheckpoint);
  }

  /**
   * Writes the trainable weights, optimizer state, schedule position, loss scale, RNG and data
   * position into `dir` (a temporary folder renamed into place: a crash leaves the last one whole).
   */
  saveCheckpoint(dir: string): string {
    this.lastCheckpoint = ckpt.saveCheckpoint(dir, this.run, this.progress(), this.lastCheckpoint);
    return dir;
  }

  /**
   * Continues from a checkpoint of this model, train type and trainable tensors (exactly, with the
   * same settings); each changed setting is returned and logged (`kind: 'resume'`): train/resume.ts.
   */
  loadCheckpoint(dir: string): SettingChange[] {
    const o = { ignoreDataChange: this.o.resumeIgnoreDataChange };
    const { progress, changes } = ckpt.loadCheckpoint(dir, this.run, o);
    this.restore(progress);
    [this.lastCheckpoint, this.synced] = [dir, false];
    for (const c of changes) this.log({ kind: 'resume', step: this.stepCount, message: c.line });
    return changes;
  }

  /** The LoRA/DoRA adapter saved in a checkpoint folder (for `qtune export`). */
  static checkpointAdapter(dir: string): LoraAdapterData {
    return ckpt.checkpointAdapter(dir);
  }

  /** The trained LoRA/DoRA tensors on the host, in the form the PEFT and GGUF writers take. */
  adapterWeights(): LoraAdapterData {
    return adapterData(this.lora, this.prepared.source, this.trainType.name);
  }

  /**
   * Writes what the run trained into `dir` (outputs.ts): LoRA as a PEFT and a GGUF adapter, DoRA as
   * a PEFT adapter (in adapterDType), full and llama_pro as a model folder (dir/model); `mlx: true`
   * adds dir/mlx. Returns the paths.
   */
  saveOutputs(dir: string, o: SaveOutputsOptions = {}): string[] {
    return saveTrainedOutputs(dir, { ...this.prepared, lora: this.lora }, o);
  }

  dispose(): void {
    this.logProbs.dispose();
    this.graphs.dispose();
    this.optimizer.dispose();
    this.lora?.dispose();
    this.prepared.dispose();
  }
}
