/**
 * The Trainer's contracts, on the parity fixture's Llama (vocabulary 256) fed Moby Dick as bytes:
 * gradient accumulation is exact, resume is exact, checkpoints of another setup are refused, fp16
 * loss scaling skips overflowing steps, a diverging run stops with the last good checkpoint, every
 * precision mode trains, the schedule drives the optimizer, memory is reported per phase, and the
 * adapter files read back to the same logits.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { createAdapterHook } from '../../src/peft/apply.js';
import { loadGgufLoraAdapter } from '../../src/peft/gguf-lora.js';
import { loadPeftAdapter } from '../../src/peft/peft.js';
import { cpuBackend, type Backend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import type { LinearHook } from '../../src/models/llama.js';
import { Graph } from '../../src/tensor/index.js';
import { resolveTrainType } from '../../src/train/train-type.js';
import {
  Trainer,
  TrainingError,
  type Precision,
  type PreparedModel,
  type TrainerOptions,
} from '../../src/train/trainer.js';
import type { TrainData } from '../../src/data/example.js';
import { ROOT } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';
import { writeRandomLlama } from '../helpers/random-model.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-trainer-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const DATA: TrainData = byteData(32, 48, 8);

function prepare(
  trainType: string,
  backend: Backend = cpuBackend(),
  precision: Precision = 'fp32',
  dir = FIXTURE,
): PreparedModel {
  return prepareFolder(dir, trainType, backend, precision);
}

function trainer(o: Partial<TrainerOptions> & { trainType?: string }, backend?: Backend): Trainer {
  const trainType = o.trainType ?? 'lora';
  return new Trainer(prepare(trainType, backend, o.precision ?? 'fp32'), DATA, {
    trainType,
    batchSize: 2,
    maxSteps: 4,
    optimizer: { name: 'adamw', lr: 1e-2 },
    seed: 3,
    ...o,
  });
}

/** The fixture's Llama with 8 blocks of random weights (activations, not logits, dominate its memory). */
function deepModel(): string {
  const dir = path.join(tmp, 'deep');
  return existsSync(dir) ? dir : writeRandomLlama(dir, { num_hidden_layers: 8 }, 9);
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(a[i]!));
  }
  return d / Math.max(m, 1e-12);
}

function logitsWith(p: Trainer, hook: LinearHook | undefined): Float32Array {
  const g = new Graph(p.model.backend);
  try {
    const ids = g.input([1, 32], 'i32');
    const out = g.output(g.noGrad(() => p.model.forward(g, ids, hook === undefined ? {} : { linear: hook })));
    g.compile();
    g.set(ids, DATA.validation![0]!.ids);
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
  }
}

