/**
 * One spelling rule for every command (src/cli/args.ts): `--context_length` and `--context-length`
 * are one flag in train, eval and generate; `eval --dataset-format` and `export --adapter` are the
 * names the other commands use; the Axolotl/Hugging Face names (`learning_rate`, `micro_batch_size`,
 * `sequence_len`, ...) are the qtune options they name (src/cli/train-aliases.ts); a mistyped flag,
 * a flag without its value and `qtune --version` each get one line. Run through the real CLI in a child process.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readFlags } from '../../src/cli/commands/train.js';
import { TRAIN_ALIASES } from '../../src/cli/train-aliases.js';
import { resolveTrainConfig } from '../../src/cli/train-config.js';
import { ConfigError } from '../../src/errors.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { ROOT, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-names-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const tiny = path.join(tmp, 'tiny-model');
const STYLE = path.join(ROOT, 'data', 'style.jsonl');

/** The run failed with input error 2 and one line on stderr that matches `pattern`. */
function oneLineError(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stdout + r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /^qtune: error: /);
  assert.match(lines[0]!, pattern);
}

before(() => {
  createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
});

describe('Axolotl and Hugging Face names in the train config', () => {
  const base = { model: 'm', dataset: 'd.jsonl' };

  it('reads each as the qtune option it names, in the file and as a flag', () => {
    const c = resolveTrainConfig({
      dataset: 'd.jsonl',
      base_model: 'axolotl-model',
      learning_rate: 0.001,
      micro_batch_size: 2,
      gradient_accumulation_steps: 4,
      sequence_len: 256,
      num_train_epochs: 3,
      lora_r: 16,
      sample_packing: true,
      val_set_size: 0.1,
      lr_scheduler_type: 'cosine',
      cosine_min_lr_ratio: 0.1,
    });
    assert.equal(c.model, 'axolotl-model');
    assert.equal(c.lr, 0.001);
    assert.equal(c.batch_size, 2);
    assert.equal(c.gradient_accumulation_steps, 4);
    assert.equal(c.context_length, 256);
    assert.equal(c.num_epochs, 3);
    assert.equal(c.lora_rank, 16);
    assert.equal(c.packing, true);
    assert.equal(c.val_size, 0.1);
    assert.equal(c.lr_scheduler, 'cosine');
    assert.equal(c.min_lr_ratio, 0.1);
    const hf = resolveTrainConfig(
      { model_name_or_path: 'hf-model', dataset: 'd.jsonl' },
      { per_device_train_batch_size: '8', max_seq_length: '128', learning_rate: '3e-4' },
    );
    assert.equal(hf.model, 'hf-model');
    assert.equal(hf.batch_size, 8);
    assert.equal(hf.context_length, 128);
    assert.equal(hf.lr, 3e-4);
    // a flag under one name wins over the file's value under the other, as any flag does
    assert.equal(resolveTrainConfig({ ...base, lr: 0.1 }, { learning_rate: '0.2' }).lr, 0.2);
  });

  it('checks an alias value under the name it was given, and refuses both names in one file', () => {
    assert.throws(
      () => resolveTrainConfig({ ...base, learning_rate: -1 }),
      (e: unknown) => e instanceof ConfigError && /^learning_rate: -1 is out of range/.test(e.message),
    );
    assert.throws(
      () => resolveTrainConfig({ ...base, lr: 0.1, learning_rate: 0.2 }),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.message === 'lr and learning_rate are both set: both name lr (give one of them)',
    );
  });

  it('every alias names an option, and docs/cli.md lists each', () => {
    const SAMPLES: Record<string, unknown> = {
      model: 'a-model',
      lora_rank: 4,
      dataset_format: 'chat',
      packing: true,
      val_size: 0.2,
      context_length: 64,
      batch_size: 3,
      num_epochs: 2,
      lr: 0.01,
      lr_scheduler: 'cosine',
      min_lr_ratio: 0.1,
      log_to: ['tensorboard'],
      dashboard_port: 8123,
      max_completion_length: 12,
    };
    // the table's rows, `| \`name\` | \`option\` | from |`, as name -> option
    const rows = new Map<string, string>();
    for (const line of readFileSync(path.join(ROOT, 'docs', 'cli.md'), 'utf8').split('\n')) {
      const cells = line.split('|').map((c) => c.trim());
      if (cells.length >= 4 && /^`\w+`$/.test(cells[1]!)) rows.set(cells[1]!, cells[2]!);
    }
    for (const [alias, option] of Object.entries(TRAIN_ALIASES)) {
      // a value other than the default, under the alias alone (base_model, not beside model: 'm')
      assert.ok(Object.hasOwn(SAMPLES, option), `no sample value for ${option}`);
      const others = Object.fromEntries(Object.entries(base).filter(([k]) => k !== option));
      const c = resolveTrainConfig({ ...others, [alias]: SAMPLES[option] }) as unknown as Record<
        string,
        unknown
      >;
      assert.deepEqual(c[option], SAMPLES[option], alias);
      assert.equal(
        rows.get(`\`${alias}\``),
        `\`${option}\``,
        `docs/cli.md does not list ${alias} → ${option}`,
      );
    }
  });

  it('a name and its alias in one config file, or a mistyped alias, is one line naming both', () => {
    const cfg = (name: string, body: string) => {
      const f = path.join(tmp, name);
      writeFileSync(f, `model: ${tiny}\ndataset: ${STYLE}\noutput_dir: ${path.join(tmp, 'never')}\n${body}`);
      return f;
    };
    oneLineError(
      qtune(['train', '--config', cfg('both.yaml', 'lr: 0.1\nlearning_rate: 0.2\n')]),
      /^qtune: error: lr and learning_rate are both set: both name lr \(give one of them\)$/,
    );
    oneLineError(
      qtune(['train', '--config', cfg('hf.yaml', 'batch_size: 2\nper_device_train_batch_size: 4\n')]),
      /batch_size and per_device_train_batch_size are both set: both name batch_size/,
    );
    oneLineError(
      qtune(['train', '--config', cfg('typo.yaml', 'micro_batch_sise: 2\n')]),
      /^qtune: error: micro_batch_sise: unknown option \(did you mean batch_size\?\)$/,
    );
    oneLineError(
      qtune(['train', '--config', cfg('flag.yaml', ''), '--learning_rate']),
      /--learning_rate needs a value \(e\.g\. --learning_rate 0\.0002\)$/,
    );
    oneLineError(
      qtune(['train', '--config', cfg('flag.yaml', ''), '--learning_rat', '1e-3']),
      /--learning_rat: unknown option \(did you mean --lr\?\)$/,
    );
    // a name whose value qtune spells differently: the qtune way to say it
    oneLineError(
      qtune(['train', '--config', cfg('adapter.yaml', 'adapter: qlora\n')]),
      /^qtune: error: adapter: unknown option \(in qtune: train_type: qlora\)$/,
    );
    oneLineError(
      qtune(['train', '--config', cfg('optim.yaml', 'optim: adamw_torch\n')]),
      /^qtune: error: optim: unknown option \(in qtune: optimizer: adamw, or adam, sgd, adadelta, lion\)$/,
    );
    oneLineError(
      qtune(['train', '--config', cfg('bf16.yaml', ''), '--bf16']),
      /^qtune: error: --bf16: unknown option \(in qtune: --precision bf16\)$/,
    );
    assert.ok(!existsSync(path.join(tmp, 'never')), 'a refused run wrote its output folder');
  });

  it('train reads a config in Axolotl names, and takes them as flags', () => {
    const out = path.join(tmp, 'run');
    const config = path.join(tmp, 'axolotl.yaml');
    writeFileSync(
      config,
      [
        `base_model: ${tiny}`,
        `dataset: ${STYLE}`,
        'sequence_len: 96',
        'micro_batch_size: 4',
        'gradient_accumulation_steps: 1',
        'num_train_epochs: 1',
        'learning_rate: 0.001',
        'lr_scheduler_type: constant',
        'lora_r: 4',
        'max_steps: 1',
        'eval_steps: 0',
        `output_dir: ${out}`,
        '',
      ].join('\n'),
    );
    // Hugging Face's names as flags, in both spellings, over the file's Axolotl names
    const train = qtune([
      'train',
      '--config',
      config,
      '--backend',
      'cpu',
      '--learning-rate',
      '0.005',
      '--per_device_train_batch_size',
      '2',
    ]);
    assert.equal(train.code, 0, train.stderr);
    const steps = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; lr?: number; epoch: number })
      .filter((m) => m.kind === 'step');
    assert.equal(steps.length, 1);
    assert.equal(steps[0]!.lr, 0.005); // the flag's learning rate, constant schedule
    // 2 records a step, not the file's 4: one step is under 1/30 of the ~150 training records' epoch
    assert.ok(steps[0]!.epoch < 1 / 30, String(steps[0]!.epoch));
    const adapter = JSON.parse(readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as { r: number };
    assert.equal(adapter.r, 4); // lora_r
  });
});

