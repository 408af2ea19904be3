/**
 * Every optimizer's update, run as graph ops on every device, against a float64 reference written
 * from the published algorithm (tests/optim/reference.ts): six steps with a changing learning rate,
 * weight decay on matrices but not on norm weights, and several hyperparameter sets. Also: the
 * weight-decay rule, the sign op Lion uses, config validation, and exact resume from saved state.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { cpuBackend, type Backend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { Adadelta } from '../../src/optim/adadelta.js';
import { Adam, AdamW } from '../../src/optim/adamw.js';
import { Lion } from '../../src/optim/lion.js';
import {
  OPTIMIZER_NAMES,
  createOptimizer,
  defaultDecays,
  type Optimizer,
  type OptimizerConfig,
} from '../../src/optim/optimizer.js';
import { SGD } from '../../src/optim/sgd.js';
import { sign } from '../../src/tensor/ops/elementwise.js';
import { Graph, TensorStore, add, mul, sqr, sum, type Tensor } from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';
import { normals, relErr, rng } from '../helpers/ref.js';
import { refParam, refStep, type RefParam } from './reference.js';

/** Parameters named as in a Hugging Face Llama checkpoint, with and without weight decay. */
const PARAMS = [
  { name: 'model.layers.0.mlp.up_proj.weight', shape: [3, 5], decays: true },
  { name: 'model.layers.0.self_attn.q_proj.lora_A', shape: [2, 5], decays: true },
  { name: 'model.layers.0.input_layernorm.weight', shape: [5], decays: false },
  // a matrix whose name says norm: kept from decay by the name rule, not the rank rule
  { name: 'model.layers.0.post_attention_layernorm.weight', shape: [1, 4], decays: false },
  { name: 'model.layers.0.mlp.down_proj.bias', shape: [3], decays: false },
];

const numelOf = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * A problem with a known gradient: loss = Σ c⊙p² + d⊙p over every parameter, so ∂loss/∂p = 2c⊙p + d
 * (sign changes included, which matters for Lion).
 */
function setup(backend: Backend, seed: number, initSeed = seed) {
  const rand = rng(seed);
  const store = TensorStore.create(
    backend,
    PARAMS.map((p) => ({ name: p.name, shape: p.shape, dtype: 'f32' as const, requiresGrad: true })),
  );
  const c = PARAMS.map((p) => Float64Array.from(normals(numelOf(p.shape), rand), (x) => 0.5 + Math.abs(x)));
  const d = PARAMS.map((p) => normals(numelOf(p.shape), rand));
  const randInit = rng(initSeed);
  const init = PARAMS.map((p) => normals(numelOf(p.shape), randInit));
  PARAMS.forEach((p, i) => store.write(store.get(p.name), Float32Array.from(init[i]!)));
  const params = PARAMS.map((p) => store.get(p.name));
  return { store, params, init, c, d };
}

type Setup = ReturnType<typeof setup>;

function buildGraph(backend: Backend, s: Setup, opt: Optimizer): Graph {
  const g = new Graph(backend);
  const loss = g.build(() => {
    let total: Tensor | null = null;
    s.params.forEach((p, i) => {
      const ci = g.constant(Float32Array.from(s.c[i]!), p.shape, `c${i}`);
      const di = g.constant(Float32Array.from(s.d[i]!), p.shape, `d${i}`);
      const term = sum(add(mul(ci, sqr(p)), mul(di, p)));
      total = total === null ? term : add(total, term);
    });
    return total!;
  });
  opt.build(g, g.backward(loss, s.params));
  g.output(loss);
  g.compile();
  return g;
}

function refGrad(s: Setup, i: number, r: RefParam): Float64Array {
  return r.p.map((x, k) => 2 * s.c[i]![k]! * x + s.d[i]![k]!);
}

