/**
 * AdamW against the closed form (PyTorch's torch.optim.AdamW update), computed in float64: several
 * steps with a changing learning rate and weight decay. On the CPU (and wherever the device has the
 * kernel) the update is ggml's fused `opt_step_adamw`; elsewhere, graph ops.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { AdamW } from '../../src/optim/adamw.js';
import { Graph, TensorStore, mul, reshape, sqr, sum, transpose } from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';
import { normals, relErr, rng } from '../helpers/ref.js';

describe('AdamW graph ops match the closed form', () => {
  for (const device of testDevices().devices) {
    for (const viaTranspose of [false, true]) {
      it(`on ${device.name}${viaTranspose ? ', gradient arriving as a transposed view' : ''}`, () => {
        const backend = device.backend ?? cpuBackend();
        const rand = rng(9);
        const n = 37;
        const p0 = normals(n, rand);
        const c = normals(n, rand);
        const store = TensorStore.create(backend, [
          { name: 'p', shape: [n], dtype: 'f32', requiresGrad: true },
        ]);
        const p = store.get('p');
        store.write(p, Float32Array.from(p0));
        // decays: a vector would be spared by the default rule; this test checks the decay arithmetic
        const o = { lr: 0.05, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0.1, decays: () => true };
        const opt = new AdamW(backend, [p], o);
        const g = new Graph(backend);
        try {
          // loss = Σ (c·p)², gradient 2c²p; through a transpose the gradient is a non-contiguous view
          const loss = g.build(() =>
            viaTranspose
              ? sum(sqr(mul(transpose(reshape(p, [1, n])), g.constant(Float32Array.from(c), [n, 1]))))
              : sum(sqr(mul(p, g.constant(Float32Array.from(c), [n])))),
          );
          opt.build(g, g.backward(loss, [p]));
          g.output(loss);
          g.compile();
          if (backend.isCpu)
            assert.ok(
              g.nodes().some((x) => x.op === 'OPT_STEP_ADAMW'),
              'the CPU runs the fused update',
            );
          const ref = Float64Array.from(p0);
          const m = new Float64Array(n);
          const v = new Float64Array(n);
          const lrs = [0.05, 0.05, 0.02, 0.01, 0.03];
          lrs.forEach((lr, k) => {
            opt.lr = lr;
            g.run();
            const t = k + 1;
            for (let i = 0; i < n; i++) {
              const grad = 2 * c[i]! * c[i]! * ref[i]!;
              ref[i]! *= 1 - lr * o.weightDecay;
              m[i] = o.beta1 * m[i]! + (1 - o.beta1) * grad;
              v[i] = o.beta2 * v[i]! + (1 - o.beta2) * grad * grad;
              const mh = m[i]! / (1 - o.beta1 ** t);
              const vh = v[i]! / (1 - o.beta2 ** t);
              ref[i]! -= (lr * mh) / (Math.sqrt(vh) + o.eps);
            }
            const err = relErr(store.read(p), ref);
            assert.ok(err < 1e-5, `step ${t}: relative error ${err.toExponential(2)}`);
          });
          assert.equal(opt.step, lrs.length);
        } finally {
          g.dispose();
          opt.dispose();
          store.dispose();
        }
      });
    }
  }
});
