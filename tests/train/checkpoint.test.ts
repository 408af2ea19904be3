/**
 * Gradient checkpointing recomputes each decoder block in the backward pass: the gradients equal those
 * of the plain graph, and the compute buffer (activations kept for backward) shrinks.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { LlamaModel, llamaWeights } from '../../src/models/llama.js';
import { readConfig } from '../../src/models/load.js';
import { ROOT } from '../helpers/cli.js';
import { Graph, crossEntropy } from '../../src/tensor/index.js';
import { rng } from '../helpers/ref.js';

describe('gradient checkpointing', () => {
  it('gives the same gradients with a smaller compute buffer', () => {
    // the parity fixture's Llama (vocab 256, so activations rather than logits dominate), 8 blocks deep
    const config = {
      ...readConfig(path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa')),
      num_hidden_layers: 8,
    };
    const backend = cpuBackend();
    const model = LlamaModel.allocate(
      backend,
      config,
      () => 'f32',
      () => true,
    );
    try {
      const rand = rng(5);
      for (const w of llamaWeights(config)) {
        const n = w.shape.reduce((a, b) => a * b, 1);
        model.write(
          w.name,
          w.role === 'norm'
            ? new Float32Array(n).fill(1)
            : Float32Array.from({ length: n }, () => 0.1 * (2 * rand() - 1)),
        );
      }
      const B = 2;
      const T = 128;
      const ids = Int32Array.from({ length: B * T }, () => Math.floor(rand() * config.vocab_size));
      const labels = Int32Array.from(ids, (_, i) => ids[(i + 1) % ids.length]!);
      const run = (ckpt: boolean) => {
        const g = new Graph(backend);
        try {
          const x = g.input([B, T], 'i32');
          const y = g.input([B, T], 'i32');
          const loss = crossEntropy(model.forward(g, x, { checkpoint: ckpt }), y);
          const grads = g.backward(loss);
          const outs = [...grads].map(([t, gr]) => [t.name, g.output(gr)] as const);
          const lossOut = g.output(loss);
          g.compile();
          g.set(x, ids);
          g.set(y, labels);
          g.run();
          return {
            loss: g.read(lossOut)[0]!,
            grads: new Map(outs.map(([n, t]) => [n, g.read(t)])),
            compute: g.memory().compute,
          };
        } finally {
          g.dispose();
        }
      };
      const plain = run(false);
      const ck = run(true);
      assert.equal(ck.loss, plain.loss);
      assert.equal(ck.grads.size, plain.grads.size);
      assert.equal(ck.grads.size, model.tensors().length);
      for (const [name, a] of plain.grads) {
        const b = ck.grads.get(name)!;
        let maxErr = 0;
        let maxAbs = 0;
        for (let i = 0; i < a.length; i++) {
          maxErr = Math.max(maxErr, Math.abs(a[i]! - b[i]!));
          maxAbs = Math.max(maxAbs, Math.abs(a[i]!));
        }
        assert.ok(
          maxErr <= 1e-6 * Math.max(maxAbs, 1e-3),
          `${name}: max error ${maxErr} (max |g| ${maxAbs})`,
        );
      }
      console.log(
        `compute buffer: plain ${(plain.compute / 2 ** 20).toFixed(1)} MiB, checkpointed ${(ck.compute / 2 ** 20).toFixed(1)} MiB`,
      );
      assert.ok(ck.compute < 0.8 * plain.compute, `checkpointed ${ck.compute} vs plain ${plain.compute}`);
    } finally {
      model.dispose();
    }
  });
});