describe('Trainer', () => {
  for (const device of testDevices().devices) {
    // the CPU sums in the same order either way; ggml-vulkan rounds matmul inputs to f16 and picks its
    // kernels by batch size
    const tol = device.backend.isCpu ? 1e-5 : 1e-3;
    it(`accumulates 4 micro-batches of 1 exactly as one batch of 4 (within ${tol}) on ${device.name}`, () => {
      // SGD: the update is linear in the gradient (Adam's g/(√v+ε) would magnify rounding where g ≈ 0)
      const sgd = { name: 'sgd' as const, lr: 0.5, momentum: 0.9 };
      const o = { maxSteps: 3, optimizer: sgd };
      const a = trainer({ ...o, batchSize: 4, gradientAccumulationSteps: 1 }, device.backend);
      const b = trainer({ ...o, batchSize: 1, gradientAccumulationSteps: 4 }, device.backend);
      try {
        const la = a.train().losses;
        const lb = b.train().losses;
        for (let i = 0; i < la.length; i++)
          assert.ok(
            Math.abs(la[i]! - lb[i]!) <= tol * Math.abs(la[i]!),
            `step ${i + 1}: ${la[i]} vs ${lb[i]}`,
          );
        const wa = a.adapterWeights();
        const wb = b.adapterWeights();
        let worst = 0;
        for (const [name, m] of wa.modules) {
          worst = Math.max(
            worst,
            maxRelDiff(m.A, wb.modules.get(name)!.A),
            maxRelDiff(m.B, wb.modules.get(name)!.B),
          );
        }
        console.log(
          `accumulation on ${device.name}: largest relative difference of the trained LoRA weights ${worst.toExponential(2)}`,
        );
        assert.ok(worst <= tol, `LoRA weights differ by ${worst}`);
      } finally {
        a.dispose();
        b.dispose();
      }
    });
  }

  it('resumes from a checkpoint with exactly the losses of an uninterrupted run', () => {
    const out = path.join(tmp, 'resume');
    const opts = {
      maxSteps: 6,
      saveEvery: 3,
      outputDir: out,
      gradientAccumulationSteps: 2,
      lora: { rank: 4, alpha: 8, dropout: 0.1 },
      schedule: { name: 'cosine' as const, warmup_steps: 2 },
    };
    const full = trainer(opts);
    const whole = full.train().losses;
    full.dispose();
    assert.ok(existsSync(path.join(out, 'checkpoint-3', 'trainer_state.json')));
    assert.deepEqual(readdirSync(out).sort(), ['checkpoint-3', 'checkpoint-6']);
    const resumed = trainer({ ...opts, outputDir: path.join(tmp, 'resume2') });
    try {
      resumed.loadCheckpoint(path.join(out, 'checkpoint-3'));
      assert.equal(resumed.globalStep, 3);
      const rest = resumed.train().losses;
      assert.deepEqual(rest, whole.slice(3));
    } finally {
      resumed.dispose();
    }
  });

  it('refuses a checkpoint of another train type or rank', () => {
    const ckpt = path.join(tmp, 'resume', 'checkpoint-3');
    const dora = trainer({ trainType: 'dora', lora: { rank: 4, alpha: 8 } });
    const rank8 = trainer({ lora: { rank: 8, alpha: 16 } });
    try {
      assert.throws(
        () => dora.loadCheckpoint(ckpt),
        (e: unknown) => e instanceof ConfigError && /train type lora, this run is dora/.test(e.message),
      );
      assert.throws(
        () => rank8.loadCheckpoint(ckpt),
        (e: unknown) => e instanceof ConfigError && /other trainable tensors/.test(e.message),
      );
      assert.throws(() => rank8.loadCheckpoint(tmp), /not a qtune checkpoint/);
    } finally {
      dora.dispose();
      rank8.dispose();
    }
  });

  it('skips fp16 steps whose gradients overflow and halves the loss scale', () => {
    const records: { kind: string; lossScale?: number }[] = [];
    const t = trainer({
      precision: 'fp16',
      maxSteps: 6,
      lossScale: { initial: 2 ** 19 },
      onLog: (r) => records.push(r),
    });
    try {
      const before = t.adapterWeights().modules.get('model.layers.0.self_attn.q_proj')!.B.slice();
      const first = t.step();
      assert.equal(first.skipped, true);
      assert.deepEqual(
        t.adapterWeights().modules.get('model.layers.0.self_attn.q_proj')!.B,
        before,
        'a skipped step changed weights',
      );
      assert.equal(t.currentLossScale, 2 ** 18);
      const result = t.train();
      const skips = records.filter((r) => r.kind === 'skip').length;
      const steps = records.filter((r) => r.kind === 'step').length;
      console.log(
        `fp16: ${skips + 1} skipped steps, then ${steps} updates at loss scale ${t.currentLossScale}`,
      );
      assert.ok(steps >= 1 && result.losses.some(Number.isFinite));
      assert.ok(t.currentLossScale < 2 ** 18);
    } finally {
      t.dispose();
    }
  });

  it('doubles the fp16 loss scale after every growth interval of good steps (GradScaler)', () => {
    // closed form with no overflow: the scale logged after step k is initial · 2^⌊k / interval⌋
    const records: { kind: string; lossScale?: number }[] = [];
    const [initial, interval, steps] = [2 ** 4, 3, 10];
    const t = trainer({
      precision: 'fp16',
      maxSteps: steps,
      lossScale: { initial, growthInterval: interval },
      onLog: (r) => records.push(r),
    });
    try {
      assert.equal(t.currentLossScale, initial);
      t.train();
      const logged = records.filter((r) => r.kind === 'step' || r.kind === 'skip');
      assert.deepEqual(
        logged.map((r) => r.kind),
        Array<string>(steps).fill('step'),
      );
      assert.deepEqual(
        logged.map((r) => r.lossScale),
        Array.from({ length: steps }, (_, k) => initial * 2 ** Math.floor((k + 1) / interval)),
      );
      // the default interval is PyTorch's 2000 good steps: the scale stays put over 10
      const d = trainer({ precision: 'fp16', maxSteps: steps, lossScale: { initial } });
      try {
        d.train();
        assert.equal(d.currentLossScale, initial);
      } finally {
        d.dispose();
      }
    } finally {
      t.dispose();
    }
  });

  it('stops a diverging run with a clear error that names the last good checkpoint', () => {
    const out = path.join(tmp, 'diverge');
    const t = trainer({
      trainType: 'full',
      maxSteps: 30,
      maxGradNorm: 0,
      optimizer: { name: 'sgd', lr: 1e30 },
      saveEvery: 1,
      outputDir: out,
    });
    try {
      assert.throws(
        () => t.train(),
        (e: unknown) =>
          e instanceof TrainingError &&
          /training stopped at step \d+: the (loss|gradient norm) is (NaN|Infinity)/.test(e.message) &&
          e.message.includes(out),
      );
      const last = readdirSync(out)
        .filter((d) => d.startsWith('checkpoint-'))
        .sort((x, y) => Number(x.split('-')[1]) - Number(y.split('-')[1]))
        .at(-1)!;
      const again = trainer({
        trainType: 'full',
        maxGradNorm: 0,
        optimizer: { name: 'sgd', lr: 1e30 },
        maxSteps: 30,
      });
      again.loadCheckpoint(path.join(out, last)); // the last good checkpoint still loads
      again.dispose();
    } finally {
      t.dispose();
    }
  });

  it('clips the global gradient norm', () => {
    const t = trainer({
      trainType: 'full',
      maxSteps: 1,
      maxGradNorm: 1e-3,
      optimizer: { name: 'sgd', lr: 1 },
    });
    try {
      const before = t.params.map((p) => p.store!.read(p));
      const r = t.step();
      let sq = 0;
      t.params.forEach((p, i) => {
        const after = p.store!.read(p);
        for (let k = 0; k < after.length; k++) sq += (after[k]! - before[i]![k]!) ** 2;
      });
      // plain SGD with lr 1 moves the weights by the clipped gradient: its norm is max_grad_norm
      assert.ok(r.gradNorm > 1e-2, `the gradient norm ${r.gradNorm} is too small to be clipped`);
      assert.ok(Math.abs(Math.sqrt(sq) - 1e-3) <= 1e-3 * 1e-3, `update norm ${Math.sqrt(sq)}`);
    } finally {
      t.dispose();
    }
  });

  it('evaluates every N steps: loss and perplexity', () => {
    const evals: { step: number; loss?: number; perplexity?: number }[] = [];
    const t = trainer({ maxSteps: 4, evalEvery: 2, onLog: (r) => r.kind === 'eval' && evals.push(r) });
    try {
      const result = t.train();
      assert.deepEqual(
        evals.map((e) => e.step),
        [2, 4],
      );
      for (const e of evals) assert.ok(Math.abs(e.perplexity! - Math.exp(e.loss!)) <= 1e-9 * e.perplexity!);
      assert.deepEqual(
        result.evals.map((e) => e.step),
        [2, 4],
      );
    } finally {
      t.dispose();
    }
  });

  it('refuses a checkpoint of another model', () => {
    const mine = trainer({ maxSteps: 1, lora: { rank: 4, alpha: 8 } });
    const ckpt = mine.saveCheckpoint(path.join(tmp, 'fixture-ckpt'));
    mine.dispose();
    const other = new Trainer(prepare('lora', cpuBackend(), 'fp32', deepModel()), DATA, {
      trainType: 'lora',
      batchSize: 2,
      lora: { rank: 4, alpha: 8 },
      seed: 3,
    });
    try {
      assert.throws(
        () => other.loadCheckpoint(ckpt),
        (e: unknown) => e instanceof ConfigError && /written for another model/.test(e.message),
      );
    } finally {
      other.dispose();
    }
  });

  it('takes the train type and precision once: a trainer told other ones than its prepared model refuses', () => {
    for (const [o, field, given, prepared] of [
      [{ trainType: 'full' }, 'train_type', 'full', 'lora'],
      [{ trainType: 'lora', quantization: 'nf4' }, 'train_type', 'lora over nf4', 'lora'],
      [{ trainType: 'lora', precision: 'bf16' }, 'precision', 'bf16', 'fp32'],
    ] as const) {
      const model = prepare('lora');
      assert.throws(
        () => new Trainer(model, DATA, { ...o, maxSteps: 1 }),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.problem.startsWith(`${field}: ${given} was given to the trainer`) &&
          e.problem.endsWith(`prepared for ${prepared}`),
        JSON.stringify(o),
      );
      // the trainer owned the model from the constructor on: the refusal freed it
      assert.throws(() => model.model.weight('lm_head.weight').read());
    }
    // the same options as the prepared model's, or none, are accepted
    for (const o of [{ trainType: 'lora', precision: 'fp32' as const }, {}]) {
      const t = new Trainer(prepare('lora'), DATA, { ...o, maxSteps: 1 });
      assert.equal(t.trainType.name, 'lora');
      assert.equal(t.settings.precision, 'fp32');
      t.dispose();
    }
  });

  it('resolves the seed system train types and their aliases', () => {
    const cases: [string, string | undefined, string, string | null][] = [
      ['full', undefined, 'full', null],
      ['lora', undefined, 'lora', null],
      ['custom_lora', 'int8', 'lora', 'int8'],
      ['qlora', undefined, 'lora', 'nf4'],
      ['custom_qlora', 'int4', 'lora', 'int4'],
      ['dora', undefined, 'dora', null],
      ['llama_pro', undefined, 'llama_pro', null],
      ['hqq_lora', undefined, 'lora', 'hqq'],
      ['hqq_dora', undefined, 'dora', 'hqq'],
      ['bnb_dora', undefined, 'dora', 'nf4'],
      ['bnb_llama_pro', undefined, 'llama_pro', 'nf4'],
      ['hqq_llama_pro', undefined, 'llama_pro', 'hqq'],
    ];
    for (const [name, q, adapter, quantization] of cases) {
      const r = resolveTrainType(name, q);
      assert.deepEqual([r.adapter, r.quantization], [adapter, quantization], name);
    }
    assert.throws(
      () => resolveTrainType('qlora2'),
      /train_type: "qlora2" is not a train type \(use one of full, lora/,
    );
    assert.throws(() => resolveTrainType('full', 'nf4'), /full fine-tuning trains every weight/);
    assert.throws(() => resolveTrainType('qlora', 'none'), /trains over a quantized base/);
    assert.throws(() => resolveTrainType('lora', 'int3'), /quantization: "int3" is not a method/);
  });

  it('reads the learning rate the optimizer used at every step from the schedule', () => {
    const lrs: number[] = [];
    const t = trainer({
      maxSteps: 8,
      optimizer: { name: 'adamw', lr: 1e-2 },
      schedule: { name: 'cosine', warmup_ratio: 0.25 },
      onLog: (r) => r.kind === 'step' && lrs.push(t.optimizer.lastLr),
    });
    try {
      t.train();
      // HF's cosine with warmup: warmup 2 steps (ceil(0.25·8)), then ½(1 + cos(π·progress))
      const expected = Array.from({ length: 8 }, (_, k) =>
        k < 2 ? (1e-2 * k) / 2 : 1e-2 * 0.5 * (1 + Math.cos(Math.PI * ((k - 2) / 6))),
      );
      lrs.forEach((lr, k) =>
        assert.ok(Math.abs(lr - expected[k]!) <= 1e-12, `step ${k}: ${lr} vs ${expected[k]}`),
      );
    } finally {
      t.dispose();
    }
  });

  it('reports memory per phase, and gradient checkpointing lowers the activations', () => {
    const deep = deepModel();
    const long = byteData(128, 8, 2);
    const make = (gradientCheckpointing: boolean) =>
      new Trainer(prepare('lora', cpuBackend(), 'fp32', deep), long, {
        trainType: 'lora',
        batchSize: 2,
        maxSteps: 2,
        gradientCheckpointing,
      });
    const plain = make(false);
    const ckpt = make(true);
    try {
      const a = plain.train().memory;
      const b = ckpt.train().memory;
      for (const phase of ['load', 'forward', 'backward', 'optimizer'] as const) {
        assert.ok(a[phase].engineBytes > 0 && a[phase].rssBytes > 0, `${phase}: ${JSON.stringify(a[phase])}`);
      }
      assert.ok(a.load.engineBytes < a.backward.engineBytes);
      // AdamW keeps two f32 moments per trainable weight (the buffer adds alignment padding)
      const moments = 2 * a.parts.trainable;
      assert.ok(a.parts.optimizerState >= moments && a.parts.optimizerState <= moments * 1.02 + 65536);
      assert.ok(a.peakRssBytes >= a.optimizer.rssBytes);
      console.log(`activations: ${a.parts.activations} bytes plain, ${b.parts.activations} checkpointed`);
      assert.ok(b.parts.activations < a.parts.activations);
    } finally {
      plain.dispose();
      ckpt.dispose();
    }
  });

  it('writes a PEFT adapter and a GGUF adapter that read back to the same logits', () => {
    const t = trainer({
      maxSteps: 3,
      lora: { rank: 4, alpha: 8, targetModules: ['q_proj', 'v_proj', 'down_proj'] },
    });
    try {
      t.train();
      const dir = path.join(tmp, 'adapter');
      t.saveOutputs(dir);
      const own = logitsWith(t, t.lora!.hook());
      const base = logitsWith(t, undefined);
      assert.ok(maxRelDiff(own, base) > 1e-4, 'the trained adapter changes nothing');
      for (const data of [
        loadPeftAdapter(dir),
        loadGgufLoraAdapter(path.join(dir, 'adapter.gguf'), t.model.config),
      ]) {
        const applied = createAdapterHook(t.model, data);
        try {
          const d = maxRelDiff(logitsWith(t, applied.hook), own);
          assert.ok(d <= 1e-5, `read back: ${d}`);
        } finally {
          applied.dispose();
        }
      }
    } finally {
      t.dispose();
    }
  });
});

const { devices, skipped } = testDevices();
describe('precision modes train', () => {
  for (const device of devices) {
    for (const precision of ['fp32', 'bf16', 'fp16', 'bf16_autocast', 'fp16_autocast'] as const) {
      it(`${precision} on ${device.name}`, () => {
        const t = trainer(
          { precision, maxSteps: 8, batchSize: 4, optimizer: { name: 'adamw', lr: 2e-2 } },
          device.backend,
        );
        try {
          const start = t.evaluate().loss;
          const result = t.train();
          const end = result.evals.at(-1)!.loss;
          console.log(
            `${precision} on ${device.name}: validation loss ${start.toFixed(4)} → ${end.toFixed(4)}`,
          );
          assert.ok(end < start, `${start} → ${end}`);
        } finally {
          t.dispose();
        }
      });
    }
  }
  for (const reason of skipped) it(`on ${reason.split(':')[0]!}`, { skip: reason }, () => undefined);
});
