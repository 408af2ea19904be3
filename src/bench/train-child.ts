/**
 * One configuration of the training benchmark, in its own process (spawned by ./train.ts with the
 * JSON of a ChildSpec as its argument; prints one JSON line, a ChildResult).
 *
 * The model is allocated at the shape with seeded random weights (uniform, std ~0.02; norms 1),
 * quantized by `quantizeForTraining` for QLoRA, and handed to the Trainer as a `PreparedModel`.
 * Data: bench_lora.py's synthetic task — a sparse Markov chain over 64 "active" token ids, each with
 * 4 random successors; 8 fixed batches of `batch` sequences, cycled (our own seeded generator, so the
 * token ids differ from PyTorch's, the structure does not).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpuBackend } from '../engine/device.js';
import { getEngine } from '../engine/library.js';
import { parseLlamaConfig } from '../models/config.js';
import { LlamaModel } from '../models/llama.js';
import { formatProfile, writeProfileTrace } from '../train/profile.js';
import { resolveTrainType } from '../train/train-type.js';
import { quantizeForTraining, Trainer, type PreparedModel } from '../train/trainer.js';
import type { Example } from '../data/example.js';
import { peakRss } from '../train/memory.js';
import { seededUniform } from '../util/random.js';
import { cpuFlags, stepFlops, type ChildResult, type ChildSpec } from './train-spec.js';

const MB = 2 ** 20;

/** The Markov-chain task of bench_lora.py: `batches` × `batch` windows of `seq` tokens with next-token labels. */
export function markovData(vocab: number, seq: number, batch: number, batches = 8, seed = 1): Example[] {
  const rand = seededUniform(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const activeCount = Math.min(64, vocab);
  const branch = 4;
  // a random subset of the vocabulary (partial Fisher–Yates)
  const perm = Int32Array.from({ length: vocab }, (_, i) => i);
  for (let i = 0; i < activeCount; i++) {
    const j = i + int(vocab - i);
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const active = perm.subarray(0, activeCount);
  const succ = Array.from({ length: activeCount }, () =>
    Array.from({ length: branch }, () => int(activeCount)),
  );
  const out: Example[] = [];
  for (let e = 0; e < batches * batch; e++) {
    let state = int(activeCount);
    const tokens = new Int32Array(seq + 1);
    for (let t = 0; t <= seq; t++) {
      tokens[t] = active[state]!;
      state = succ[state]![int(branch)]!;
    }
    out.push({ ids: tokens.slice(0, seq), labels: tokens.slice(1) });
  }
  return out;
}

// ---- machine load, as bench_lora.py measures it: CPU used by other processes, from /proc/stat

function machineBusy(): number | null {
  try {
    const v = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.split(/\s+/).slice(1, 9).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = v as [
      number,
      number,
      number,
      number,
      number,
      number,
      number,
      number,
    ];
    return (user + nice + system + irq + softirq + steal) / 100; // USER_HZ is 100 on Linux
  } catch {
    return null;
  }
}

function ownCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

class LoadMonitor {
  private t = performance.now();
  private busy = machineBusy();
  private own = ownCpu();
  reset(): void {
    this.t = performance.now();
    this.busy = machineBusy();
    this.own = ownCpu();
  }
  /** Wall seconds and other processes' CPU seconds since the last call. */
  foreign(): { wall: number; foreign: number } {
    const t = performance.now();
    const busy = machineBusy();
    const own = ownCpu();
    const wall = (t - this.t) / 1000;
    const foreign =
      busy === null || this.busy === null ? 0 : Math.max(0, busy - this.busy - (own - this.own));
    this.t = t;
    this.busy = busy;
    this.own = own;
    return { wall, foreign };
  }
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Waits (up to maxS) until other processes use < 8% of the machine for needS seconds. */
function waitForQuiet(maxS: number, needS = 3): number {
  const t0 = performance.now();
  if (maxS <= 0 || machineBusy() === null) return 0;
  const mon = new LoadMonitor();
  const ncpu = os.availableParallelism();
  let quiet = 0;
  while ((performance.now() - t0) / 1000 < maxS) {
    sleep(500);
    const { wall, foreign } = mon.foreign();
    if (foreign / (wall * ncpu) < 0.08) {
      quiet += wall;
      if (quiet >= needS) break;
    } else quiet = 0;
  }
  return (performance.now() - t0) / 1000;
}

/** Resets the kernel's peak-RSS mark (VmHWM) to the current RSS; false where that is not possible. */
function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function child(spec: ChildSpec): ChildResult {
  const { shape: s, run } = spec;
  const gc = (globalThis as { gc?: () => void }).gc;
  const trainType = resolveTrainType(run.trainType, run.quantization ?? undefined);
  const config = parseLlamaConfig({
    model_type: 'llama',
    vocab_size: s.vocab,
    hidden_size: s.dim,
    intermediate_size: s.ffn,
    num_hidden_layers: s.layers,
    num_attention_heads: s.heads,
    num_key_value_heads: s.kvHeads,
    max_position_embeddings: Math.max(2048, s.seq),
    tie_word_embeddings: s.tie,
  });
  // as prepareModel loads for the train type: f32 weights, trainable for full fine-tuning
  const full = trainType.adapter === 'full';
  const model = LlamaModel.allocate(
    cpuBackend(),
    config,
    () => 'f32',
    () => full,
  );
  let seed = 1;
  for (const t of model.tensors()) {
    const data = new Float32Array(t.numel);
    if (t.rank === 1) data.fill(1);
    else
      for (let i = 0; i < data.length; i++) {
        seed = (seed * 1664525 + 1013904223) >>> 0;
        data[i] = (seed / 2 ** 32 - 0.5) * 0.07; // uniform, std 0.02
      }
    model.write(t.name, data);
  }
  quantizeForTraining(model, trainType, null);
  const prepared: PreparedModel = {
    source: `random ${s.name}`,
    model,
    tokenizer: null,
    trainType,
    precision: spec.precision,
    expansion: null,
    dispose: () => model.dispose(),
  };
  gc?.();
  const loadPeak = peakRss();
  const reset = resetPeakRss();

  const trainer = new Trainer(
    prepared,
    { train: markovData(s.vocab, s.seq, s.batch) },
    {
      trainType: run.trainType,
      ...(run.quantization === null ? {} : { quantization: run.quantization }),
      precision: spec.precision,
      ...(spec.gradientCheckpointing === null ? {} : { gradientCheckpointing: spec.gradientCheckpointing }),
      ...(full ? {} : { lora: { rank: s.rank, alpha: s.alpha } }),
      batchSize: s.batch,
      maxSteps: 1_000_000,
      maxGradNorm: 0, // bench_lora.py does not clip (the norm graph still runs)
      optimizer: { name: 'adamw', lr: full ? 1e-3 : s.loraLr, weight_decay: 0 },
      seed: 0,
      ...spec.trainer,
      // one step after the timed ones, node by node
      ...(spec.profile === null ? {} : { profile: { step: spec.warmup + spec.steps + 1 } }),
    },
  );

  const losses: number[] = [];
  try {
    for (let i = 0; i < spec.warmup; i++) losses.push(trainer.step().loss);
    const waited = waitForQuiet(spec.quietWait);
    const mon = new LoadMonitor();
    const ncpu = os.availableParallelism();
    const times: number[] = [];
    const clean: number[] = [];
    const parts: { accumulate: number; norm: number; update: number; other: number }[] = [];
    for (let i = 0; i < spec.steps; i++) {
      mon.reset();
      const t0 = performance.now();
      const r = trainer.step();
      losses.push(r.loss);
      const dt = (performance.now() - t0) / 1000;
      const { wall, foreign } = mon.foreign();
      times.push(dt);
      clean.push(foreign < 0.03 + 0.05 * wall * ncpu ? 1 : 0);
      // the step's own timing of its graphs (StepResult.graphSeconds)
      const p = { ...r.graphSeconds, other: 0 };
      p.other = Math.max(0, dt - p.accumulate - p.norm - p.update);
      parts.push(p);
    }
    // the forward alone (the eval graph, no backward), to split the accumulate graph's time
    const probe = markovData(s.vocab, s.seq, s.batch, 1);
    const fwd: number[] = [];
    for (let i = 0; i < 2; i++) {
      const t0 = performance.now();
      trainer.evaluate(probe);
      fwd.push((performance.now() - t0) / 1000);
    }
    let profileLines: string[] | null = null;
    if (spec.profile !== null) {
      trainer.step();
      const p = trainer.profile()!;
      writeProfileTrace(spec.profile.trace, p, trainer.memory());
      profileLines = [
        ...formatProfile(p, { labels: 15, blocks: false, top: 10 }),
        `trace: ${spec.profile.trace}`,
      ];
    }
    const cleanTimes = times.filter((_, i) => clean[i] === 1);
    const mem = trainer.memory();
    const info = getEngine().info;
    const flops = stepFlops(s, full ? 'full' : 'lora');
    const round4 = (x: number) => Math.round(x * 1e4) / 1e4;
    const peak = peakRss();
    const numel = (ts: readonly { numel: number }[]) => ts.reduce((n, t) => n + t.numel, 0);
    return {
      engine: `${info.kind} (${info.cpuVariant})`,
      cpu: info.cpuModel,
      cpu_flags: cpuFlags(info.cpuFeatures),
      precision: spec.precision,
      choices: trainer.kernelChoiceLines(),
      gradient_checkpointing: trainer.gradientCheckpointing,
      profile: profileLines,
      threads: info.threads,
      tokens_per_step: s.batch * s.seq,
      step_s_best: round4(Math.min(...times)),
      step_s_median: round4(median(cleanTimes.length >= 3 ? cleanTimes : times)),
      step_times: times.map(round4),
      step_clean: clean,
      waited_for_quiet_s: Math.round(waited * 10) / 10,
      graph_s: {
        accumulate: round4(median(parts.map((p) => p.accumulate))),
        norm: round4(median(parts.map((p) => p.norm))),
        update: round4(median(parts.map((p) => p.update))),
        other: round4(median(parts.map((p) => p.other))),
        forward: round4(Math.min(...fwd)),
      },
      model_gflop_per_step: Math.round(flops / 1e8) / 10,
      // without the reset, VmHWM still holds the load's peak: report the larger, honestly
      peak_rss_mb: Math.round(((reset ? peak : Math.max(peak, loadPeak)) / MB) * 10) / 10,
      load_peak_rss_mb: Math.round((loadPeak / MB) * 10) / 10,
      engine_mb: {
        weights: Math.round(mem.parts.weights / MB),
        gradients: Math.round(mem.parts.gradients / MB),
        optimizer_state: Math.round(mem.parts.optimizerState / MB),
        activations: Math.round(mem.parts.activations / MB),
      },
      loss_first: round4(losses[0]!),
      loss_last: round4(losses[losses.length - 1]!),
      params_total: numel(trainer.model.tensors()) + (trainer.lora === null ? 0 : numel(trainer.params)),
      params_trainable: numel(trainer.params),
    };
  } finally {
    trainer.dispose();
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const spec = JSON.parse(process.argv[2]!) as ChildSpec;
  console.log(JSON.stringify(child(spec)));
}