const CASES: OptimizerConfig[] = [
  { name: 'adamw', lr: 0.05, betas: [0.8, 0.95], eps: 1e-6, weight_decay: 0.1 },
  { name: 'adamw', lr: 0.01 },
  { name: 'adam', lr: 0.05, betas: [0.85, 0.99], weight_decay: 0.1 },
  { name: 'adam', lr: 0.02, eps: 1e-3 },
  { name: 'sgd', lr: 0.1, weight_decay: 0.05 },
  { name: 'sgd', lr: 0.05, momentum: 0.9, dampening: 0.1, weight_decay: 0.05 },
  { name: 'sgd', lr: 0.05, momentum: 0.8, nesterov: true, weight_decay: 0.2 },
  { name: 'adadelta', lr: 1, rho: 0.9, weight_decay: 0.1 },
  { name: 'adadelta', lr: 0.5, rho: 0.95, eps: 1e-4 },
  { name: 'lion', lr: 0.01, weight_decay: 0.5 },
  { name: 'lion', lr: 0.02, betas: [0.95, 0.98] },
];

/** Multiples of the configured lr, one per step (a schedule changes it between runs). */
const LR_FACTORS = [1, 1, 0.5, 0.25, 0.75, 0.6];

const measured: string[] = [];
after(() => {
  if (measured.length > 0) console.log(`largest relative error per case:\n  ${measured.join('\n  ')}`);
});

describe('optimizers match their float64 reference', () => {
  for (const device of testDevices().devices) {
    for (const config of CASES) {
      const shown = config; // no case sets decays (a function), so the config prints whole
      it(`${JSON.stringify(shown)} on ${device.name}`, () => {
        const backend = device.backend;
        const s = setup(backend, 17);
        const opt = createOptimizer(backend, s.params, config);
        const g = buildGraph(backend, s, opt);
        try {
          const refs = s.init.map((x) => refParam(x));
          const lr0 = config.lr!;
          let worst = 0;
          LR_FACTORS.forEach((f, k) => {
            opt.lr = lr0 * f;
            g.run();
            refs.forEach((r, i) => {
              refStep(config.name, config, r, refGrad(s, i, r), k + 1, lr0 * f, PARAMS[i]!.decays);
              const err = relErr(s.store.read(s.params[i]!), r.p);
              worst = Math.max(worst, err);
              assert.ok(
                err < 1e-5,
                `step ${k + 1}, ${PARAMS[i]!.name}: relative error ${err.toExponential(2)}`,
              );
            });
          });
          assert.equal(opt.step, LR_FACTORS.length);
          assert.equal(opt.lastLr, lr0 * LR_FACTORS[LR_FACTORS.length - 1]!);
          measured.push(`${device.name} ${JSON.stringify(shown)}: ${worst.toExponential(2)}`);
        } finally {
          g.dispose();
          opt.dispose();
          s.store.dispose();
        }
      });
    }

    it(`a decays option overrides the rule (every parameter decays) on ${device.name}`, () => {
      const backend = device.backend;
      const s = setup(backend, 23);
      const config: OptimizerConfig = { name: 'adamw', lr: 0.05, weight_decay: 0.3, decays: () => true };
      const opt = createOptimizer(backend, s.params, config);
      const g = buildGraph(backend, s, opt);
      try {
        const refs = s.init.map((x) => refParam(x));
        for (let t = 1; t <= 5; t++) {
          g.run();
          refs.forEach((r, i) => refStep('adamw', config, r, refGrad(s, i, r), t, 0.05, true));
        }
        refs.forEach((r, i) => {
          const err = relErr(s.store.read(s.params[i]!), r.p);
          assert.ok(err < 1e-5, `${PARAMS[i]!.name}: relative error ${err.toExponential(2)}`);
        });
      } finally {
        g.dispose();
        opt.dispose();
        s.store.dispose();
      }
    });

    it(`sign matches Math.sign on ${device.name}`, () => {
      const x = [-2, -0, 0, 1e-30, 3, -1e-30, 0.5, -7];
      const g = new Graph(device.backend);
      try {
        const input = g.input([x.length]);
        const out = g.output(g.build(() => sign(input)));
        g.compile();
        g.set(input, Float32Array.from(x));
        g.run();
        assert.deepEqual(
          Array.from(g.read(out), (v) => v + 0), // -0 and 0 compare equal
          x.map((v) => Math.sign(v) + 0),
        );
      } finally {
        g.dispose();
      }
    });
  }
});

