/**
 * Parity with PyTorch. scripts/torch_reference.py (Debian's python3-torch) builds tiny models —
 * Llama with grouped-query attention, Qwen2 with q/k/v biases and tied embeddings, Llama 3.1 rope
 * scaling — and computes in float64 their logits, and the loss and gradients of a rank-8 LoRA on
 * q_proj and v_proj. qtune loads the same checkpoints and must match: logits within 1e-4 relative on
 * the CPU in f32; loss and LoRA gradients within 1e-3, through the whole logits and crossEntropy and
 * through the trainer's fused output layer and loss (linearCrossEntropy).
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import {
  Graph,
  TensorStore,
  add,
  crossEntropy,
  linear,
  linearCrossEntropy,
  scale,
} from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';
import { relErr } from '../helpers/ref.js';
import { ROOT } from '../helpers/cli.js';

const FIXTURES = path.join(ROOT, 'tests', 'fixtures', 'parity');

interface Reference {
  batch: number;
  seq: number;
  ids: number[][];
  labels: number[][];
  lora_rank: number;
  lora_alpha: number;
  lora_targets: string[];
  loss: number;
}

const { devices } = testDevices();

for (const name of readdirSync(FIXTURES).sort()) {
  const dir = path.join(FIXTURES, name);
  const ref = JSON.parse(readFileSync(path.join(dir, 'reference.json'), 'utf8')) as Reference;
  const expectedLogits = new Float32Array(new Uint8Array(readFileSync(path.join(dir, 'logits.bin'))).buffer);
  describe(`parity with PyTorch: ${name}`, () => {
    for (const device of devices) {
      // ggml-vulkan rounds matmul inputs to f16; the 1e-4 bound is for the CPU in f32
      const logitTol = device.backend.isCpu ? 1e-4 : 1e-2;
      const gradTol = device.backend.isCpu ? 1e-3 : 2e-2;

      it(`logits on ${device.name} (within ${logitTol})`, () => {
        const config = readConfig(dir);
        const { model } = loadWeights(dir, config, device.backend);
        const g = new Graph(device.backend);
        try {
          const ids = g.input([ref.batch, ref.seq], 'i32', 'ids');
          const logits = g.output(model.forward(g, ids));
          g.compile();
          g.set(ids, Int32Array.from(ref.ids.flat()));
          g.run();
          const err = relErr(g.read(logits), expectedLogits);
          if (process.env['QTUNE_PRINT_ERRORS'])
            console.log(`${name} ${device.name} logits ${err.toExponential(2)}`);
          assert.ok(err <= logitTol, `logits differ from PyTorch by ${err.toExponential(2)}`);
        } finally {
          g.dispose();
          model.dispose();
        }
      });

      it(`loss and gradients of a rank-${ref.lora_rank} LoRA on ${ref.lora_targets.join(', ')} on ${device.name} (within ${gradTol})`, () => {
        const config = readConfig(dir);
        const { model } = loadWeights(dir, config, device.backend);
        const loraFile = SafetensorsFile.open(path.join(dir, 'lora.safetensors'));
        const gradFile = SafetensorsFile.open(path.join(dir, 'lora_grads.safetensors'));
        const lora = TensorStore.create(
          device.backend,
          loraFile.names().map((n) => ({
            name: n,
            shape: loraFile.entry(n).shape,
            dtype: 'f32' as const,
            requiresGrad: true,
          })),
        );
        for (const n of loraFile.names()) lora.write(lora.get(n), loraFile.readF32(n));
        const g = new Graph(device.backend);
        try {
          const ids = g.input([ref.batch, ref.seq], 'i32', 'ids');
          const labels = g.input([ref.batch, ref.seq], 'i32', 'labels');
          const s = ref.lora_alpha / ref.lora_rank;
          const logits = model.forward(g, ids, {
            linear: (module, x, w) =>
              lora.has(`${module}.lora_A.weight`)
                ? add(
                    linear(x, w),
                    scale(
                      linear(
                        linear(x, lora.get(`${module}.lora_A.weight`)),
                        lora.get(`${module}.lora_B.weight`),
                      ),
                      s,
                    ),
                  )
                : null,
          });
          const loss = crossEntropy(logits, labels);
          const grads = g.backward(loss, lora.tensors);
          const lossOut = g.output(loss);
          const gradOut = new Map(lora.tensors.map((t) => [t.name, g.output(grads.get(t)!)]));
          g.compile();
          g.set(ids, Int32Array.from(ref.ids.flat()));
          g.set(labels, Int32Array.from(ref.labels.flat()));
          g.run();
          const loss0 = g.read(lossOut)[0]!;
          assert.ok(Math.abs(loss0 - ref.loss) / ref.loss <= gradTol, `loss ${loss0} vs PyTorch ${ref.loss}`);
          for (const [n, t] of gradOut) {
            const err = relErr(g.read(t), gradFile.readF32(n));
            assert.ok(err <= gradTol, `gradient of ${n} differs from PyTorch by ${err.toExponential(2)}`);
          }
        } finally {
          g.dispose();
          lora.dispose();
          model.dispose();
          loraFile.close();
          gradFile.close();
        }
      });

      it(`the fused output layer and loss (linearCrossEntropy, chunks of 5 tokens) give the same loss and gradients on ${device.name}`, () => {
        const config = readConfig(dir);
        const { model } = loadWeights(dir, config, device.backend);
        const loraFile = SafetensorsFile.open(path.join(dir, 'lora.safetensors'));
        const gradFile = SafetensorsFile.open(path.join(dir, 'lora_grads.safetensors'));
        const lora = TensorStore.create(
          device.backend,
          loraFile.names().map((n) => ({
            name: n,
            shape: loraFile.entry(n).shape,
            dtype: 'f32' as const,
            requiresGrad: true,
          })),
        );
        for (const n of loraFile.names()) lora.write(lora.get(n), loraFile.readF32(n));
        const g = new Graph(device.backend);
        try {
          const ids = g.input([ref.batch, ref.seq], 'i32', 'ids');
          const labels = g.input([ref.batch, ref.seq], 'i32', 'labels');
          const s = ref.lora_alpha / ref.lora_rank;
          const { hidden, head } = model.forwardHidden(g, ids, {
            linear: (module, x, w) =>
              lora.has(`${module}.lora_A.weight`)
                ? add(
                    linear(x, w),
                    scale(
                      linear(
                        linear(x, lora.get(`${module}.lora_A.weight`)),
                        lora.get(`${module}.lora_B.weight`),
                      ),
                      s,
                    ),
                  )
                : null,
          });
          // (and the logits' soft-cap, Gemma 2's final_logit_softcapping, inside the chunks)
          const loss = scale(
            linearCrossEntropy(hidden, head, labels, {
              chunkTokens: 5,
              reduction: 'sum',
              softcap: config.final_logit_softcapping,
            }),
            1 / ref.labels.flat().filter((l) => l !== -100).length,
          );
          const grads = g.backward(loss, lora.tensors);
          const lossOut = g.output(loss);
          const gradOut = new Map(lora.tensors.map((t) => [t.name, g.output(grads.get(t)!)]));
          g.compile();
          g.set(ids, Int32Array.from(ref.ids.flat()));
          g.set(labels, Int32Array.from(ref.labels.flat()));
          g.run();
          const loss0 = g.read(lossOut)[0]!;
          assert.ok(Math.abs(loss0 - ref.loss) / ref.loss <= gradTol, `loss ${loss0} vs PyTorch ${ref.loss}`);
          for (const [n, t] of gradOut) {
            const err = relErr(g.read(t), gradFile.readF32(n));
            assert.ok(err <= gradTol, `gradient of ${n} differs from PyTorch by ${err.toExponential(2)}`);
          }
        } finally {
          g.dispose();
          lora.dispose();
          model.dispose();
          loraFile.close();
          gradFile.close();
        }
      });
    }
  });
}
