/**
 * Records the tokenizer cannot take are refused by file and line before tokenizing: a record of more
 * than MAX_RECORD_CHARS characters (the tokenizer takes about 35 s on a 1 MiB word and throws
 * RangeError at about 200 MB), and, with the tokenizer paired to a model, a token without an
 * embedding row. Padding never uses such a token.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { MAX_RECORD_CHARS, loadDataset } from '../../src/data/dataset.js';
import { padId, padNotice } from '../../src/data/tokenize.js';
import { FormatError } from '../../src/errors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { scratchDir, tinyTokenizer } from './helpers.js';

const ok = '{"instruction": "Say hi.", "input": "", "output": "Hi."}';

describe('records the tokenizer cannot take', () => {
  it('a record of more than MAX_RECORD_CHARS characters is a FormatError naming file and line', async () => {
    const file = path.join(scratchDir('record-limits'), 'big.jsonl');
    const word = 'a'.repeat(MAX_RECORD_CHARS);
    writeFileSync(file, `${ok}\n${JSON.stringify({ instruction: 'x', input: '', output: word })}\n`);
    const t0 = performance.now();
    await assert.rejects(
      loadDataset({ path: file, format: 'alpaca', val_size: 0 }, tinyTokenizer('llama2'), 64),
      (e: unknown) =>
        e instanceof FormatError &&
        e.file === file &&
        e.message.includes(`line 2: the record holds ${MAX_RECORD_CHARS + 1} characters`),
    );
    assert.ok(performance.now() - t0 < 5000, 'refused before tokenizing');
  });

  it('paired with a model, a token without an embedding row is refused; padding falls back to EOS', async () => {
    const base = tinyTokenizer('llama2');
    const json = structuredClone(base.json) as { added_tokens: object[] };
    json.added_tokens.push({ id: 32000, content: '<pad>', special: true, normalized: false });
    const tok = new Tokenizer(json, { ...base.config, pad_token: '<pad>' });
    assert.equal(tok.padId, 32000);
    assert.equal(padId(tok), 32000); // not paired yet: nothing is known about the model
    assert.throws(() => tok.fitTo(31999, 'model'), /ids up to 31999, but the model's vocab_size is 31999/);
    tok.fitTo(32000, 'model');
    assert.deepEqual(tok.tokensWithoutRow, [{ token: '<pad>', id: 32000 }]);
    assert.equal(padId(tok), tok.eosIds[0]);
    assert.match(padNotice(tok) ?? '', /pad token "<pad>" \(id 32000\) has no row/);
    const file = path.join(scratchDir('record-limits'), 'pad.jsonl');
    writeFileSync(file, `${ok}\n${ok.replace('Hi.', 'Hi <pad>.')}\n`);
    const notes: string[] = [];
    await assert.rejects(
      loadDataset({ path: file, format: 'alpaca', val_size: 0 }, tok, 96, { notice: (m) => notes.push(m) }),
      (e: unknown) =>
        e instanceof FormatError && e.message.includes(`${file}: line 2: the text holds token "<pad>"`),
    );
    assert.equal(notes.length, 1);
    writeFileSync(file, `${ok}\n`);
    const data = await loadDataset({ path: file, format: 'alpaca', val_size: 0 }, tok, 96, {
      notice: () => undefined,
    });
    const eos = tok.eosIds[0]!;
    assert.ok(data.train.every((e) => e.ids.every((id) => id < 32000)));
    assert.equal(data.train[0]!.ids.at(-1), eos, 'padded with EOS');
  });
});
