/**
 * `qtune bench --padding`: what dynamic padding buys on a real dataset of varied lengths. The same
 * LoRA run three ways, one after the other in this process: every batch padded to the context length
 * (`max_length`), each batch cut to its longest sample (`longest`, the default), and `longest` with
 * length-grouped batches. Reported per mode: median seconds per step, target (loss) tokens/s, input
 * tokens/s (positions that hold samples), and the speed against `max_length`.
 * The dataset defaults to the quickstart's data/style.jsonl (160 alpaca records of 20-60 tokens) and
 * the model to a tiny random Llama with the Llama 2 tokenizer, so it needs no download.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadDataset } from '../data/dataset.js';
import type { Padding } from '../data/batches.js';
import type { TrainData } from '../data/example.js';
import { createTinyModel } from '../models/tiny.js';
import { prepareModel } from '../train/prepare.js';
import { Trainer } from '../train/trainer.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export interface PaddingBenchOptions {
  /** A model folder with a tokenizer; default a tiny random Llama written to a temporary folder. */
  model?: string;
  /** An alpaca JSON/JSONL file; default data/style.jsonl. */
  dataset?: string;
  contextLength: number;
  batchSize: number;
  steps: number;
  /** Untimed steps first: they build the graphs of the buckets the first batches need. */
  warmup: number;
  backend: string;
}

export interface PaddingRow {
  mode: string;
  secondsPerStep: number;
  /** Target tokens per second (the loss is taken on them). */
  tokensPerS: number;
  /** Positions that hold samples, per second. */
  inputTokensPerS: number;
  /** tokensPerS against the max_length row's. */
  speedup: number;
  finalLoss: number;
}

const MODES: { mode: string; padding: Padding; groupByLength: boolean }[] = [
  { mode: 'max_length', padding: 'max_length', groupByLength: false },
  { mode: 'longest', padding: 'longest', groupByLength: false },
  { mode: 'longest + group_by_length', padding: 'longest', groupByLength: true },
];

/** Runs the three modes; `log` gets a line per mode as it finishes. */
export async function runPaddingBench(
  o: PaddingBenchOptions,
  log: (s: string) => void,
): Promise<PaddingRow[]> {
  const tmp = o.model === undefined ? mkdtempSync(path.join(os.tmpdir(), 'qtune-bench-padding-')) : null;
  try {
    const model = o.model ?? path.join(tmp!, 'model');
    if (o.model === undefined)
      createTinyModel(model, {
        hiddenSize: 256,
        intermediateSize: 704,
        layers: 4,
        heads: 8,
        kvHeads: 4,
        seed: 7,
      });
    const rows: PaddingRow[] = [];
    for (const m of MODES) {
      const prepared = await prepareModel(model, { trainType: 'lora', backend: o.backend });
      const data: TrainData = await loadDataset(
        { path: o.dataset ?? path.join(ROOT, 'data', 'style.jsonl'), format: 'alpaca', val_size: 0 },
        prepared.tokenizer!,
        o.contextLength,
      );
      const t = new Trainer(prepared, data, {
        batchSize: o.batchSize,
        maxSteps: o.steps + o.warmup,
        padding: m.padding,
        groupByLength: m.groupByLength,
        optimizer: { name: 'adamw', lr: 1e-3 },
        seed: 1,
      });
      try {
        for (let i = 0; i < o.warmup; i++) t.step(); // builds the graphs of the buckets met so far
        const seconds: number[] = [];
        let [tokens, input, time, loss] = [0, 0, 0, NaN];
        for (let i = 0; i < o.steps; i++) {
          const r = t.step();
          seconds.push(r.seconds);
          [tokens, input, time, loss] = [tokens + r.tokens, input + r.inputTokens, time + r.seconds, r.loss];
        }
        seconds.sort((a, b) => a - b);
        const row: PaddingRow = {
          mode: m.mode,
          secondsPerStep: seconds[Math.floor(seconds.length / 2)]!,
          tokensPerS: tokens / time,
          inputTokensPerS: input / time,
          speedup: rows.length === 0 ? 1 : tokens / time / rows[0]!.tokensPerS,
          finalLoss: loss,
        };
        rows.push(row);
        log(formatPaddingRow(row));
      } finally {
        t.dispose();
      }
    }
    return rows;
  } finally {
    if (tmp !== null) rmSync(tmp, { recursive: true, force: true });
  }
}

export function formatPaddingRow(r: PaddingRow): string {
  return `${r.mode.padEnd(26)} ${r.secondsPerStep.toFixed(3)} s/step  ${r.tokensPerS.toFixed(0).padStart(7)} loss tok/s  ${r.inputTokensPerS.toFixed(0).padStart(7)} input tok/s  ${r.speedup.toFixed(2)}x`;
}
