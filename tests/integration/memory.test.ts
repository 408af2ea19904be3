/**
 * Memory across train types (issue 7, item 3): the same model (a tiny Llama in a real Hugging Face
 * folder, 12 blocks of hidden 256 and intermediate 2048, tied embeddings, 29M parameters) trained two
 * steps as qlora (nf4 base), lora (f32 base) and full, each in a process of its own
 * (memory-run.ts). The Trainer's memory report of each run must order as qlora < lora < full, both
 * the peak resident memory and the engine's buffers after the optimizer step; a table is printed.
 * Expected from the parts: the decoder weights are 85 MB in f32 and 12 MB in nf4, the embeddings 33 MB
 * in each; full fine-tuning adds f32 gradients and AdamW's two moments for all 118 MB of weights.
 * (Measured on 2 cores: peak RSS 443, 506 and 1220 MiB.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import type { MemoryReport } from '../../src/train/memory.js';

const RUN = path.join(path.dirname(fileURLToPath(import.meta.url)), 'memory-run.js');
const MIB = 2 ** 20;
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-memory-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function run(dir: string, trainType: string): MemoryReport {
  // one CPU thread: the runs are sequential, and ggml's threads spin when other tests hold the cores
  const r = spawnSync(process.execPath, [RUN, dir, trainType], {
    encoding: 'utf8',
    env: { ...process.env, QTUNE_THREADS: '1' },
    timeout: 300_000,
  });
  assert.equal(r.status, 0, `${trainType} run failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as MemoryReport;
}

describe('memory across train types', () => {
  it('orders qlora < lora < full, in peak RSS and in engine buffers, for the same model', () => {
    const dir = path.join(tmp, 'model');
    createTinyModel(dir, {
      hiddenSize: 256,
      intermediateSize: 2048,
      layers: 12,
      heads: 4,
      kvHeads: 2,
      tieWordEmbeddings: true,
      seed: 3,
    });
    const types = ['qlora', 'lora', 'full'] as const;
    const reports = types.map((t) => run(dir, t));
    const mib = (n: number) => (n / MIB).toFixed(1);
    const rows = reports.map((m, i) => [
      types[i]!,
      mib(m.peakRssBytes),
      mib(m.optimizer.engineBytes),
      mib(m.parts.weights),
      mib(m.parts.trainable),
      mib(m.parts.gradients),
      mib(m.parts.optimizerState),
      mib(m.parts.activations),
    ]);
    const head = [
      'train type',
      'peak RSS',
      'engine',
      'weights',
      'trainable',
      'gradients',
      'optimizer',
      'activations',
    ];
    const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
    const line = (cells: readonly string[]) => cells.map((x, c) => x.padStart(widths[c]!)).join('  ');
    console.log(
      [
        'memory per train type (MiB), 2 steps of batch 2 × 64 tokens, one process each:',
        line(head),
        ...rows.map(line),
      ].join('\n'),
    );

    const [qlora, lora, full] = reports as [MemoryReport, MemoryReport, MemoryReport];
    assert.ok(qlora.parts.weights < lora.parts.weights, 'the nf4 base is not smaller than the f32 one');
    for (const [what, of] of [
      ['peak RSS', (m: MemoryReport) => m.peakRssBytes],
      ['engine buffers', (m: MemoryReport) => m.optimizer.engineBytes],
    ] as const) {
      assert.ok(of(qlora) < of(lora), `${what}: qlora ${mib(of(qlora))} MiB ≥ lora ${mib(of(lora))} MiB`);
      assert.ok(of(lora) < of(full), `${what}: lora ${mib(of(lora))} MiB ≥ full ${mib(of(full))} MiB`);
    }
  });
});
