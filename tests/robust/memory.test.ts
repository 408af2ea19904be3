/**
 * An impossible memory request fails with an OutOfMemoryError that names the batch shape and gives
 * the ways out (smaller batch with more accumulation, shorter context, a quantized base, gradient
 * checkpointing), before anything large is allocated and never as a native abort:
 * - an absurd batch_size (100000) on every test device, through the library and the CLI (exit 2,
 *   one line, nothing written into the output folder), and an absurd context_length;
 * - on every device, a step whose shapes pass the quick lower bound but whose graph, measured by
 *   ggml's allocator without allocating, needs twice the memory available: a deep model (32 layers)
 *   at a context length chosen from the device's available memory (lavapipe's Vulkan refuses
 *   matrices that large first: that case is skipped with the reason).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { availableMemory, nativeMemory } from '../../src/engine/memory.js';
import { OutOfMemoryError, UnsupportedOpError } from '../../src/errors.js';
import type { Tokenizer } from '../../src/io/tokenizer.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { peakRss, stepActivationsLowerBound } from '../../src/train/memory.js';
import { Trainer, prepareModel } from '../../src/train/trainer.js';
import { qtune, tinyTrainArgs } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import { fineTuneData } from '../helpers/finetune.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-robust-memory-'));
const tiny = path.join(tmp, 'tiny');
const deep = path.join(tmp, 'deep');
after(() => rmSync(tmp, { recursive: true, force: true }));

/** The error names the batch shape and every way out that applies. */
function checkAdvice(e: unknown, batch: number, seq: number): boolean {
  assert.ok(e instanceof OutOfMemoryError, `expected an OutOfMemoryError, got ${String(e)}`);
  assert.ok(!e.message.includes('\n'), e.message);
  assert.match(e.message, new RegExp(`batch_size ${batch} × context_length ${seq}`));
  for (const way of [
    'lower batch_size',
    'gradient_accumulation_steps',
    'context_length',
    'qlora',
    'gradient_checkpointing',
  ])
    assert.ok(e.message.includes(way), `no "${way}" in: ${e.message}`);
  const { needed, free } = e.details as { needed: number; free: number };
  assert.ok(needed > free, `needed ${needed} ≤ free ${free}`);
  return true;
}

describe('an impossible memory request', () => {
  const { devices, skipped } = testDevices();
  before(() => {
    for (const s of skipped) console.log(`device skipped: ${s}`);
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
    createTinyModel(deep, { hiddenSize: 64, intermediateSize: 128, layers: 32, heads: 8, kvHeads: 4 });
  });

  for (const { name, backend } of devices) {
    it(`${name}: batch_size 10^7 fails in the Trainer with advice, and frees what it loaded`, async () => {
      const prepared = await prepareModel(tiny, { trainType: 'lora', backend });
      const data = fineTuneData(prepared.tokenizer!, 64, 4, 0);
      const before = nativeMemory().total;
      // the bound this refusal rests on, from the shapes alone (float64): the logits of a chunk (at most
      // 64 chunks: 10^7·64/64 rows of 32000 f32) and every block's input
      assert.ok(
        stepActivationsLowerBound(prepared.model.config, {
          batchSize: 1e7,
          seqLen: 64,
          gradientAccumulationSteps: 1,
          gradientCheckpointing: false,
          quantized: false,
          crossEntropyChunk: 256,
        }) >=
          4 * 1e7 * 32000 + 4 * 1e7 * 64 * 2 * 64,
      );
      assert.throws(
        () => new Trainer(prepared, { train: data.train }, { trainType: 'lora', batchSize: 1e7 }),
        (e) => checkAdvice(e, 1e7, 64),
      );
      // the trainer owned the model and freed it on the way out
      assert.ok(
        nativeMemory().total < before,
        `native memory ${nativeMemory().total} after, ${before} before`,
      );
    });

    it(`${name}: qtune train with batch_size 10^7${backend.isCpu ? ' or context_length 10^8' : ''} exits 2 with one line and writes nothing`, () => {
      const out = path.join(tmp, `out-${name}`);
      const base = [...tinyTrainArgs(tiny, out), '--backend', name, '--threads', '1'];
      const cases = [
        [
          '--batch_size',
          '10000000',
          /batch_size 10000000 × context_length 128: one training step needs at least/,
        ],
        ['--context_length', '100000000', /batch_size 4 × context_length 100000000: one training step needs/],
      ] as const;
      // the context length is checked as the batch size is, on any device: once is enough
      for (const [flag, value, pattern] of backend.isCpu ? cases : cases.slice(0, 1)) {
        const r = qtune([...base, flag, value]);
        assert.equal(r.code, 2, r.stderr);
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0]!, pattern);
        assert.match(lines[0]!, /gradient_checkpointing/);
        assert.ok(!existsSync(out), `${flag} ${value}: the failed run wrote ${out}`);
      }
    });
  }

  for (const { name, backend } of devices) {
    it(`${name}: a step that passes the lower bound but whose measured graph does not fit fails before allocating it`, async (t) => {
      const free = availableMemory(backend);
      // per layer the backward keeps the attention probabilities, 8 heads · T² f32: 32 layers of them
      // are twice the available memory, while the lower bound (one layer's) stays far below it
      const seq = Math.ceil(Math.sqrt((2 * free) / (4 * 32 * 8)));
      const prepared = await prepareModel(deep, { trainType: 'lora', backend });
      const tok: Tokenizer = prepared.tokenizer!;
      const data = fineTuneData(tok, seq, 1, 0);
      const bound = stepActivationsLowerBound(prepared.model.config, {
        batchSize: 1,
        seqLen: seq,
        gradientAccumulationSteps: 1,
        gradientCheckpointing: false,
        quantized: false,
      });
      assert.ok(bound < free / 2, `lower bound ${bound} vs available ${free}`);
      const trainer = new Trainer(prepared, { train: data.train }, { trainType: 'lora', maxSteps: 1 });
      try {
        const before = nativeMemory().total;
        let error: unknown;
        try {
          trainer.allocate();
        } catch (e) {
          error = e;
        }
        if (error instanceof UnsupportedOpError) {
          // lavapipe's Vulkan limits refuse matrices this large before their memory is measured
          t.skip(`${name} refuses the graph's ops at this size: ${error.message}`);
          return;
        }
        checkAdvice(error, 1, seq);
        assert.match((error as Error).message, /the training step's intermediate tensors need/);
        const { needed } = (error as OutOfMemoryError).details as { needed: number };
        console.log(`${name}, deep model, context_length ${seq}: ${(error as Error).message}`);
        // no graph stayed allocated, and the memory asked for was never taken
        assert.equal(nativeMemory().total, before);
        if (backend.isCpu) assert.ok(peakRss() < needed / 4, `peak RSS ${peakRss()} for a refused ${needed}`);
      } finally {
        trainer.dispose();
      }
    });
  }
});
