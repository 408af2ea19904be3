/**
 * Learning-rate schedules against the formulas of Hugging Face transformers' optimization.py,
 * written out here in float64 (lr·λ(k) for update k), at every step including the warmup
 * boundaries and past the end; their errors; and a training graph whose optimizer takes its
 * learning rate from a schedule before each step.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { createOptimizer } from '../../src/optim/optimizer.js';
import { SCHEDULE_NAMES, createSchedule, type ScheduleConfig } from '../../src/optim/schedule.js';
import { Graph, TensorStore, linear, mean, sqr, sub } from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';
import { normals, relErr, rng } from '../helpers/ref.js';
import { hfLambda } from './reference.js';

const CASES: { config: ScheduleConfig; warmup: number }[] = [
  { config: { name: 'constant', lr: 1e-3, total_steps: 20 }, warmup: 0 },
  { config: { name: 'constant', lr: 1e-3, total_steps: 20, warmup_steps: 4 }, warmup: 4 },
  { config: { name: 'linear', lr: 2e-4, total_steps: 30, warmup_steps: 5 }, warmup: 5 },
  // ⌈100·0.07⌉ = 8, not 7: 100·0.07 is 7.000000000000001 in binary floating point, as in Python
  { config: { name: 'linear', lr: 2e-4, total_steps: 100, warmup_ratio: 0.07 }, warmup: 8 },
  { config: { name: 'linear', lr: 2e-4, total_steps: 10, warmup_steps: 10 }, warmup: 10 },
  { config: { name: 'cosine', lr: 3e-4, total_steps: 25, warmup_steps: 3 }, warmup: 3 },
  {
    config: { name: 'cosine', lr: 3e-4, total_steps: 25, warmup_ratio: 0.1, min_lr_ratio: 0.1 },
    warmup: 3,
  },
  {
    config: { name: 'cosine_with_restarts', lr: 1e-3, total_steps: 40, warmup_steps: 4, num_cycles: 3 },
    warmup: 4,
  },
  { config: { name: 'cosine_with_restarts', lr: 1e-3, total_steps: 12 }, warmup: 0 },
  { config: { name: 'polynomial', lr: 1e-3, total_steps: 20, warmup_steps: 2 }, warmup: 2 },
  {
    config: { name: 'polynomial', lr: 1e-3, total_steps: 20, warmup_steps: 2, power: 2, lr_end: 1e-4 },
    warmup: 2,
  },
  { config: { name: 'exponential', lr: 1e-2, total_steps: 20, warmup_steps: 3, gamma: 0.9 }, warmup: 3 },
];

describe('schedules follow the Hugging Face formulas', () => {
  it('knows every name', () => {
    assert.deepEqual(
      [...SCHEDULE_NAMES].sort(),
      ['constant', 'cosine', 'cosine_with_restarts', 'exponential', 'linear', 'polynomial'].sort(),
    );
  });

  for (const { config, warmup } of CASES) {
    it(JSON.stringify(config), () => {
      const s = createSchedule(config);
      assert.equal(s.warmupSteps, warmup);
      for (let k = 0; k <= config.total_steps + 3; k++) {
        const want = config.lr * hfLambda(config, warmup, k);
        const got = s.lrAt(k);
        assert.ok(Math.abs(got - want) <= 1e-15 * config.lr, `step ${k}: ${got} ≠ ${want}`);
      }
    });
  }

  it('has the values a reader can check by hand at the boundaries', () => {
    const lin = createSchedule({ name: 'linear', lr: 1e-3, total_steps: 100, warmup_steps: 10 });
    assert.equal(lin.lrAt(0), 0); // warmup starts from 0, as HF
    assert.equal(lin.lrAt(5), 5e-4);
    assert.equal(lin.lrAt(10), 1e-3); // the peak is the first step after warmup
    assert.equal(lin.lrAt(55), 5e-4);
    assert.equal(lin.lrAt(100), 0);
    const cos = createSchedule({ name: 'cosine', lr: 1, total_steps: 10, min_lr_ratio: 0.2 });
    assert.equal(cos.lrAt(0), 1);
    assert.ok(Math.abs(cos.lrAt(5) - 0.6) < 1e-15); // halfway: the mean of peak and floor
    assert.ok(Math.abs(cos.lrAt(10) - 0.2) < 1e-15); // the floor
    const poly = createSchedule({ name: 'polynomial', lr: 1, total_steps: 10, lr_end: 0.1, power: 2 });
    assert.ok(Math.abs(poly.lrAt(5) - (0.9 * 0.25 + 0.1)) < 1e-15);
    assert.equal(poly.lrAt(10), 0.1);
    assert.equal(poly.lrAt(50), 0.1);
    const exp = createSchedule({ name: 'exponential', lr: 1, total_steps: 10, warmup_steps: 2, gamma: 0.5 });
    assert.deepEqual(
      [0, 1, 2, 3, 4].map((k) => exp.lrAt(k)),
      [0, 0.5, 1, 0.5, 0.25],
    );
    const restart = createSchedule({ name: 'cosine_with_restarts', lr: 1, total_steps: 8, num_cycles: 2 });
    assert.equal(restart.lrAt(0), 1);
    assert.equal(restart.lrAt(4), 1); // the hard restart
    assert.equal(restart.lrAt(8), 0);
  });

  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown name', { name: 'step', lr: 1, total_steps: 5 }, /schedule\.name = "step".*constant, linear/],
    [
      'both warmup fields',
      { name: 'linear', lr: 1, total_steps: 5, warmup_steps: 1, warmup_ratio: 0.1 },
      /warmup_steps = 1 and schedule\.warmup_ratio = 0\.1/,
    ],
    [
      'lr_end ≥ lr',
      { name: 'polynomial', lr: 1e-4, total_steps: 5, lr_end: 1e-4 },
      /schedule\.lr_end = 0\.0001 .*below lr/,
    ],
    ['zero lr', { name: 'linear', lr: 0, total_steps: 5 }, /schedule\.lr = 0 .*> 0/],
    [
      'fractional total_steps',
      { name: 'linear', lr: 1, total_steps: 2.5 },
      /schedule\.total_steps = 2\.5 .*integer/,
    ],
    ['no total_steps', { name: 'linear', lr: 1 }, /schedule\.total_steps = undefined/],
    [
      'negative warmup_steps',
      { name: 'linear', lr: 1, total_steps: 5, warmup_steps: -1 },
      /schedule\.warmup_steps = -1/,
    ],
    [
      'warmup beyond the run',
      { name: 'linear', lr: 1, total_steps: 5, warmup_steps: 6 },
      /schedule\.warmup_steps = 6 .*≤ 5/,
    ],
    [
      'warmup_ratio above 1',
      { name: 'cosine', lr: 1, total_steps: 5, warmup_ratio: 1.5 },
      /schedule\.warmup_ratio = 1\.5/,
    ],
    [
      'infinite min_lr_ratio',
      { name: 'cosine', lr: 1, total_steps: 5, min_lr_ratio: Infinity },
      /schedule\.min_lr_ratio = Infinity/,
    ],
    [
      'zero num_cycles',
      { name: 'cosine_with_restarts', lr: 1, total_steps: 5, num_cycles: 0 },
      /schedule\.num_cycles = 0/,
    ],
    ['a negative power', { name: 'polynomial', lr: 1, total_steps: 5, power: -1 }, /schedule\.power = -1/],
    ['no gamma', { name: 'exponential', lr: 1, total_steps: 5 }, /schedule\.gamma = undefined/],
    [
      'gamma above 1',
      { name: 'exponential', lr: 1, total_steps: 5, gamma: 1.1 },
      /schedule\.gamma = 1\.1 .*≤ 1/,
    ],
    [
      'an option of another schedule',
      { name: 'linear', lr: 1, total_steps: 5, gamma: 0.9 },
      /schedule\.gamma = 0\.9 .*linear schedule takes only/,
    ],
  ];
  for (const [what, config, message] of bad) {
    it(`rejects ${what} with a ConfigError naming the field`, () => {
      assert.throws(
        () => createSchedule(config as unknown as ScheduleConfig),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
      );
    });
  }

  it('rejects a step that is not a non-negative integer', () => {
    const s = createSchedule({ name: 'constant', lr: 1, total_steps: 5 });
    assert.throws(() => s.lrAt(-1), /step -1/);
    assert.throws(() => s.lrAt(1.5), /step 1\.5/);
  });
});

describe('a training loop takes its learning rate from a schedule', () => {
  for (const device of testDevices().devices) {
    it(`linear regression with SGD and a cosine schedule on ${device.name}`, () => {
      const backend = device.backend;
      const rand = rng(3);
      const n = 8;
      const x = normals(n * 3, rand);
      const y = normals(n, rand);
      const w0 = normals(3, rand);
      const store = TensorStore.create(backend, [
        { name: 'w', shape: [1, 3], dtype: 'f32', requiresGrad: true },
      ]);
      const w = store.get('w');
      store.write(w, Float32Array.from(w0));
      const schedule = createSchedule({ name: 'cosine', lr: 0.2, total_steps: 8, warmup_steps: 2 });
      const opt = createOptimizer(backend, [w], { name: 'sgd', lr: 0.2, weight_decay: 0.1 });
      const g = new Graph(backend);
      try {
        const loss = g.build(() =>
          mean(
            sqr(
              sub(
                linear(g.constant(Float32Array.from(x), [n, 3]), w),
                g.constant(Float32Array.from(y), [n, 1]),
              ),
            ),
          ),
        );
        opt.build(g, g.backward(loss, [w]));
        g.compile();
        const ref = Float64Array.from(w0);
        for (let k = 0; k < schedule.totalSteps; k++) {
          opt.lr = schedule.lrAt(opt.step);
          g.run();
          const lr = schedule.lrAt(k);
          assert.equal(opt.lastLr, lr, `step ${k}`);
          assert.equal(opt.step, k + 1);
          // w ← w − lr·(∇ mean((xw − y)²) + wd·w); w is a matrix, so it decays
          const grad = new Float64Array(3);
          for (let r = 0; r < n; r++) {
            const e = x[r * 3]! * ref[0]! + x[r * 3 + 1]! * ref[1]! + x[r * 3 + 2]! * ref[2]! - y[r]!;
            for (let j = 0; j < 3; j++) grad[j]! += (2 / n) * e * x[r * 3 + j]!;
          }
          for (let j = 0; j < 3; j++) ref[j] = ref[j]! - lr * (grad[j]! + 0.1 * ref[j]!);
          const err = relErr(store.read(w), ref);
          assert.ok(err < 1e-5, `step ${k}: relative error ${err.toExponential(2)}`);
        }
        assert.equal(opt.lastLr, schedule.lrAt(7));
        assert.equal(schedule.lrAt(0), 0); // the first update moved nothing but was applied
      } finally {
        g.dispose();
        opt.dispose();
        store.dispose();
      }
    });
  }
});
