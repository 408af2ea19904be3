/**
 * `npm run bench:forward`: forward-pass tokens/s of a Llama model at the "small" shape of
 * ../shared/bench/baseline (dim 768, 12 layers, 12 heads, 4 kv heads, ffn 2048, vocab 32000, untied,
 * seq 256, batch 1), f32, beside PyTorch's `bench_lora.py --mode infer` of the same shape run in the
 * same session (Debian python3-torch with OpenMP OpenBLAS). qtune and PyTorch alternate `--rounds`
 * times; best against best is reported, as the baseline's README asks.
 *
 *   npm run bench:forward [-- --rounds 2] [--runs 10] [--json]
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpuBackend } from '../src/engine/device.js';
import { getEngine } from '../src/engine/library.js';
import { parseLlamaConfig } from '../src/models/config.js';
import { LlamaModel } from '../src/models/llama.js';
import { Graph } from '../src/tensor/graph.js';
import { peakRss } from '../src/train/memory.js';
import { enginesToCompare, runChild, runPython } from './common.js';

const SHAPE = { dim: 768, layers: 12, heads: 12, kvHeads: 4, ffn: 2048, vocab: 32000, seq: 256, batch: 1 };
const BASELINE = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../../shared/bench/baseline/bench_lora.py',
);

interface Measurement {
  engine: string;
  tokens_per_s: number;
  step_s: number;
  peak_rss_mb: number;
}

function child(runs: number): Measurement {
  const config = parseLlamaConfig({
    model_type: 'llama',
    vocab_size: SHAPE.vocab,
    hidden_size: SHAPE.dim,
    intermediate_size: SHAPE.ffn,
    num_hidden_layers: SHAPE.layers,
    num_attention_heads: SHAPE.heads,
    num_key_value_heads: SHAPE.kvHeads,
  });
  const model = LlamaModel.allocate(cpuBackend(), config);
  let s = 1;
  for (const t of model.tensors()) {
    const data = new Float32Array(t.numel);
    for (let i = 0; i < data.length; i++) {
      s = (s * 1664525 + 1013904223) >>> 0;
      data[i] = t.rank === 1 ? 1 : (s / 2 ** 32 - 0.5) * 0.04;
    }
    model.write(t.name, data);
  }
  const g = new Graph(cpuBackend());
  const ids = g.input([SHAPE.batch, SHAPE.seq], 'i32');
  const logits = g.output(model.forward(g, ids));
  g.compile();
  g.set(
    ids,
    Int32Array.from({ length: SHAPE.batch * SHAPE.seq }, (_, i) => (i * 7919) % SHAPE.vocab),
  );
  g.run();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    g.run();
    times.push((performance.now() - t0) / 1000);
  }
  void g.read(logits);
  const best = Math.min(...times);
  const info = getEngine().info;
  return {
    engine: `${info.kind} (${info.cpuVariant})`,
    tokens_per_s: (SHAPE.batch * SHAPE.seq) / best,
    step_s: best,
    peak_rss_mb: peakRss() / 2 ** 20,
  };
}

function torch(steps: number): { tokens_per_s: number; step_s: number } | string {
  if (!existsSync(BASELINE)) return `PyTorch anchor skipped: ${BASELINE} not found`;
  const args = [
    ...[
      '--dim',
      SHAPE.dim,
      '--layers',
      SHAPE.layers,
      '--heads',
      SHAPE.heads,
      '--kv-heads',
      SHAPE.kvHeads,
      '--ffn',
      SHAPE.ffn,
    ],
    ...[
      '--vocab',
      SHAPE.vocab,
      '--seq',
      SHAPE.seq,
      '--batch',
      SHAPE.batch,
      '--mode',
      'infer',
      '--steps',
      steps,
      '--threads',
      getEngine().info.threads,
    ],
  ].map(String);
  return runPython<{ tokens_per_s: number; step_s: number }>([BASELINE, ...args]);
}

function main(): void {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '2' },
      runs: { type: 'string', default: '10' },
      json: { type: 'boolean', default: false },
      child: { type: 'boolean', default: false },
    },
  });
  const runs = Number(values.runs);
  if (values.child) {
    console.log(JSON.stringify(child(runs)));
    return;
  }
  const engines = enginesToCompare();
  const best = new Map<string, Measurement>();
  let anchor: ReturnType<typeof torch> | undefined;
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const engine of engines) {
      const m = runChild<Measurement>(fileURLToPath(import.meta.url), engine, ['--runs', String(runs)]);
      const prev = best.get(engine);
      if (prev === undefined || m.tokens_per_s > prev.tokens_per_s) best.set(engine, m);
    }
    const t = torch(runs);
    if (typeof t === 'string') anchor ??= t;
    else if (anchor === undefined || typeof anchor === 'string' || t.tokens_per_s > anchor.tokens_per_s)
      anchor = t;
  }
  const info = getEngine().info;
  const rows = [...best.values()].map((m) => ({
    ...m,
    baseline_tokens_per_s: typeof anchor === 'object' ? anchor.tokens_per_s : null,
    ratio: typeof anchor === 'object' ? m.tokens_per_s / anchor.tokens_per_s : null,
  }));
  if (values.json) {
    console.log(
      JSON.stringify({ cpu: info.cpuModel, threads: info.threads, shape: SHAPE, rows, anchor }, null, 2),
    );
    return;
  }
  console.log(
    `CPU: ${info.cpuModel}; ${info.threads} threads; shape ${JSON.stringify(SHAPE)}; f32; best of ${values.rounds} rounds`,
  );
  if (typeof anchor === 'string') console.log(anchor);
  else if (anchor !== undefined)
    console.log(`PyTorch fp32 (bench_lora.py --mode infer): ${anchor.tokens_per_s.toFixed(0)} tokens/s`);
  console.log('');
  console.log('| engine | tokens/s | step s | peak RSS MB | PyTorch tokens/s | ratio |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(
      `| ${r.engine} | ${r.tokens_per_s.toFixed(0)} | ${r.step_s.toFixed(3)} | ${r.peak_rss_mb.toFixed(0)} | ${r.baseline_tokens_per_s?.toFixed(0) ?? 'n/a'} | ${r.ratio === null ? 'n/a' : `${r.ratio.toFixed(2)}x`} |`,
    );
  }
}

main();
