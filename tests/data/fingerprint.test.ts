/**
 * The training data's fingerprint (what checkpoints record to notice a resume on other data), over
 * data/style.jsonl tokenized by a real tokenizer: the same file and settings give the same
 * fingerprint whatever the seed's order or the padding; one changed record, another format, another
 * tokenizer or packing give another.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { loadDataset, type DatasetConfig } from '../../src/data/dataset.js';
import { dataFingerprint, describeData } from '../../src/data/fingerprint.js';
import { ROOT } from '../helpers/cli.js';
import { scratchDir, tinyTokenizer } from './helpers.js';

const STYLE = path.join(ROOT, 'data', 'style.jsonl');

async function fingerprintOf(
  c: Partial<DatasetConfig>,
  tokenizer: 'llama2' | 'llama3' = 'llama2',
  context = 128,
) {
  const data = await loadDataset({ path: STYLE, format: 'alpaca', ...c }, tinyTokenizer(tokenizer), context);
  return dataFingerprint(data.train, data.source);
}

describe('dataFingerprint', () => {
  it('is sha256 over the examples, with their count and source', async () => {
    const fp = await fingerprintOf({});
    assert.match(fp.fingerprint, /^sha256:[0-9a-f]{64}$/);
    assert.equal(fp.source, STYLE);
    assert.ok(fp.examples > 100, String(fp.examples));
    assert.equal(
      describeData(fp),
      `${STYLE} (${fp.examples} examples, sha256 ${fp.fingerprint.slice(7, 19)})`,
    );
  });

  it('does not change with the order (seed) or the padding (context_length that cuts nothing)', async () => {
    const a = await fingerprintOf({ seed: 1 });
    assert.equal((await fingerprintOf({ seed: 2 })).fingerprint, a.fingerprint);
    assert.equal((await fingerprintOf({ seed: 1 }, 'llama2', 512)).fingerprint, a.fingerprint);
  });

  it('changes with one record, the format, the tokenizer, or packing', async () => {
    const base = (await fingerprintOf({})).fingerprint;
    const dir = scratchDir('fingerprint');
    const lines = readFileSync(STYLE, 'utf8').trim().split('\n');
    const edited = path.join(dir, 'style.jsonl');
    writeFileSync(edited, lines.map((l, i) => (i === 5 ? l.replace('Aye!', 'Arr!') : l)).join('\n'));
    // the same texts as prompt/completion records: no Alpaca template around them
    const asPc = path.join(dir, 'style-pc.jsonl');
    const pc = lines.map((l) => {
      const r = JSON.parse(l) as { instruction: string; input: string; output: string };
      return JSON.stringify({ prompt: `${r.instruction}${r.input}`, completion: r.output });
    });
    writeFileSync(asPc, pc.join('\n'));
    const others: [string, string][] = [
      ['one record', (await fingerprintOf({ path: edited })).fingerprint],
      ['the format', (await fingerprintOf({ path: asPc, format: 'prompt_completion' })).fingerprint],
      ['the tokenizer', (await fingerprintOf({}, 'llama3')).fingerprint],
      ['packing', (await fingerprintOf({ packing: true })).fingerprint],
    ];
    for (const [what, fp] of others) assert.notEqual(fp, base, what);
  });
});