describe('weight decay rule', () => {
  it('decays matrices, not norms or biases; LoRA matrices decay', () => {
    const store = TensorStore.create(cpuBackend(), [
      ...PARAMS.map((p) => ({ name: p.name, shape: p.shape, dtype: 'f32' as const })),
      { name: 'model.layers.0.self_attn.q_proj.lora_B', shape: [5, 2], dtype: 'f32' },
      { name: 'model.norm.weight', shape: [5], dtype: 'f32' },
      { name: 'lm_head.weight', shape: [7, 5], dtype: 'f32' },
      { name: 'scalar_gain', shape: [1], dtype: 'f32' },
    ]);
    try {
      const got = Object.fromEntries(store.tensors.map((t) => [t.name, defaultDecays(t)]));
      assert.deepEqual(got, {
        ...Object.fromEntries(PARAMS.map((p) => [p.name, p.decays])),
        'model.layers.0.self_attn.q_proj.lora_B': true,
        'model.norm.weight': false,
        'lm_head.weight': true,
        scalar_gain: false,
      });
    } finally {
      store.dispose();
    }
  });
});

describe('createOptimizer', () => {
  const store = TensorStore.create(cpuBackend(), [
    { name: 'w', shape: [2, 3], dtype: 'f32', requiresGrad: true },
  ]);
  const params = [store.get('w')];
  after(() => store.dispose());

  it('builds each optimizer with PyTorch defaults', () => {
    const expect: Record<string, [unknown, Record<string, number | boolean>]> = {
      adamw: [AdamW, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }],
      adam: [Adam, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0 }],
      sgd: [SGD, { lr: 1e-3, momentum: 0, dampening: 0, nesterov: false, weight_decay: 0 }],
      adadelta: [Adadelta, { lr: 1, rho: 0.9, eps: 1e-6, weight_decay: 0 }],
      lion: [Lion, { lr: 1e-4, beta1: 0.9, beta2: 0.99, weight_decay: 0 }],
    };
    assert.deepEqual([...OPTIMIZER_NAMES].sort(), Object.keys(expect).sort());
    for (const name of OPTIMIZER_NAMES) {
      const opt = createOptimizer(cpuBackend(), params, { name });
      try {
        assert.ok(opt instanceof (expect[name]![0] as new (...a: never[]) => object), name);
        assert.deepEqual(opt.state(), { name, step: 0, ...expect[name]![1] });
        assert.ok(Number.isNaN(opt.lastLr));
      } finally {
        opt.dispose();
      }
    }
  });

  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['unknown name', { name: 'rmsprop' }, /optimizer\.name = "rmsprop".*adamw, adam, sgd, adadelta, lion/],
    ['negative lr', { name: 'adamw', lr: -1 }, /optimizer\.lr = -1 .*≥ 0/],
    ['NaN weight decay', { name: 'sgd', weight_decay: Number.NaN }, /optimizer\.weight_decay = NaN/],
    ['beta of 1 for Adam', { name: 'adam', betas: [0.9, 1] }, /optimizer\.betas\[1\] = 1 .*< 1/],
    ['betas not a pair', { name: 'lion', betas: [0.9] }, /optimizer\.betas = \[0\.9\]/],
    [
      'option of another optimizer',
      { name: 'adamw', momentum: 0.9 },
      /optimizer\.momentum = 0\.9 .*adamw takes only/,
    ],
    [
      'nesterov without momentum',
      { name: 'sgd', nesterov: true },
      /optimizer\.nesterov = true .*momentum = 0/,
    ],
    [
      'nesterov with dampening',
      { name: 'sgd', nesterov: true, momentum: 0.9, dampening: 0.1 },
      /optimizer\.nesterov = true .*dampening = 0\.1/,
    ],
    ['rho above 1', { name: 'adadelta', rho: 1.5 }, /optimizer\.rho = 1\.5 .*≤ 1/],
    ['non-boolean nesterov', { name: 'sgd', momentum: 0.9, nesterov: 'yes' }, /optimizer\.nesterov = "yes"/],
  ];
  for (const [what, config, message] of bad) {
    it(`rejects ${what} with a ConfigError naming the field`, () => {
      assert.throws(
        () => createOptimizer(cpuBackend(), params, config as unknown as OptimizerConfig),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
      );
    });
  }

  it('rejects a negative lr set between steps', () => {
    const g = new Graph(cpuBackend());
    const opt = createOptimizer(cpuBackend(), params, { name: 'sgd', lr: 0.1 });
    try {
      const loss = g.build(() => sum(sqr(params[0]!)));
      opt.build(g, g.backward(loss, params));
      g.compile();
      opt.lr = -0.1;
      assert.throws(() => g.run(), ConfigError);
      assert.equal(opt.step, 0);
    } finally {
      g.dispose();
      opt.dispose();
    }
  });
});

