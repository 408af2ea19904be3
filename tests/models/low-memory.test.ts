/**
 * The low_memory strategy streams the checkpoint tensor by tensor, quantizing each as it arrives, so
 * the peak resident memory stays near the final (quantized) model plus one tensor; `full` reads the
 * whole checkpoint first. Each strategy loads a ~150 MB f32 checkpoint into q4_0 in a fresh process,
 * which reports its peak RSS: VmHWM, the high-water mark of its own address space. (getrusage's
 * maxrss survives execve, so a child's started at the RSS of the test process that forked it —
 * ~75 MB above the load's own peak here, which once failed this test.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { configToJson, parseLlamaConfig } from '../../src/models/config.js';
import { llamaWeights } from '../../src/models/llama.js';
import { ROOT } from '../helpers/cli.js';

const MB = 1024 * 1024;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-lowmem-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const config = parseLlamaConfig({
  model_type: 'llama',
  vocab_size: 512,
  hidden_size: 1024,
  intermediate_size: 2816,
  num_hidden_layers: 3,
  num_attention_heads: 8,
  num_key_value_heads: 8,
});

function measure(strategy: 'full' | 'low_memory'): { growthMb: number; modelMb: number } {
  const script = `
    import { cpuBackend } from './dist/src/engine/device.js';
    import { loadWeights, readConfig } from './dist/src/models/load.js';
    import { peakRss } from './dist/src/train/memory.js';
    const backend = cpuBackend();
    const before = process.memoryUsage().rss;
    const { model } = loadWeights(${JSON.stringify(tmp)}, readConfig(${JSON.stringify(tmp)}), backend, { strategy: '${strategy}', quantize: 'q4_0' });
    console.log(JSON.stringify({ before, peak: peakRss(), model: model.bytes }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { before: number; peak: number; model: number };
  return { growthMb: (j.peak - j.before) / MB, modelMb: j.model / MB };
}

describe('loading strategies', () => {
  it('low_memory peaks near the quantized model plus one tensor; full holds the whole checkpoint', () => {
    writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(configToJson(config)));
    const specs = llamaWeights(config);
    writeSafetensors(
      path.join(tmp, 'model.safetensors'),
      specs.map((w) => {
        const n = w.shape.reduce((a, b) => a * b, 1);
        return {
          name: w.name,
          shape: w.shape,
          data: Float32Array.from({ length: n }, (_, i) => Math.sin(i) * 0.02),
          dtype: 'F32' as const,
        };
      }),
    );
    const fileMb = statSync(path.join(tmp, 'model.safetensors')).size / MB;
    const largestMb = Math.max(...specs.map((w) => w.shape.reduce((a, b) => a * b, 1) * 4)) / MB;
    const low = measure('low_memory');
    const full = measure('full');
    const detail = `checkpoint ${fileMb.toFixed(0)} MB, q4_0 model ${low.modelMb.toFixed(0)} MB, largest tensor ${largestMb.toFixed(1)} MB; peak RSS growth: low_memory ${low.growthMb.toFixed(0)} MB, full ${full.growthMb.toFixed(0)} MB`;
    // the model, the raw bytes and the f32 values of one tensor, and allocator slack
    assert.ok(low.growthMb <= low.modelMb + 3 * largestMb + 24, `low_memory peak too high: ${detail}`);
    assert.ok(full.growthMb >= fileMb, `full should hold the checkpoint: ${detail}`);
    assert.ok(low.growthMb < full.growthMb / 2, detail);
    console.log(`# ${detail}`);
  });
});
