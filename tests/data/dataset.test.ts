/**
 * loadDataset end to end on real files and real tokenizers: BOS/EOS, truncation, padding, shuffle
 * determinism, validation splits, bad lines reported with their line numbers, config errors naming
 * the field, and the shipped data/style.jsonl.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadDataset, shuffled, type DatasetConfig } from '../../src/data/dataset.js';
import { readRecords } from '../../src/data/records.js';
import { ConfigError, FormatError, QtuneError } from '../../src/errors.js';
import type { Example } from '../../src/data/example.js';
import { ROOT } from '../helpers/cli.js';
import { scratchDir, tinyTokenizer } from './helpers.js';
import { styleJsonl } from './style-data.js';

const dir = scratchDir('dataset');
const STYLE = path.join(ROOT, 'data', 'style.jsonl');

function writeJsonl(name: string, records: unknown[]): string {
  const file = path.join(dir, name);
  writeFileSync(file, records.map((r) => JSON.stringify(r)).join('\n') + '\n');
  return file;
}

const pc = Array.from({ length: 20 }, (_, i) => ({
  prompt: `Question ${i}: how many masts has the ship?`,
  completion: ` It has ${i + 1} masts.`,
}));
const PC = writeJsonl('pc.jsonl', pc);

const key = (e: Example): string => Array.from(e.ids).join(',');

describe('loadDataset', () => {
  const tok = tinyTokenizer('llama2');
  const eos = tok.eosIds[0]!;

  it('each example: BOS, the text, EOS, padding; labels are the next tokens of the completion', async () => {
    const T = 40;
    const data = await loadDataset({ path: PC, format: 'prompt_completion', shuffle: false }, tok, T);
    assert.equal(data.train.length, 20);
    assert.equal(data.validation, undefined);
    for (const [i, e] of data.train.entries()) {
      assert.equal(e.ids.length, T);
      assert.equal(e.labels.length, T);
      const whole = tok.encode(pc[i]!.prompt + pc[i]!.completion);
      const promptLen = tok.encode(pc[i]!.prompt).length;
      const tokens = [...whole, eos];
      assert.equal(tokens[0], tok.bosId);
      const n = tokens.length - 1; // positions
      assert.deepEqual(Array.from(e.ids.slice(0, n)), tokens.slice(0, n));
      // labels[t] is the target for ids[t]: the next token, where it is a completion token
      const want = tokens.slice(1).map((t, k) => (k + 1 >= promptLen ? t : -100));
      assert.deepEqual(Array.from(e.labels.slice(0, n)), want);
      assert.equal(e.labels[n - 1], eos, 'the last label is EOS');
      assert.ok(
        e.ids.slice(n).every((x) => x === eos),
        'padded with the pad id (EOS: llama2 has none)',
      );
      assert.ok(
        e.labels.slice(n).every((x) => x === -100),
        'padding has no loss',
      );
      assert.equal(e.segments, undefined);
    }
  });

  it('truncates to context_length; a sample whose targets are all cut off is dropped', async () => {
    const long = writeJsonl('long.jsonl', [
      { text: 'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money.' },
      { prompt: 'x' },
    ]);
    const data = await loadDataset(
      { path: long, format: 'completion', shuffle: false, max_samples: 1 },
      tok,
      8,
    );
    const tokens = tok.encode(
      'Call me Ishmael. Some years ago, never mind how long precisely, having little or no money.',
    );
    assert.deepEqual(Array.from(data.train[0]!.ids), tokens.slice(0, 8));
    assert.deepEqual(Array.from(data.train[0]!.labels), tokens.slice(1, 9));
    assert.ok(!data.train[0]!.labels.includes(eos), 'EOS was cut off with the rest');
    // a prompt longer than the context leaves nothing to learn
    await assert.rejects(
      loadDataset({ path: PC, format: 'prompt_completion', max_samples: 3 }, tok, 4),
      (e: unknown) =>
        e instanceof ConfigError &&
        /no training record keeps a target token within context_length 4/.test(e.message),
    );
  });

  it('shuffles by seed: the same seed the same order, another seed another', async () => {
    const cfg: DatasetConfig = { path: PC, format: 'prompt_completion', seed: 7 };
    const a = (await loadDataset(cfg, tok, 32)).train.map(key);
    const b = (await loadDataset(cfg, tok, 32)).train.map(key);
    const c = (await loadDataset({ ...cfg, seed: 8 }, tok, 32)).train.map(key);
    const plain = (await loadDataset({ ...cfg, shuffle: false }, tok, 32)).train.map(key);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    assert.notDeepEqual(a, plain);
    assert.deepEqual([...a].sort(), [...plain].sort(), 'a permutation of the same examples');
    assert.deepEqual(shuffled([1, 2, 3, 4, 5], 1), shuffled([1, 2, 3, 4, 5], 1));
  });

  it('val_size as a fraction or a count; val_path; the splits never share a record', async () => {
    const frac = await loadDataset({ path: PC, format: 'prompt_completion', val_size: 0.25 }, tok, 32);
    assert.equal(frac.train.length, 15);
    assert.equal(frac.validation!.length, 5);
    const trainKeys = new Set(frac.train.map(key));
    assert.ok(frac.validation!.every((e) => !trainKeys.has(key(e))));
    const all = (await loadDataset({ path: PC, format: 'prompt_completion' }, tok, 32)).train.map(key);
    assert.deepEqual(
      [...frac.validation!.map(key), ...frac.train.map(key)],
      all,
      'the first shuffled records',
    );
    const count = await loadDataset({ path: PC, format: 'prompt_completion', val_size: 3 }, tok, 32);
    assert.equal(count.validation!.length, 3);
    const sep = await loadDataset(
      { path: PC, format: 'prompt_completion', val_path: writeJsonl('val.jsonl', pc.slice(0, 2)) },
      tok,
      32,
    );
    assert.equal(sep.train.length, 20);
    assert.equal(sep.validation!.length, 2);
    await assert.rejects(
      loadDataset({ path: PC, format: 'prompt_completion', val_size: 20 }, tok, 32),
      /dataset\.val_size: 20 leaves no training records of 20/,
    );
  });

  it('reports a bad line of a .jsonl file and a bad record of a .json file by line number', async () => {
    const badJson = path.join(dir, 'bad.jsonl');
    writeFileSync(badJson, '{"text": "fine"}\n\n{"text": "broken"\n');
    assert.throws(
      () => readRecords(badJson),
      (e: unknown) => e instanceof FormatError && e.message.startsWith(`${badJson}: line 3: not valid JSON`),
    );
    const notObject = path.join(dir, 'array-line.jsonl');
    writeFileSync(notObject, '{"text": "fine"}\n[1, 2]\n');
    assert.throws(
      () => readRecords(notObject),
      /array-line\.jsonl: line 2: a record must be a JSON object, got an array/,
    );
    const missing = writeJsonl('missing.jsonl', [{ instruction: 'a', output: 'b' }, { instruction: 'c' }]);
    await assert.rejects(
      loadDataset({ path: missing, format: 'alpaca', shuffle: false }, tok, 32),
      (e: unknown) =>
        e instanceof FormatError &&
        e.message.includes('missing.jsonl: line 2: the record has no "output" field') &&
        e.message.includes('format alpaca reads instruction, [input], output'),
    );
    // a .json array: the line where the bad element starts
    const arr = path.join(dir, 'records.json');
    writeFileSync(
      arr,
      '[\n  {"text": "one"},\n  {\n    "text": "two, over lines"\n  },\n  {"txt": "three"}\n]\n',
    );
    assert.deepEqual(
      readRecords(arr).map((r) => r.line),
      [2, 3, 6],
    );
    await assert.rejects(
      loadDataset({ path: arr, format: 'completion', shuffle: false }, tok, 16),
      /records\.json: line 6: the record has no "text" field/,
    );
    writeFileSync(arr, '{"text": "not an array"}');
    assert.throws(() => readRecords(arr), /must be an array of records, got object/);
    await assert.rejects(
      loadDataset({ path: path.join(dir, 'nope.jsonl'), format: 'completion' }, tok, 16),
      (e: unknown) =>
        e instanceof QtuneError && e.code === 'NOT_FOUND' && e.message.includes('nope.jsonl does not exist'),
    );
  });

  it('invalid UTF-8 is refused with its line; a file of wrong-format records names line 1, the first', async () => {
    const latin1 = path.join(dir, 'latin1.jsonl');
    // line 3 holds "café" saved as Latin-1: the byte 0xE9 alone is not UTF-8
    writeFileSync(
      latin1,
      Buffer.concat([
        Buffer.from('{"text": "one"}\n{"text": "two"}\n{"text": "caf'),
        Buffer.from([0xe9]),
        Buffer.from('"}\n{"text": "four"}\n'),
      ]),
    );
    assert.throws(
      () => readRecords(latin1),
      (e: unknown) =>
        e instanceof FormatError && e.message.startsWith(`${latin1}: line 3: not valid UTF-8 text`),
    );
    await assert.rejects(
      loadDataset({ path: latin1, format: 'completion' }, tok, 16),
      /latin1\.jsonl: line 3: not valid UTF-8/,
    );
    // every record is prompt/completion, read as alpaca: shuffled or not, the error names line 1
    for (const shuffle of [true, false])
      await assert.rejects(
        loadDataset({ path: PC, format: 'alpaca', shuffle }, tok, 32),
        (e: unknown) => e instanceof FormatError && e.message.includes('pc.jsonl: line 1: the record has no'),
      );
  });

  it('config errors name the field, the value and what is allowed', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [
        { path: PC, format: 'sharegpt' },
        /dataset\.format: "sharegpt" is not a dataset format \(use one of alpaca, chat, completion, prompt_completion, guanaco, sql, orca_math, dummy\)/,
      ],
      [{ format: 'alpaca' }, /dataset\.path: undefined is not a data file or Hub dataset id/],
      [
        { path: PC, format: 'alpaca', val_size: 1.5 },
        /dataset\.val_size: 1\.5 must be 0 \(no split\), a fraction in \(0, 1\) or a whole count/,
      ],
      [
        { path: PC, format: 'alpaca', val_size: 0.1, val_path: PC },
        /dataset\.val_size: 0\.1 and val_path both give validation data/,
      ],
      [{ path: PC, format: 'alpaca', packing: 'yes' }, /dataset\.packing: "yes" must be true or false/],
      [{ path: PC, format: 'alpaca', max_samples: 0 }, /dataset\.max_samples: 0 must be a whole number/],
      [
        { path: PC, format: 'alpaca', shufle: true },
        /dataset\.shufle: true is not a dataset setting \(use path, format/,
      ],
    ];
    for (const [cfg, re] of cases)
      await assert.rejects(
        loadDataset(cfg as unknown as DatasetConfig, tok, 16),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(cfg),
      );
  });

  it('dummy needs no file and is the same for the same seed', async () => {
    const a = await loadDataset({ format: 'dummy', max_samples: 10, val_size: 2 }, tok, 16);
    const b = await loadDataset({ format: 'dummy', max_samples: 10, val_size: 2 }, tok, 16);
    assert.equal(a.train.length, 8);
    assert.deepEqual(a, b);
  });

  it('data/style.jsonl: alpaca records, every answer one line "Aye! … — the captain"', async () => {
    assert.equal(
      readFileSync(STYLE, 'utf8'),
      styleJsonl(),
      'the file is what tests/data/style-data.ts writes',
    );
    const records = readRecords(STYLE);
    assert.ok(records.length >= 100 && records.length <= 200, `${records.length} records`);
    for (const r of records) {
      const out = r.value['output'] as string;
      assert.match(out, /^Aye! [^\n]+ — the captain$/);
    }
    for (const name of ['llama2', 'llama3', 'qwen2_5'] as const) {
      const data = await loadDataset(
        { path: STYLE, format: 'alpaca', val_size: 16 },
        tinyTokenizer(name),
        128,
      );
      assert.equal(data.train.length, records.length - 16);
      assert.ok(
        data.train.every((e) => e.labels.includes(tinyTokenizer(name).eosIds[0]!)),
        'nothing truncated',
      );
    }
  });
});