describe('optimizer state round trip', () => {
  const configs: OptimizerConfig[] = [
    { name: 'adamw', lr: 0.05, weight_decay: 0.1 },
    { name: 'adam', lr: 0.05, weight_decay: 0.1 },
    { name: 'sgd', lr: 0.05, momentum: 0.8, nesterov: true, weight_decay: 0.1 },
    { name: 'adadelta', weight_decay: 0.1 },
    { name: 'lion', lr: 0.01, weight_decay: 0.3 },
  ];
  for (const device of testDevices().devices) {
    for (const config of configs) {
      it(`${config.name}: 3 steps, save, load into a fresh optimizer, 2 steps = 5 steps, bitwise, on ${device.name}`, () => {
        const backend = device.backend;
        const lrAt = (k: number) => (config.lr ?? 1) * (1 - k / 10);
        const run = (s: Setup, opt: Optimizer, steps: number) => {
          const g = buildGraph(backend, s, opt);
          try {
            for (let k = 0; k < steps; k++) {
              opt.lr = lrAt(opt.step);
              g.run();
            }
          } finally {
            g.dispose();
          }
        };
        const whole = setup(backend, 5);
        const first = setup(backend, 5);
        const second = setup(backend, 5, 99); // other initial values: all must come from the saved state
        const optWhole = createOptimizer(backend, whole.params, config);
        const optFirst = createOptimizer(backend, first.params, config);
        const optSecond = createOptimizer(backend, second.params, config);
        try {
          run(whole, optWhole, 5);
          run(first, optFirst, 3);
          const saved = { ...optFirst.state(), tensors: optFirst.stateTensors() };
          assert.equal(saved.step, 3);
          const slots = { adamw: 2, adam: 2, sgd: 1, adadelta: 2, lion: 1 }[config.name];
          assert.equal(saved.tensors.length, PARAMS.length * slots);
          first.params.forEach((p, i) => second.store.write(second.params[i]!, first.store.read(p)));
          optSecond.loadState(saved.step, saved.tensors);
          assert.equal(optSecond.step, 3);
          run(second, optSecond, 2);
          assert.equal(optSecond.step, 5);
          whole.params.forEach((p, i) => {
            assert.deepEqual(second.store.read(second.params[i]!), whole.store.read(p), PARAMS[i]!.name);
          });
          const a = optSecond.stateTensors();
          const b = optWhole.stateTensors();
          assert.deepEqual(
            a.map((t) => t.name),
            b.map((t) => t.name),
          );
          a.forEach((t, i) => assert.deepEqual(t.data, b[i]!.data, t.name));
        } finally {
          for (const o of [optWhole, optFirst, optSecond]) o.dispose();
          for (const s of [whole, first, second]) s.store.dispose();
        }
      });
    }
  }

  it('rejects state of another shape or with missing tensors', () => {
    const store = TensorStore.create(cpuBackend(), [
      { name: 'w', shape: [2, 3], dtype: 'f32', requiresGrad: true },
    ]);
    const opt = createOptimizer(cpuBackend(), [store.get('w')], { name: 'adamw' });
    try {
      const tensors = opt.stateTensors();
      assert.deepEqual(
        tensors.map((t) => t.name),
        ['state.0.exp_avg', 'state.0.exp_avg_sq'],
      );
      assert.throws(() => opt.loadState(1, tensors.slice(1)), /"state\.0\.exp_avg" is missing/);
      assert.throws(
        () => opt.loadState(1, [tensors[0]!, { ...tensors[1]!, shape: [3, 2] }]),
        /has shape \[3, 2\]/,
      );
      assert.throws(
        () =>
          opt.loadState(1, [...tensors, { name: 'state.1.exp_avg', shape: [1], data: new Float32Array(1) }]),
        /unexpected state tensor "state\.1\.exp_avg"/,
      );
      assert.throws(() => opt.loadState(-1, tensors), /step -1/);
    } finally {
      opt.dispose();
      store.dispose();
    }
  });
});
