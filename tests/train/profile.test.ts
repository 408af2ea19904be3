/**
 * The per-op profiler: a profiled step computes every non-view node once, labels them by op and by
 * decoder block, counts MUL_MAT FLOPs as the closed form 2·K·M·N, writes a Chrome trace that
 * parses, and changes no result (loss, gradient norm and updated weights equal an unprofiled run's
 * bit for bit). `qtune train --profile` prints the table and writes profile.json; without it, none.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { Graph, linear, reshape, scale } from '../../src/tensor/index.js';
import { calibrateOverhead, profileRun } from '../../src/tensor/profile.js';
import { chromeTrace, formatProfile, writeProfileTrace, type StepProfile } from '../../src/train/profile.js';
import { Trainer, type TrainerOptions } from '../../src/train/trainer.js';
import type { TrainData } from '../../src/data/example.js';
import { ROOT, qtune, tinyTrainArgs } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const CONFIG = JSON.parse(readFileSync(path.join(FIXTURE, 'config.json'), 'utf8')) as {
  hidden_size: number;
  vocab_size: number;
  num_hidden_layers: number;
};
const SEQ = 32;
const BATCH = 2;
const DATA: TrainData = byteData(SEQ, 48, 8);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-profile-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function trainer(o: Partial<TrainerOptions> = {}): Trainer {
  return new Trainer(prepareFolder(FIXTURE, 'lora', cpuBackend()), DATA, {
    trainType: 'lora',
    batchSize: BATCH,
    maxSteps: 3,
    optimizer: { name: 'adamw', lr: 1e-2 },
    seed: 3,
    // the frozen weights transposed inside the step, so that the profile has `wT` rows to label
    frozenWeightCopies: 'off',
    ...o,
  });
}

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

describe('profileRun on a hand-built graph', () => {
  it('times each non-view node once, counts 2·K·M·N for MUL_MAT, and leaves the result as run() gives it', () => {
    const build = () => {
      const g = new Graph(cpuBackend());
      const x = g.input([4, 8]);
      const w = g.input([3, 8]);
      const y = g.output(g.build(() => scale(reshape(linear(x, w), [12]), 2)));
      g.compile();
      g.set(
        x,
        Float32Array.from({ length: 32 }, (_, i) => i / 7 - 2),
      );
      g.set(
        w,
        Float32Array.from({ length: 24 }, (_, i) => Math.sin(i)),
      );
      return { g, y };
    };
    const a = build();
    const b = build();
    try {
      a.g.run();
      const p = profileRun(b.g, 'test');
      // MUL_MAT, RESHAPE (a view, skipped), SCALE
      assert.equal(a.g.nodeCount, 3);
      assert.equal(p.graphNodes, 3);
      assert.equal(p.skipped, 1);
      assert.deepEqual(
        p.nodes.map((n) => [n.index, n.op]),
        [
          [0, 'MUL_MAT'],
          [2, 'SCALE'],
        ],
      );
      assert.equal(p.nodes[0]!.flops, 2 * 8 * 3 * 4); // 2·K·M·N with K = 8, M = 3, N = 4
      assert.equal(p.nodes[1]!.flops, 12); // elementwise: one per element
      assert.equal(p.nodes[0]!.label, 'linear.fwd');
      assert.equal(p.nodes[0]!.bytes, (12 + 24 + 32) * 4);
      assert.deepEqual(b.g.read(b.y), a.g.read(a.y));
      assert.equal(b.g.runCount, 1);
      for (const n of p.nodes) assert.ok(n.ns >= 0 && Number.isFinite(n.ns));
      assert.ok(p.sumMs <= p.runMs, `${p.sumMs} ms of node times within a ${p.runMs} ms run`);
      const overhead = calibrateOverhead(cpuBackend());
      assert.ok(overhead > 0 && Number.isFinite(overhead));
    } finally {
      a.g.dispose();
      b.g.dispose();
    }
  });
});

describe('a profiled training step', () => {
  let profile: StepProfile;
  before(() => {
    const t = trainer({ profile: { step: 2 } });
    try {
      for (let i = 0; i < 3; i++) t.step();
      profile = t.profile()!;
      assert.ok(profile !== null);
      writeProfileTrace(path.join(tmp, 'profile.json'), profile, t.memory());
    } finally {
      t.dispose();
    }
  });

  it('computes every non-view node of each graph exactly once', () => {
    assert.deepEqual(
      profile.runs.map((r) => r.graph),
      ['accumulate', 'norm', 'update'],
    );
    for (const r of profile.runs) {
      assert.ok(r.perNode);
      const indices = r.nodes.map((n) => n.index);
      assert.equal(new Set(indices).size, indices.length, `${r.graph}: a node ran twice`);
      assert.equal(indices.length + r.skipped, r.graphNodes, `${r.graph}: nodes missing`);
      assert.ok(
        indices.every((i, k) => k === 0 || i > indices[k - 1]!),
        'in execution order',
      );
      for (const n of r.nodes) assert.ok(!['VIEW', 'RESHAPE', 'PERMUTE', 'TRANSPOSE', 'NONE'].includes(n.op));
    }
    assert.equal(
      profile.calls,
      profile.runs.reduce((s, r) => s + r.nodes.length, 0),
    );
  });

  it('labels the nodes by op and direction', () => {
    const labels = new Set(profile.byLabel.map((r) => r.key));
    for (const l of [
      'linear.fwd',
      'linear.dX',
      'lora/linear.fwd',
      'lora/linear.dW',
      'xent',
      'xent.bwd',
      'optim',
      'wT',
    ])
      assert.ok(labels.has(l), `label ${l} missing from ${[...labels].join(', ')}`);
    const update = profile.runs.find((r) => r.graph === 'update')!;
    assert.ok(update.nodes.every((n) => n.label === 'grad.scale' || n.label.startsWith('optim')));
  });

  it('has one block row per decoder block', () => {
    const blocks = profile.byBlock.map((r) => r.key).filter((k) => k.startsWith('layers.'));
    assert.deepEqual(
      blocks.sort(),
      Array.from({ length: CONFIG.num_hidden_layers }, (_, i) => `layers.${i}`),
    );
    const share = profile.byBlock.reduce((s, r) => s + r.share, 0);
    assert.ok(Math.abs(share - 1) < 1e-9);
  });

  it('counts MUL_MAT FLOPs as 2·K·M·N·batch, and the LM head as 2·hidden·vocab·tokens', () => {
    const nodes = profile.runs.flatMap((r) => r.nodes);
    const mm = nodes.filter((n) => n.op === 'MUL_MAT');
    assert.ok(mm.length > 0);
    for (const n of mm) assert.equal(n.flops, 2 * n.srcs[0]!.ne[0]! * prod(n.ne));
    const head = mm.filter((n) => n.label === 'linear.fwd' && n.ne[0] === CONFIG.vocab_size);
    assert.equal(head.length, 1);
    assert.equal(head[0]!.flops, 2 * CONFIG.hidden_size * CONFIG.vocab_size * BATCH * SEQ);
  });

  it('node times are finite and within the runs they belong to', () => {
    assert.ok(profile.sumMs > 0 && Number.isFinite(profile.sumMs));
    assert.ok(profile.sumMs <= profile.profiledMs);
    for (const k of ['accumulate', 'norm', 'update'] as const) {
      const w = profile.wallMs[k];
      assert.ok(w !== null && w > 0 && Number.isFinite(w), `${k}: unprofiled wall ${w}`);
    }
    assert.deepEqual(profile.wallSteps, [1, 3]);
    const text = formatProfile(profile).join('\n');
    assert.match(text, /\| op label \| ms\/step \| share \|/);
    assert.match(text, /\| layers\.0 \|/);
  });

  it('writes a Chrome trace: complete events with dur ≥ 0, one thread per graph, memory counters', () => {
    const trace = JSON.parse(readFileSync(path.join(tmp, 'profile.json'), 'utf8')) as {
      traceEvents: {
        name: string;
        ph: string;
        ts: number;
        dur?: number;
        tid: number;
        args?: Record<string, unknown>;
      }[];
    };
    const complete = trace.traceEvents.filter((e) => e.ph === 'X');
    assert.equal(complete.length, profile.calls);
    for (const e of complete) assert.ok(e.dur! >= 0 && e.ts >= 0 && typeof e.name === 'string');
    assert.deepEqual([...new Set(complete.map((e) => e.tid))].sort(), [1, 2, 3]);
    const counters = trace.traceEvents.filter((e) => e.ph === 'C');
    assert.equal(counters.length, 3);
    for (const c of counters) assert.ok((c.args!['engine'] as number) > 0);
    assert.deepEqual(
      chromeTrace(profile).traceEvents.filter((e) => e.ph === 'C'),
      [],
    );
  });
});

describe('profiling changes no result', () => {
  it('loss, gradient norm and updated weights equal those of an unprofiled run', () => {
    const run = (o: Partial<TrainerOptions>) => {
      const t = trainer(o);
      try {
        const steps = [t.step(), t.step()].map((s) => [s.loss, s.gradNorm]);
        return { steps, params: t.params.map((p) => p.read()) };
      } finally {
        t.dispose();
      }
    };
    const plain = run({});
    const profiled = run({ profile: { step: 1 } });
    assert.deepEqual(profiled.steps, plain.steps);
    profiled.params.forEach((p, i) => assert.deepEqual(p, plain.params[i]));
  });

  it('with gradient checkpointing, the recomputed blocks keep their block and labels', () => {
    const t = trainer({ profile: true, maxSteps: 1, gradientCheckpointing: true });
    try {
      t.step();
      const p = t.profile()!;
      assert.equal(p.step, 1, 'the last step of a one-step run');
      const blocks = p.byBlock.map((r) => r.key).filter((k) => k.startsWith('layers.'));
      assert.deepEqual(blocks.sort(), ['layers.0', 'layers.1']);
      // the 7 base linear layers of a block ran in the forward, and again (those whose outputs the
      // backward reads: all but down_proj's) in its recomputation, still inside the block
      const nodes = p.runs.flatMap((r) => r.nodes);
      const fwd = nodes.filter(
        (n) => n.block === 'layers.0' && n.label === 'linear.fwd' && n.op === 'MUL_MAT',
      );
      assert.equal(fwd.length, 7 + 6);
    } finally {
      t.dispose();
    }
  });

  it('refuses a profile step outside the run', () => {
    assert.throws(
      () => trainer({ profile: { step: 4 } }),
      /profile_step: 4 must be a step of this run, 1 to 3/,
    );
  });
});

describe('qtune train --profile', () => {
  const tiny = path.join(tmp, 'tiny-model');
  // on the CPU: where lavapipe's Vulkan is the default device, its shader compiles beside another
  // test file made this file take ~300 s in CI; what the CLI adds to the profiler is device-blind
  const quick = [
    '--backend',
    'cpu',
    '--max_steps',
    '2',
    '--eval_steps',
    '0',
    '--save_steps',
    '0',
    '--context_length',
    '64',
    '--max_samples',
    '16',
  ];
  before(() =>
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 }),
  );

  it('prints the table and writes profile.json; without the flag, no profile.json', () => {
    const out = path.join(tmp, 'out-profile');
    // a generous limit: the run takes ~2 s alone on a quiet machine
    const r = qtune([...tinyTrainArgs(tiny, out), ...quick, '--profile'], {}, 600_000);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /profile of step 2, node by node/);
    assert.match(r.stdout, /\| op label \| ms\/step/);
    assert.match(r.stdout, /\| layers\.1 \|/);
    const trace = JSON.parse(readFileSync(path.join(out, 'profile.json'), 'utf8')) as {
      traceEvents: { ph: string; dur?: number }[];
    };
    assert.ok(trace.traceEvents.some((e) => e.ph === 'X'));

    const plain = path.join(tmp, 'out-plain');
    const r2 = qtune([...tinyTrainArgs(tiny, plain), ...quick], {}, 600_000);
    assert.equal(r2.code, 0, r2.stderr);
    assert.ok(!existsSync(path.join(plain, 'profile.json')));
    assert.doesNotMatch(r2.stdout, /op label/);
  });

  it('refuses profile_step without profile in one line, exit code 2', () => {
    const r = qtune([...tinyTrainArgs(tiny, path.join(tmp, 'out-bad')), ...quick, '--profile_step', '1']);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /profile_step: 1 is set without profile/);
  });
});
