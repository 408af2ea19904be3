/**
 * What `qtune train` leaves in output_dir beside the adapter, as a PEFT/Axolotl user expects it: the
 * model card (README.md), the resolved config (qtune_config.yaml), the log (train.log), the tokenizer
 * files and trainer_state.json; and load_best_model_at_end, which makes the outputs those of the
 * checkpoint with the lowest validation loss. The real binary, a tiny model on disk, real data.
 */
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readFlags } from '../../src/cli/commands/train.js';
import { checkEarlierRun } from '../../src/cli/run-folder.js';
import { readConfigFile, resolveTrainConfig } from '../../src/cli/train-config.js';
import { readConfig } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { loadAdapter } from '../../src/peft/apply.js';
import { Trainer } from '../../src/train/trainer.js';
import { qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-run-outputs-'));
const tiny = path.join(tmp, 'tiny-model');
after(() => rmSync(tmp, { recursive: true, force: true }));

const QUICK = ['--context_length', '64', '--max_samples', '40', '--save_steps', '0'];
const SPECIAL_TOKENS = '{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}\n';

function read(dir: string, file: string): string {
  return readFileSync(path.join(dir, file), 'utf8');
}

describe('qtune train: the output folder', () => {
  before(() => {
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
    writeFileSync(path.join(tiny, 'special_tokens_map.json'), SPECIAL_TOKENS);
  });

  it('holds a model card, the resolved config, the log, the tokenizer files and trainer_state.json', () => {
    const out = path.join(tmp, 'out-lora');
    const args = [
      ...tinyTrainArgs(tiny, out),
      ...QUICK,
      '--max_steps',
      '4',
      '--eval_steps',
      '2',
      '--lr',
      '0.003',
    ];
    const r = qtune(args);
    assert.equal(r.code, 0, r.stderr);
    for (const f of [
      'README.md',
      'qtune_config.yaml',
      'train.log',
      'tokenizer.json',
      'tokenizer_config.json',
      'special_tokens_map.json',
      'trainer_state.json',
    ])
      assert.ok(existsSync(path.join(out, f)), `${f} missing`);
    assert.match(r.stdout, /config\.yaml, .*README\.md, .*train\.log$/m);

    // the resolved config reads back as the same settings: defaults, the file and every flag
    const { config, flags } = readFlags(args.slice(1));
    const resolved = resolveTrainConfig(readConfigFile(config!), flags);
    assert.deepEqual(resolveTrainConfig(readConfigFile(path.join(out, 'qtune_config.yaml'))), resolved);
    assert.match(read(out, 'qtune_config.yaml'), /^lr: 0\.003$/m);
    assert.match(read(out, 'qtune_config.yaml'), /^lora_dropout: 0$/m, 'a default is written out');

    // the tokenizer files: those the run used, and the base folder's special_tokens_map.json as is
    assert.deepEqual(JSON.parse(read(out, 'tokenizer.json')), JSON.parse(read(tiny, 'tokenizer.json')));
    assert.equal(read(out, 'special_tokens_map.json'), SPECIAL_TOKENS);

    // the log: stdout's lines and the progress, plain
    const log = read(out, 'train.log');
    for (const line of r.stdout.trim().split('\n')) assert.ok(log.includes(line), `train.log lacks: ${line}`);
    assert.match(log, /^# qtune train, started \d{4}-/);
    assert.match(log, /^eval {2}step 2 {2}loss \d/m);
    assert.match(log, /^done: 4 steps in /m);

    const state = JSON.parse(read(out, 'trainer_state.json')) as Record<string, unknown>;
    const metrics = read(out, 'metrics.jsonl')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; step: number; loss: number });
    const lastStep = metrics.filter((m) => m.kind === 'step').at(-1)!;
    const evals = metrics.filter((m) => m.kind === 'eval');
    assert.equal(state['global_step'], 4);
    assert.equal(state['train_loss'], lastStep.loss);
    assert.equal(state['eval_loss'], evals.at(-1)!.loss);
    assert.equal(state['best_model_checkpoint'], null, 'no load_best_model_at_end');
    assert.deepEqual(
      (state['log_history'] as { step: number }[]).map((e) => e.step),
      [2, 4],
    );

    const card = read(out, 'README.md');
    assert.match(card, new RegExp(`^base_model: ${JSON.stringify(tiny).replace(/[\\/.]/g, '\\$&')}$`, 'm'));
    assert.match(card, /^library_name: peft$/m);
    assert.match(card, /style\.jsonl/);
    assert.match(card, /train type lora/);
    assert.match(card, /^\| lr \| 0\.003 \|$/m);
    assert.match(card, /^\| lora_rank \| 8 \|$/m);
    assert.match(card, new RegExp(`^- final train loss: ${lastStep.loss.toFixed(4)}$`, 'm'));
    assert.match(card, new RegExp(`^- final validation loss: ${evals.at(-1)!.loss.toFixed(4)} `, 'm'));
    assert.match(card, /^- steps: 4 of 4$/m);
    assert.ok(card.includes(`PeftModel.from_pretrained(base, ${JSON.stringify(out)})`), card);
    assert.ok(card.includes(`--lora ${path.join(out, 'adapter.gguf')}`), card);
    assert.ok(card.includes(`npx qtune generate --model ${tiny} --adapter ${out}`), card);

    // the output folder is still an adapter folder for export (its trainer_state.json is no checkpoint's)
    const gguf = path.join(tmp, 'exported.gguf');
    const ex = qtune(['export', '--from', out, '--model', tiny, '--format', 'gguf', '--out', gguf]);
    assert.equal(ex.code, 0, ex.stderr);
  });

  it('a failed resume ends the log with its error line, after the earlier session', () => {
    const out = path.join(tmp, 'out-lora'); // written above
    const r = qtune([
      ...tinyTrainArgs(tiny, out),
      ...QUICK,
      '--max_steps',
      '6',
      '--lora_rank',
      '4',
      '--resume_from_checkpoint',
      'latest',
    ]);
    assert.equal(r.code, 2, r.stderr);
    const log = read(out, 'train.log');
    assert.match(log, /^done: 4 steps in /m, 'the first session is kept');
    assert.match(log, /^# qtune train, resumed /m);
    const error = r.stderr.trim().split('\n').at(-1)!;
    assert.match(error, /^qtune: error: /);
    assert.equal(log.trim().split('\n').at(-1), error);
  });

  it('load_best_model_at_end: the outputs are the checkpoint of the lowest validation loss', () => {
    // validation text unlike the training data: its loss rises as the model learns the style
    const val = path.join(tmp, 'val.jsonl');
    const record = { instruction: 'Qzx vwq?', input: '', output: 'zxq qwv jjk xqz zzv qqx vvj kkq zqx jqv' };
    writeFileSync(val, `${JSON.stringify(record)}\n`.repeat(4));
    const out = path.join(tmp, 'out-best');
    const r = qtune([
      ...tinyTrainArgs(tiny, out),
      ...QUICK,
      '--val_dataset',
      val,
      '--max_steps',
      '6',
      '--eval_steps',
      '2',
      '--lr',
      '0.01',
      '--lr_scheduler',
      'constant',
      '--warmup_ratio',
      '0',
      '--load_best_model_at_end',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const evals = read(out, 'metrics.jsonl')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; step: number; loss: number })
      .filter((m) => m.kind === 'eval');
    assert.deepEqual(
      evals.map((e) => e.step),
      [2, 4, 6],
      'save_steps 0 became eval_steps: a checkpoint at each evaluation',
    );
    const best = evals.reduce((a, b) => (b.loss < a.loss ? b : a));
    assert.notEqual(best.step, 6, `the validation loss must rise for this test: ${JSON.stringify(evals)}`);
    const bestDir = path.join(out, `checkpoint-${best.step}`);
    assert.match(
      r.stdout,
      new RegExp(`^load_best_model_at_end: the outputs are ${bestDir}'s \\(step ${best.step}, `, 'm'),
    );

    // the saved adapter holds the best checkpoint's weights, not the last step's
    const saved = loadAdapter(out, readConfig(tiny));
    for (const [dir, same] of [
      [bestDir, true],
      [path.join(out, 'checkpoint-6'), false],
    ] as const) {
      const ckpt = Trainer.checkpointAdapter(dir);
      const name = 'model.layers.0.self_attn.q_proj';
      assert.equal(
        Buffer.from(saved.modules.get(name)!.B.buffer).equals(Buffer.from(ckpt.modules.get(name)!.B.buffer)),
        same,
        dir,
      );
    }
    const state = JSON.parse(read(out, 'trainer_state.json')) as Record<string, unknown>;
    assert.equal(state['best_model_checkpoint'], bestDir);
    assert.equal(state['best_metric'], best.loss);
    assert.equal(state['metric_for_best_model'], 'eval_loss');
    assert.match(
      read(out, 'README.md'),
      new RegExp(`the weights are those of checkpoint-${best.step} \\(step ${best.step}`),
    );
  });

  it('load_best_model_at_end refuses settings that cannot compare checkpoints, naming the field', () => {
    const base = { model: tiny, dataset: 'data.jsonl', load_best_model_at_end: true };
    assert.throws(
      () => resolveTrainConfig({ ...base }),
      /load_best_model_at_end: true needs eval_steps above 0/,
    );
    assert.throws(
      () => resolveTrainConfig({ ...base, eval_steps: 4, save_steps: 6 }),
      /save_steps: 6 is not a multiple of eval_steps 4/,
    );
    assert.throws(
      () => resolveTrainConfig({ ...base, eval_steps: 4, val_size: 0 }),
      /needs validation data, but val_size is 0/,
    );
    assert.equal(resolveTrainConfig({ ...base, eval_steps: 4 }).save_steps, 4);
    assert.equal(resolveTrainConfig({ ...base, eval_steps: 4, save_steps: 8 }).save_steps, 8);
    const r = qtune([
      ...tinyTrainArgs(tiny, path.join(tmp, 'never')),
      '--load_best_model_at_end',
      '--eval_steps',
      '0',
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.ok(!existsSync(path.join(tmp, 'never')), 'nothing written');
  });

  it("overwrite_output_dir removes these files too, but not a user's README.md or a tokenizer with no adapter beside it", () => {
    const ours = path.join(tmp, 'overwrite-ours');
    const theirs = path.join(tmp, 'overwrite-theirs');
    const card = '---\nbase_model: "m"\n---\n\nA LoRA adapter trained with qtune (`qtune train`).\n';
    const files: Record<string, Record<string, string>> = {
      [ours]: {
        'adapter_model.safetensors': '',
        'adapter_config.json': '{}',
        'README.md': card,
        'qtune_config.yaml': 'lr: 1\n',
        'train.log': 'x\n',
        'trainer_state.json': '{}',
        'tokenizer.json': '{}',
        'tokenizer_config.json': '{}',
        'special_tokens_map.json': '{}',
        'notes.txt': 'mine',
      },
      [theirs]: { 'metrics.jsonl': '', 'README.md': '# my project\n', 'tokenizer.json': '{}' },
    };
    for (const [dir, content] of Object.entries(files)) {
      mkdirSync(dir);
      for (const [f, text] of Object.entries(content)) writeFileSync(path.join(dir, f), text);
      checkEarlierRun(dir, { overwrite: true, resume: false });
    }
    assert.deepEqual(readdirSync(ours), ['notes.txt']);
    assert.deepEqual(readdirSync(theirs).sort(), ['README.md', 'tokenizer.json']);
  });
});
