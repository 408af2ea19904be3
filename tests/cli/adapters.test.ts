/**
 * Adapters from a run, as the commands that take `--adapter` read them: a checkpoint-N folder of a
 * LoRA run is an adapter to generate, chat, eval, merge and export (the same tensors as the PEFT
 * folder the run saved at the same step); a full fine-tune checkpoint is refused with one line that
 * names the model folder to pass instead. Without `--model`, generate and chat load the base the
 * adapter names (a path relative to a folder above the adapter too); `--prompt-format` prompts as
 * the run trained (alpaca), `auto` reads it from the run's qtune_config.yaml. lora_rank_pattern /
 * lora_alpha_pattern (Python regex keys) shape the trained adapter; adapter_dtype and export
 * --adapter-dtype write it in bf16/f16.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { alpacaPrompt } from '../../src/data/formats.js';
import { readGguf } from '../../src/io/gguf.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { loadPeftAdapter } from '../../src/peft/peft.js';
import { Trainer } from '../../src/train/trainer.js';
import { ROOT, qtune, tinyTrainArgs } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-adapters-cli-'));
const tiny = path.join(tmp, 'tiny-model');
const data = path.join(ROOT, 'data', 'style.jsonl');
after(() => rmSync(tmp, { recursive: true, force: true }));

const QUICK = ['--max_steps', '2', '--eval_steps', '0', '--context_length', '64', '--max_samples', '24'];

function oneLineError(r: { code: number; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

describe('adapters of a run', () => {
  const lora = path.join(tmp, 'out-lora');
  const full = path.join(tmp, 'out-full');
  before(() => {
    createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
    for (const [out, type] of [
      [lora, 'lora'],
      [full, 'full'],
    ] as const) {
      const r = qtune([...tinyTrainArgs(tiny, out), ...QUICK, '--save_steps', '1', '--train_type', type]);
      assert.equal(r.code, 0, r.stderr);
    }
  });

  it('a LoRA checkpoint-N folder is an adapter to eval, generate, chat, merge and export', () => {
    const ckpt = path.join(lora, 'checkpoint-2'); // the last step: the same tensors as the saved adapter
    const evalLoss = (adapter: string) => {
      const r = qtune([
        'eval',
        '--model',
        tiny,
        '--adapter',
        adapter,
        '--dataset',
        data,
        '--max-samples',
        '6',
        '--context-length',
        '64',
        '--json',
        '--backend',
        'cpu',
      ]);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { loss: number }).loss;
    };
    const fromCheckpoint = evalLoss(ckpt);
    assert.equal(fromCheckpoint, evalLoss(lora), 'checkpoint-2 and the saved adapter give the same loss');
    assert.notEqual(evalLoss(path.join(lora, 'checkpoint-1')), fromCheckpoint, 'step 1 differs');
    const gen = (adapter: string, cmd = 'generate') => {
      const r = qtune([
        cmd,
        '--model',
        tiny,
        '--adapter',
        adapter,
        '--prompt',
        'The sea',
        '--max-new-tokens',
        '6',
        '--backend',
        'cpu',
      ]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout;
    };
    assert.equal(gen(ckpt), gen(lora));
    assert.equal(gen(ckpt, 'chat'), gen(lora, 'chat'));
    const merged = path.join(tmp, 'merged');
    const m = qtune(['merge', '--model', tiny, '--adapter', ckpt, '--out', merged]);
    assert.equal(m.code, 0, m.stderr);
    assert.match(m.stdout, /merged a LoRA adapter into \d+ weights/);
    const peft = path.join(tmp, 'exported');
    const ex = qtune(['export', '--from', ckpt, '--model', tiny, '--format', 'peft', '--out', peft]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.equal(evalLoss(peft), fromCheckpoint);
  });

  it('a full fine-tune checkpoint names the model folder to pass instead', () => {
    const ckpt = path.join(full, 'checkpoint-2');
    assert.ok(existsSync(path.join(full, 'model', 'config.json')));
    for (const cmd of [
      ['generate', '--model', tiny, '--adapter', ckpt, '--prompt', 'x', '--backend', 'cpu'],
      ['export', '--from', ckpt, '--model', tiny, '--format', 'peft', '--out', path.join(tmp, 'never')],
    ])
      oneLineError(
        qtune(cmd),
        new RegExp(
          `checkpoint .*checkpoint-2 is a full fine-tune: .*not an adapter \\(the run saved its model: pass --model .*out-full/model without --adapter\\)`,
        ),
      );
    assert.ok(!existsSync(path.join(tmp, 'never')));
  });

  const gen = (args: string[]) =>
    qtune(['generate', '--prompt', 'Name the whale.', '--max-new-tokens', '6', '--backend', 'cpu', ...args]);

  it('without --model, generate and chat load the base model the adapter names', () => {
    const withModel = gen(['--model', tiny, '--adapter', lora]);
    assert.equal(withModel.code, 0, withModel.stderr);
    for (const adapter of [lora, path.join(lora, 'checkpoint-2'), path.join(lora, 'adapter.gguf')]) {
      const r = gen(['--adapter', adapter]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, withModel.stdout);
    }
    const chat = qtune([
      'chat',
      '--adapter',
      lora,
      '--prompt',
      'Hi',
      '--max-new-tokens',
      '3',
      '--backend',
      'cpu',
    ]);
    assert.equal(chat.code, 0, chat.stderr);
    // a base saved as a relative path is found from a folder above the adapter (where the run started)
    const moved = path.join(tmp, 'runs', 'moved');
    mkdirSync(path.dirname(moved), { recursive: true });
    cpSync(lora, moved, { recursive: true });
    const cfgFile = path.join(moved, 'adapter_config.json');
    const cfg = JSON.parse(readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
    writeFileSync(cfgFile, JSON.stringify({ ...cfg, base_model_name_or_path: 'tiny-model' }));
    const relative = gen(['--adapter', moved]);
    assert.equal(relative.code, 0, relative.stderr);
    assert.equal(relative.stdout, withModel.stdout);
    writeFileSync(cfgFile, JSON.stringify({ ...cfg, base_model_name_or_path: 'gone-model' }));
    oneLineError(
      gen(['--adapter', moved]),
      /generate: the adapter's base model gone-model \(named in .*adapter_config\.json\) is not found \(pass --model/,
    );
  });

  it('--prompt-format alpaca prompts as the run trained; auto reads it from the run; the default says so', () => {
    const saved = readFileSync(path.join(lora, 'qtune_config.yaml'), 'utf8');
    assert.match(saved, /^dataset_format: alpaca$/m);
    assert.match(saved, /^lora_rank: 8$/m);
    const none = gen(['--adapter', lora]);
    assert.equal(none.code, 0, none.stderr);
    assert.match(
      none.stderr,
      /notice: .*out-lora's run trained on alpaca prompts .*add --prompt-format alpaca \(or auto\)/,
    );
    const alpaca = gen(['--adapter', lora, '--prompt-format', 'alpaca']);
    assert.equal(alpaca.code, 0, alpaca.stderr);
    assert.equal(alpaca.stderr, '', 'no notice when the format is given');
    const byHand = qtune([
      'generate',
      '--adapter',
      lora,
      '--prompt-format',
      'none',
      '--prompt',
      alpacaPrompt('Name the whale.'),
      '--max-new-tokens',
      '6',
      '--backend',
      'cpu',
    ]);
    assert.equal(alpaca.stdout, byHand.stdout, 'the Stanford Alpaca prompt around the instruction');
    assert.notEqual(alpaca.stdout, none.stdout);
    for (const adapter of [lora, path.join(lora, 'checkpoint-1')])
      assert.equal(gen(['--adapter', adapter, '--prompt-format', 'auto']).stdout.length > 0, true);
    assert.equal(
      gen(['--adapter', path.join(lora, 'checkpoint-2'), '--prompt-format', 'auto']).stdout,
      alpaca.stdout,
    );
    oneLineError(
      gen(['--adapter', lora, '--prompt-format', 'vicuna']),
      /--prompt-format=vicuna is not a prompt format \(use alpaca, chat, none, auto\)/,
    );
    oneLineError(
      gen(['--adapter', lora, '--prompt-format', 'alpaca', '--chat']),
      /--chat and --prompt-format alpaca disagree/,
    );
    oneLineError(
      gen(['--model', tiny, '--prompt-format', 'auto']),
      /--prompt-format auto, but no --adapter is given/,
    );
  });

  it('lora_rank_pattern and lora_alpha_pattern (Python regex keys) shape the trained adapter', () => {
    const out = path.join(tmp, 'out-patterns');
    const r = qtune([
      ...tinyTrainArgs(tiny, out),
      ...QUICK,
      '--save_steps',
      '0',
      '--lora_rank_pattern',
      'v_proj=4',
      '--lora_alpha_pattern',
      '(?P<w>q)_proj\\Z=64',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const cfg = JSON.parse(readFileSync(path.join(out, 'adapter_config.json'), 'utf8')) as {
      r: number;
      lora_alpha: number;
      rank_pattern: Record<string, number>;
      alpha_pattern: Record<string, number>;
    };
    assert.equal(cfg.r, 8);
    assert.equal(cfg.lora_alpha, 16);
    const layers = [0, 1];
    assert.deepEqual(
      cfg.rank_pattern,
      Object.fromEntries(layers.map((l) => [`model.layers.${l}.self_attn.v_proj`, 4])),
    );
    assert.deepEqual(
      cfg.alpha_pattern,
      Object.fromEntries(layers.map((l) => [`model.layers.${l}.self_attn.q_proj`, 64])),
    );
    oneLineError(
      qtune([...tinyTrainArgs(tiny, path.join(tmp, 'never-2')), '--lora_alpha_pattern', '(?i:q)_proj=64']),
      /lora_alpha_pattern: key "\(\?i:q\)_proj" cannot be run as Python's re runs it: scoped flags/,
    );
  });

  it('adapter_dtype bf16 writes the adapter in bf16 (the checkpoint stays f32); export --adapter-dtype f16', () => {
    const out = path.join(tmp, 'out-bf16');
    const r = qtune([...tinyTrainArgs(tiny, out), ...QUICK, '--adapter_dtype', 'bf16']);
    assert.equal(r.code, 0, r.stderr);
    const dtypes = (file: string) => {
      const st = SafetensorsFile.open(file);
      try {
        return [...new Set(st.names().map((n) => st.entry(n).dtype))];
      } finally {
        st.close();
      }
    };
    assert.deepEqual(dtypes(path.join(out, 'adapter_model.safetensors')), ['BF16']);
    assert.deepEqual(dtypes(path.join(out, 'checkpoint-2', 'trainable.safetensors')), ['F32']);
    assert.deepEqual(
      [...new Set([...readGguf(path.join(out, 'adapter.gguf')).tensors.values()].map((t) => t.dtype))],
      ['bf16'],
    );
    // the saved values are the trained f32 ones (the checkpoint's) rounded to bf16
    const exact = Trainer.checkpointAdapter(path.join(out, 'checkpoint-2'));
    const saved = loadPeftAdapter(out);
    for (const [name, m] of exact.modules)
      m.B.forEach((v, i) =>
        assert.ok(Math.abs(saved.modules.get(name)!.B[i]! - v) <= Math.abs(v) * 2 ** -8, `${name}.B[${i}]`),
      );
    const f16 = path.join(tmp, 'export-f16');
    const ex = qtune([
      'export',
      '--from',
      path.join(out, 'checkpoint-2'),
      '--model',
      tiny,
      '--format',
      'peft',
      '--out',
      f16,
      '--adapter-dtype',
      'f16',
    ]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.match(ex.stdout, /as peft \(f16\)/);
    assert.deepEqual(dtypes(path.join(f16, 'adapter_model.safetensors')), ['F16']);
    oneLineError(
      qtune([
        'export',
        '--from',
        out,
        '--model',
        tiny,
        '--format',
        'gguf',
        '--out',
        path.join(tmp, 'x.gguf'),
        '--adapter-dtype',
        'q8_0',
      ]),
      /export: --adapter-dtype=q8_0 is not a type adapters are saved in \(use f32, f16, bf16\)/,
    );
    oneLineError(
      qtune([...tinyTrainArgs(tiny, path.join(tmp, 'never-3')), '--adapter_dtype', 'fp16']),
      /adapter_dtype: "fp16" is not allowed \(adapter_dtype must be one of f32, f16, bf16\)/,
    );
  });
});