describe('flag names, in every command', () => {
  it('eval takes --context_length as --context-length, and --dataset-format for --format', () => {
    const run = (flags: string[]) => {
      const r = qtune(['eval', '--model', tiny, '--dataset', STYLE, '--backend', 'cpu', '--json', ...flags]);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { loss: number; samples: number };
    };
    const kebab = run(['--context-length', '64', '--max-samples', '3', '--format', 'alpaca']);
    const snake = run(['--context_length', '64', '--max_samples=3', '--dataset_format', 'alpaca']);
    const axolotl = run(['--sequence-len', '64', '--max-samples', '3', '--dataset-format=alpaca']);
    assert.equal(kebab.samples, 3);
    assert.deepEqual(snake, kebab);
    assert.deepEqual(axolotl, kebab);
    // a different context length is a different evaluation: the flag was read, not ignored
    assert.notEqual(run(['--context_length', '128', '--max-samples', '3']).loss, kebab.loss);
  });

  it('generate takes snake_case flags too', () => {
    const r = qtune([
      'generate',
      '--model',
      tiny,
      '--prompt',
      'Hello',
      '--max_new_tokens',
      '3',
      '--backend',
      'cpu',
    ]);
    assert.equal(r.code, 0, r.stderr);
  });

  it('a mistyped flag is one line naming it and the closest known flag, in every command', () => {
    oneLineError(
      qtune(['eval', '--model', tiny, '--contxt-length', '64']),
      /eval: --contxt-length: unknown option \(did you mean --context-length\?\)$/,
    );
    oneLineError(
      qtune(['generate', '--model', tiny, '--max_new_token', '3']),
      /generate: --max_new_token: unknown option \(did you mean --max-new-tokens\?\)$/,
    );
    oneLineError(qtune(['export', '--frm', 'x']), /export: --frm: unknown option \(did you mean --from\?\)$/);
    oneLineError(
      qtune(['backends', '--zzzzzz']),
      /backends: --zzzzzz: unknown option \(see `qtune backends --help`\)$/,
    );
    oneLineError(qtune(['eval', '--json=maybe']), /eval: --json=maybe: --json takes no value/);
  });

  it('a flag without its value is one line: --lr needs a value', () => {
    oneLineError(
      qtune(['train', '--model', tiny, '--dataset', STYLE, '--lr']),
      /--lr needs a value \(e\.g\. --lr 0\.0002\)$/,
    );
    oneLineError(qtune(['train', '--model', tiny, '--lr', '--max_steps', '2']), /--lr needs a value/);
    oneLineError(qtune(['eval', '--dataset', STYLE, '--model']), /eval: --model needs a value/);
    oneLineError(qtune(['eval', '--model', '--json']), /eval: --model needs a value/);
  });

  it('train names a flag as it was typed, and takes the last of one flag in both spellings', () => {
    oneLineError(
      qtune(['train', '--model', tiny, '--dataset', STYLE, '--context-length']),
      /^qtune: error: --context-length needs a value \(e\.g\. --context-length 512\)$/,
    );
    oneLineError(
      qtune(['train', '--model', tiny, '--micro-batch-sze', '2']),
      /^qtune: error: --micro-batch-sze: unknown option \(did you mean --batch_size\?\)$/,
    );
    const { flags } = readFlags(['--context-length', '64', '--max-steps', '1', '--context_length', '96']);
    assert.equal(resolveTrainConfig({ model: 'm', dataset: 'd.jsonl' }, flags).context_length, 96);
  });

  it('every command takes -h for --help', () => {
    for (const command of ['train', 'eval', 'generate', 'export', 'merge']) {
      const r = qtune([command, '-h']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`usage: qtune ${command} `));
    }
  });

  it('export takes --adapter for --from, as eval, generate, chat and merge name it', () => {
    const out = path.join(tmp, 'for-export');
    const train = qtune([
      ...tinyTrainArgs(tiny, out),
      '--max_steps',
      '1',
      '--eval_steps',
      '0',
      '--backend',
      'cpu',
    ]);
    assert.equal(train.code, 0, train.stderr);
    const exported = (flag: string, name: string) => {
      const dir = path.join(tmp, name);
      const r = qtune([
        'export',
        flag,
        path.join(out, 'checkpoint-1'),
        '--model',
        tiny,
        '--format',
        'peft',
        '--out',
        dir,
      ]);
      assert.equal(r.code, 0, r.stderr);
      return readFileSync(path.join(dir, 'adapter_model.safetensors'));
    };
    assert.deepEqual(exported('--adapter', 'by-adapter'), exported('--from', 'by-from'));
  });
});

describe('qtune --version', () => {
  it('qtune --version and qtune version print the package version', () => {
    const { version } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
      version: string;
    };
    for (const args of [['--version'], ['version'], ['-v']]) {
      const r = qtune(args);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), `qtune ${version}`);
    }
    oneLineError(qtune(['verison']), /unknown command "verison" \(did you mean version\?\)/);
  });
});
