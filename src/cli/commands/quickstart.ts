/**
 * `qtune quickstart` (`npm run quickstart`): the whole job with no download.
 *
 * 1. A small base model: qtune pretrains a tiny Llama (Llama 2 tokenizer) from scratch on Moby Dick
 *    (data/moby-dick.jsonl, shipped in the package) and caches it, so later runs start at step 2.
 * 2. `qtune train --config examples/quickstart.yaml`: a LoRA on data/style.jsonl, a small instruction
 *    set shipped in the repository whose answers all have one fixed style. The base is linked at
 *    `<out>-base` (out/quickstart-base), where examples/quickstart.yaml names it, so that the same
 *    command typed by hand afterwards trains again.
 * 3. The base model's and the tuned model's answers to the same new prompts, side by side.
 */
import {
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createAdapterHook, loadAdapter } from '../../peft/apply.js';
import { BackendManager } from '../../backends/manager.js';
import { cacheRoot } from '../../engine/paths.js';
import { ALPACA_PROMPT_NO_INPUT } from '../../data/formats.js';
import { QtuneError } from '../../errors.js';
import { Tokenizer } from '../../io/tokenizer.js';
import { generate } from '../../models/generate.js';
import { loadModel } from '../../models/load.js';
import { createTinyModel } from '../../models/tiny.js';
import { Trainer, prepareModel } from '../../train/trainer.js';
import type { Example } from '../../data/example.js';
import { helpText, intFlag, parse, type CommandSpec } from '../args.js';
import { readConfigFile } from '../train-config.js';
import * as train from './train.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
/** Bump when the recipe changes, so a stale cached base model is not reused. */
const BASE_RECIPE = 'moby-base-v1';
const PRETRAIN_STEPS = 150;
const SEQ = 64;

export const spec: CommandSpec = {
  name: 'quickstart',
  summary:
    'Pretrain a tiny model on Moby Dick (cached), fine-tune a LoRA on data/style.jsonl, compare answers.',
  usage:
    'qtune quickstart [--out DIR] [--pretrain-steps N] [--finetune-steps N] [--answer-tokens N] [--backend DEVICE]',
  flags: {
    out: { type: 'string', default: 'out/quickstart', help: 'output folder of the fine-tune' },
    'pretrain-steps': {
      type: 'string',
      default: String(PRETRAIN_STEPS),
      help: 'pretraining steps of the base, if not cached in $QTUNE_CACHE_DIR/quickstart (each count has its own)',
    },
    'finetune-steps': {
      type: 'string',
      default: '100',
      help: 'steps of the LoRA fine-tune (max_steps of examples/quickstart.yaml)',
    },
    'answer-tokens': { type: 'string', default: '24', help: 'tokens generated per answer' },
    backend: { type: 'string', default: 'cpu', help: 'device to train on' },
  },
};

/** Two instructions of the fine-tuning data and one it never saw. */
const PROMPTS = ['What is a harpoon?', 'What is a mast?', 'Why do whales sing?'];

/** The pretraining text: Moby Dick (public domain), one JSON line per part ({chapter, title, text}). */
export const MOBY_DICK = path.join(ROOT, 'data', 'moby-dick.jsonl');

/** The book's 139 parts (contents, etymology, extracts, chapters, epilogue), in order. */
export function mobyDickChapters(): string[] {
  if (!existsSync(MOBY_DICK))
    throw new QtuneError('NOT_FOUND', `the quickstart's pretraining text ${MOBY_DICK} is missing`, {
      hint: 'reinstall qtune (the package ships data/moby-dick.jsonl)',
    });
  return readFileSync(MOBY_DICK, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (JSON.parse(l) as { text: string }).text);
}

const BATCH = 8;
const VALIDATION = 16;

/**
 * The pretraining tokens: the whole book for the default recipe; a shortened run (a test, a try)
 * reads only as many chapters as its steps and the validation sequences use, since the tokenizer
 * takes about a minute over the whole book on a busy 2-core machine.
 */
