/**
 * Token ids outside the model's vocabulary reach no native code: every public entry point is run in
 * a child process (a ggml abort would end it by SIGABRT, exit 134) and must end in one `qtune: error:`
 * line (exit 2), or, for the padding of `qtune train` and `qtune eval`, fall back to EOS with a
 * notice. The models are tiny Llama folders with the real Llama-2 tokenizer (32000 ids); the padded
 * one adds `<pad>` at id 32000, as many Llama-2 fine-tunes ship it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createTinyModel } from '../../src/models/tiny.js';
import { BIN, tinyTrainArgs } from '../helpers/cli.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'token-range-child.js');

interface Ran {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

function node(args: string[]): Ran {
  const r = spawnSync(process.execPath, args, {
    encoding: 'utf8',
    env: { ...process.env, QTUNE_THREADS: '1' },
    timeout: 120_000,
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const qtune = (args: string[]): Ran => node([BIN, ...args]);

/** No abort, exit 2, and exactly one line on stderr: `qtune: error: ...` holding every `part`. */
function oneErrorLine(r: Ran, parts: string[]): void {
  assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr}`);
  assert.equal(r.status, 2, `exit ${r.status}: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  const errors = lines.filter((l) => l.startsWith('qtune: error: '));
  assert.equal(errors.length, 1, r.stderr);
  assert.ok(!/^\s+at /m.test(r.stderr), `a stack trace: ${r.stderr}`);
  for (const p of parts) assert.ok(errors[0]!.includes(p), `"${errors[0]}" lacks "${p}"`);
}

describe('out-of-range token ids: a typed error at every entry point, never an abort', () => {
  let tmp: string;
  let plain: string;
  let padded: string;
  let narrow: string;
  let padText: string;
  let short: string;

  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-token-range-'));
    plain = path.join(tmp, 'plain');
    createTinyModel(plain, { hiddenSize: 32, intermediateSize: 64, layers: 1, heads: 2, kvHeads: 1 });
    // <pad> added at id 32000 beside vocab_size 32000
    padded = path.join(tmp, 'padded');
    cpSync(plain, padded, { recursive: true });
    const tj = JSON.parse(readFileSync(path.join(padded, 'tokenizer.json'), 'utf8')) as {
      added_tokens: object[];
    };
    tj.added_tokens.push({
      id: 32000,
      content: '<pad>',
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    });
    writeFileSync(path.join(padded, 'tokenizer.json'), JSON.stringify(tj));
    const tc = JSON.parse(readFileSync(path.join(padded, 'tokenizer_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    tc['pad_token'] = '<pad>';
    writeFileSync(path.join(padded, 'tokenizer_config.json'), JSON.stringify(tc));
    // a config whose vocab_size is smaller than the tokenizer's own vocabulary
    narrow = path.join(tmp, 'narrow');
    cpSync(plain, narrow, { recursive: true });
    const cj = JSON.parse(readFileSync(path.join(narrow, 'config.json'), 'utf8')) as Record<string, unknown>;
    cj['vocab_size'] = 31000;
    writeFileSync(path.join(narrow, 'config.json'), JSON.stringify(cj));
    short = path.join(tmp, 'short.jsonl');
    writeFileSync(
      short,
      ['Say hi.', 'Count to three.', 'Name a colour.', 'Say bye.']
        .map((q, i) => JSON.stringify({ instruction: q, input: '', output: `Answer ${i}.` }))
        .join('\n') + '\n',
    );
    padText = path.join(tmp, 'pad-text.jsonl');
    writeFileSync(
      padText,
      '{"instruction": "Say hi.", "input": "", "output": "Hi."}\n' +
        '{"instruction": "Repeat <pad> twice.", "input": "", "output": "<pad> <pad>"}\n',
    );
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('API: model.forward with id 40000 of 32000 is a TokenRangeError naming the id and position', () => {
    const r = node([CHILD, 'forward', plain, '1,40000,3']);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.status, 3, `${r.stdout}${r.stderr}`);
    assert.match(
      r.stdout,
      /^TokenRangeError: .*token id 40000 at position 1 is outside the vocabulary of 32000/,
    );
    const neg = node([CHILD, 'forward', plain, '5,7,-1']);
    assert.equal(neg.status, 3, `${neg.stdout}${neg.stderr}`);
    assert.match(neg.stdout, /token id -1 at position 2 /);
    // in range, the same call runs
    assert.equal(node([CHILD, 'forward', plain, '1,31999,3']).stdout.trim(), 'ran');
  });

  it('API: Trainer.create with an example holding id 32000 is refused before anything is allocated', () => {
    const r = node([CHILD, 'trainer', plain, '1,5,32000,7']);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.status, 3, `${r.stdout}${r.stderr}`);
    assert.match(
      r.stdout,
      /^TokenRangeError: dataset: train example 0: token id 32000 at position 2 is outside the vocabulary of 32000/,
    );
  });

  it('qtune train with <pad> at id 32000: pads with EOS after a one-line notice', () => {
    const out = path.join(tmp, 'run-padded');
    const r = qtune([
      ...tinyTrainArgs(padded, out),
      ...[
        '--dataset',
        short,
        '--val_size',
        '0',
        '--max_steps',
        '1',
        '--context_length',
        '96',
        '--batch_size',
        '1',
      ],
      ...['--gradient_accumulation_steps', '1', '--eval_steps', '0', '--save_steps', '0'],
    ]);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.status, 0, r.stderr);
    assert.match(
      r.stderr,
      /^qtune: notice: pad token "<pad>" \(id 32000\) has no row in the model's 32000 embeddings; padding with eos "<\/s>" \(id 2\)/m,
    );
  });

  it('qtune train on text holding <pad>: the record is named by file and line', () => {
    const r = qtune([
      ...tinyTrainArgs(padded, path.join(tmp, 'run-pad-text')),
      ...['--dataset', padText, '--max_steps', '1', '--context_length', '96', '--val_size', '0'],
    ]);
    oneErrorLine(r, [`${padText}: line 2`, '"<pad>" (id 32000)', '32000 embeddings']);
  });

  it('qtune eval: padding falls back to EOS; text holding <pad> is one error line', () => {
    const ok = qtune(['eval', ...['--model', padded, '--dataset', short, '--context-length', '96']]);
    assert.equal(ok.signal, null, ok.stderr);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /perplexity/);
    const bad = qtune(['eval', '--model', padded, '--dataset', padText, '--context-length', '96']);
    oneErrorLine(bad, [`${padText}: line 2`, 'id 32000']);
  });

  it('qtune generate and qtune chat with <pad> in the prompt', () => {
    const prompt = ['--prompt', 'Hello <pad> world', '--max-new-tokens', '2'];
    oneErrorLine(qtune(['generate', '--model', padded, ...prompt]), ['token id 32000', '"<pad>"']);
    oneErrorLine(qtune(['generate', '--model', padded, '--chat', ...prompt]), ['token id 32000']);
    oneErrorLine(qtune(['chat', '--model', padded, ...prompt]), ['token id 32000']);
  });

  it('a tokenizer whose own vocabulary exceeds vocab_size is refused at load', () => {
    const r = qtune(['generate', '--model', narrow, '--prompt', 'Hello', '--max-new-tokens', '1']);
    oneErrorLine(r, ['tokenizer.json', 'ids up to 31999', 'vocab_size is 31000', 'resize the embeddings']);
  });
});
