/**
 * `qtune train`: --help lists every option with its default; each example config for the tiny model
 * trains and writes its outputs; resume continues; a bad config, a bad flag and a bad data file each
 * fail with one line and exit code 2.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TRAIN_OPTIONS } from '../../src/cli/train-config.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { expandModel } from '../../src/peft/expand.js';
import { ROOT, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-train-cli-'));
const tiny = path.join(tmp, 'tiny-model');
const tinyPro = path.join(tmp, 'tiny-model-pro');
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Fast settings for a smoke run of an example (the example's own values otherwise). */
const QUICK = [
  '--max_steps',
  '2',
  '--eval_steps',
  '0',
  '--save_steps',
  '0',
  '--context_length',
  '64',
  '--max_samples',
  '24',
];

function oneLineError(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

describe('qtune train', () => {
  before(() => {
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
    expandModel(tiny, tinyPro, 1);
  });

  it('--help lists every option with its default', () => {
    const r = qtune(['train', '--help']);
    assert.equal(r.code, 0, r.stderr);
    for (const [k, spec] of Object.entries(TRAIN_OPTIONS)) {
      const line = r.stdout.split('\n').find((l) => l.trimStart().startsWith(`--${k} `));
      assert.ok(line !== undefined, `--${k} missing from --help`);
      if (spec.default !== null && !(Array.isArray(spec.default) && spec.default.length === 0))
        assert.match(line, /\(default: /, `--${k} has no default in --help`);
    }
  });

  for (const type of ['lora', 'qlora', 'dora', 'full', 'llama_pro']) {
    it(`examples/${type}-tiny.yaml trains and writes its outputs`, () => {
      const out = path.join(tmp, `out-${type}`);
      const r = qtune([
        'train',
        '--config',
        path.join(ROOT, 'examples', `${type}-tiny.yaml`),
        '--model',
        type === 'llama_pro' ? tinyPro : tiny,
        '--dataset',
        path.join(ROOT, 'data', 'style.jsonl'),
        '--output_dir',
        out,
        ...QUICK,
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /trained 2 steps/);
      // on by default over a quantized base only, and said so
      assert.match(
        r.stdout,
        type === 'qlora'
          ? /^gradient checkpointing: on \(default for qlora over nf4; gradient_checkpointing: false changes it\)$/m
          : new RegExp(`^gradient checkpointing: off \\(default for ${type};`, 'm'),
      );
      const expected =
        type === 'full' || type === 'llama_pro'
          ? ['model/config.json', 'model/model.safetensors']
          : ['adapter_model.safetensors', 'adapter_config.json'];
      for (const f of [
        ...expected,
        'metrics.jsonl',
        'loss.png',
        'loss.svg',
        'checkpoint-2/trainer_state.json',
      ])
        assert.ok(existsSync(path.join(out, f)), `${type}: ${f} missing`);
      const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const steps = rows.filter((row) => typeof row['grad_norm'] === 'number');
      assert.equal(steps.length, 2);
      for (const key of ['step', 'epoch', 'loss', 'lr', 'grad_norm', 'tokens_per_s', 'memory'])
        assert.ok(key in steps[0]!, `metrics.jsonl lacks ${key}`);
    });
  }

  it('eval, export, chat and generate use the trained adapter', () => {
    const out = path.join(tmp, 'out-lora'); // written by the lora example above
    const ev = qtune([
      'eval',
      '--model',
      tiny,
      '--adapter',
      out,
      '--dataset',
      path.join(ROOT, 'data', 'style.jsonl'),
      '--max-samples',
      '8',
      '--context-length',
      '64',
      '--json',
    ]);
    assert.equal(ev.code, 0, ev.stderr);
    const r = JSON.parse(ev.stdout) as { loss: number; perplexity: number; tokens: number; samples: number };
    assert.equal(r.samples, 8);
    assert.ok(r.tokens > 0 && Number.isFinite(r.loss));
    assert.ok(Math.abs(r.perplexity - Math.exp(r.loss)) <= 1e-9 * r.perplexity);
    const gguf = path.join(tmp, 'exported.gguf');
    const ex = qtune([
      'export',
      '--from',
      path.join(out, 'checkpoint-2'),
      '--model',
      tiny,
      '--format',
      'gguf',
      '--out',
      gguf,
    ]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.ok(existsSync(gguf));
    const peft = path.join(tmp, 'exported-peft');
    assert.equal(
      qtune(['export', '--from', gguf, '--model', tiny, '--format', 'peft', '--out', peft]).code,
      0,
    );
    assert.ok(existsSync(path.join(peft, 'adapter_model.safetensors')));
    for (const adapter of [out, gguf, peft]) {
      const chat = qtune([
        'chat',
        '--model',
        tiny,
        '--adapter',
        adapter,
        '--prompt',
        'Hello',
        '--max-new-tokens',
        '4',
        '--backend',
        'cpu',
      ]);
      assert.equal(chat.code, 0, chat.stderr);
    }
    // the same adapter from every format gives the same greedy text
    const texts = [out, gguf, peft].map(
      (a) =>
        qtune([
          'generate',
          '--model',
          tiny,
          '--adapter',
          a,
          '--prompt',
          'The sea',
          '--max-new-tokens',
          '8',
          '--backend',
          'cpu',
        ]).stdout,
    );
    assert.equal(texts[1], texts[0]);
    assert.equal(texts[2], texts[0]);
    oneLineError(
      qtune(['export', '--from', out, '--model', tiny, '--format', 'onnx', '--out', peft]),
      /--format=onnx is not gguf or peft/,
    );
  });

  it('resumes from the latest checkpoint', () => {
    const out = path.join(tmp, 'out-resume');
    const args = [...tinyTrainArgs(tiny, out), ...QUICK];
    assert.equal(qtune(args).code, 0);
    const r = qtune([...args, '--max_steps', '3', '--resume_from_checkpoint', 'latest']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /resumed from .*checkpoint-2 at step 2/);
    assert.ok(existsSync(path.join(out, 'checkpoint-3')));
  });

  it('a bad config, a bad flag and a bad data file fail with one line and exit code 2', () => {
    const cfg = (body: string) => {
      const f = path.join(tmp, `cfg-${Math.random().toString(36).slice(2)}.yaml`);
      writeFileSync(f, body);
      return f;
    };
    const badOut = path.join(tmp, 'never-written');
    const base = `model: ${tiny}\ndataset: ${path.join(ROOT, 'data', 'style.jsonl')}\noutput_dir: ${badOut}\n`;
    oneLineError(
      qtune(['train', '--config', cfg(`${base}lora_rnak: 8\n`)]),
      /lora_rnak: unknown option.*did you mean lora_rank/,
    );
    oneLineError(
      qtune(['train', '--config', cfg(`${base}lr: -1\n`)]),
      /lr: -1 is out of range.*lr must be above 0/,
    );
    oneLineError(
      qtune(['train', '--config', cfg(`${base}train_type: qlorra\n`)]),
      /train_type: "qlorra" is not allowed.*one of full, lora/,
    );
    oneLineError(qtune(['train', '--config', cfg(`${base}optimizer: [adamw\n`)]), /line \d+/);
    oneLineError(
      qtune(['train', '--config', cfg(base), '--lora_rank', 'eight']),
      /lora_rank: "eight" is not a number/,
    );
    oneLineError(
      qtune(['train', '--config', cfg(base), '--no_such_flag', '1']),
      /--no_such_flag: unknown option/,
    );
    oneLineError(
      qtune(['train', '--config', path.join(tmp, 'missing.yaml')]),
      /missing\.yaml does not exist/,
    );
    const bad = path.join(tmp, 'bad.jsonl');
    writeFileSync(bad, '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n');
    oneLineError(qtune(['train', '--config', cfg(base), '--dataset', bad]), /bad\.jsonl.*line 2/);
    assert.ok(!existsSync(badOut), 'a failed run wrote into its output folder');
  });
});