function pretrainIds(tokenizer: Tokenizer, steps: number): number[] {
  const chapters = mobyDickChapters();
  if (steps === PRETRAIN_STEPS) return tokenizer.encode(chapters.join('\n\n'));
  const need = (steps * BATCH + VALIDATION + 1) * (SEQ + 1);
  const ids: number[] = [];
  for (const [i, chapter] of chapters.entries()) {
    if (ids.length >= need) break;
    ids.push(...tokenizer.encode(i === 0 ? chapter : `\n\n${chapter}`, { addSpecialTokens: i === 0 }));
  }
  return ids;
}

/** The cached base model, pretrained from scratch on the first call. */
export async function quickstartBase(
  backend: string,
  steps: number,
  log: (s: string) => void,
): Promise<string> {
  // a shortened pretraining is cached apart, so it never stands in for the real base
  const recipe = steps === PRETRAIN_STEPS ? BASE_RECIPE : `${BASE_RECIPE}-${steps}-steps`;
  const dir = path.join(cacheRoot(), 'quickstart', recipe);
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
  const ids = pretrainIds(tokenizer, steps);
  const examples: Example[] = [];
  for (let s = 0; s + SEQ + 1 < ids.length; s += SEQ)
    examples.push({
      ids: Int32Array.from(ids.slice(s, s + SEQ)),
      labels: Int32Array.from(ids.slice(s + 1, s + SEQ + 1)),
    });
  const validation = examples.splice(examples.length - VALIDATION);
  log(
    `base model: pretraining a 4-block Llama (${(ids.length / 1000).toFixed(0)}k tokens of Moby Dick, ${steps} steps) — once, then cached in ${dir}`,
  );
  const prepared = await prepareModel(path.join(work, 'init'), { trainType: 'full', backend });
  const trainer = new Trainer(
    prepared,
    { train: examples, validation },
    {
      trainType: 'full',
      batchSize: BATCH,
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
    `Pretrained by \`qtune quickstart\` (${recipe}) on Moby Dick.\n`,
  );
  rmSync(work, { recursive: true, force: true });
  return dir;
}

/** `link` → the cached base (a copy where links cannot be made), replacing an earlier one. */
function linkBase(base: string, link: string): void {
  rmSync(link, { recursive: true, force: true }); // a link is removed, not what it points to
  mkdirSync(path.dirname(link), { recursive: true });
  try {
    symlinkSync(path.resolve(base), link, 'junction'); // (the type matters on Windows only)
  } catch {
    cpSync(base, link, { recursive: true });
  }
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
  const pretrainSteps = intFlag('pretrain-steps', values['pretrain-steps'])!;
  const finetuneSteps = intFlag('finetune-steps', values['finetune-steps'])!;
  const answerTokens = intFlag('answer-tokens', values['answer-tokens'])!;
  const base = await quickstartBase(backend, pretrainSteps, out);
  linkBase(base, `${dest.replace(/[\\/]+$/, '')}-base`);
  out(`fine-tuning a LoRA on data/style.jsonl (examples/quickstart.yaml) into ${dest}`);
  rmSync(dest, { recursive: true, force: true });
  const config = path.join(ROOT, 'examples', 'quickstart.yaml');
  // fewer steps than the recipe's warmup: warm up over all of them
  const warmup = readConfigFile(config)['warmup_steps'];
  const code = await train.run(
    [
      '--config',
      config,
      '--model',
      base,
      '--dataset',
      path.join(ROOT, 'data', 'style.jsonl'),
      '--output_dir',
      dest,
      '--backend',
      backend,
      '--max_steps',
      String(finetuneSteps),
      ...(typeof warmup === 'number' && warmup > finetuneSteps
        ? ['--warmup_steps', String(finetuneSteps)]
        : []),
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
          maxNewTokens: answerTokens,
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
