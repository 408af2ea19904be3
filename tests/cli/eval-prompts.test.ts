/**
 * `qtune train --eval_prompts` on the real CLI (tiny model, data/style.jsonl, alpaca prompts): the
 * prompts of a .txt file are generated at each evaluation and at the end, printed on stderr, written
 * to metrics.jsonl as { kind: 'sample', step, epoch, prompt, completion, time }, and to TensorBoard as
 * text summaries that the text plugin reads (decoded by tests/report/decode.ts from TensorBoard's
 * protos). A .jsonl file of prompts and messages is read; a bad one is one line and exit code 2.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readEvalPrompts } from '../../src/cli/eval-prompts.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { qtune, tinyTrainArgs } from '../helpers/cli.js';
import { decodeTextSummaries, readTfRecords } from '../report/decode.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-eval-prompts-'));
const tiny = path.join(tmp, 'tiny-model');
after(() => rmSync(tmp, { recursive: true, force: true }));
before(() => {
  createTinyModel(tiny);
});
const SHORT = ['--max_steps', '2', '--eval_steps', '1', '--save_steps', '0', '--max_samples', '16'];
const SHORT2 = ['--batch_size', '2', '--gradient_accumulation_steps', '1', '--context_length', '64'];

describe('qtune train --eval_prompts', () => {
  it('generates the prompts of a .txt file at each evaluation: stderr, metrics.jsonl, TensorBoard text', () => {
    const prompts = path.join(tmp, 'prompts.txt');
    writeFileSync(prompts, 'Write a haiku about the sea.\n\nName three colours.\n');
    const out = path.join(tmp, 'out-txt');
    const r = qtune([
      ...tinyTrainArgs(tiny, out),
      ...SHORT,
      ...SHORT2,
      ...['--eval_prompts', prompts, '--eval_max_new_tokens', '4', '--log_to', 'tensorboard'],
    ]);
    assert.equal(r.code, 0, r.stderr);
    const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const samples = rows.filter((x) => x['kind'] === 'sample');
    assert.deepEqual(
      samples.map((s) => [s['step'], s['prompt']]),
      [
        [1, 'Write a haiku about the sea.'],
        [1, 'Name three colours.'],
        [2, 'Write a haiku about the sea.'],
        [2, 'Name three colours.'],
      ],
    );
    for (const s of samples) {
      assert.deepEqual(Object.keys(s), ['kind', 'step', 'epoch', 'prompt', 'completion', 'time']);
      assert.equal(typeof s['completion'], 'string');
      assert.equal(typeof s['epoch'], 'number');
    }
    assert.match(r.stderr, /^sample step 1 {2}"Write a haiku about the sea\." -> ".*"$/m);
    // TensorBoard: one text summary per sample, under samples/K, a rank-0 DT_STRING tensor
    const runs = path.join(out, 'runs');
    const file = readdirSync(runs)[0]!;
    const texts = readTfRecords(readFileSync(path.join(runs, file))).flatMap((e) => decodeTextSummaries(e));
    assert.deepEqual(
      texts.map((t) => [t.tag, t.pluginName, t.dataClass, t.dtype, t.dims]),
      [0, 1, 0, 1].map((k) => [`samples/${k}`, 'text', 2, 7, 0]),
    );
    texts.forEach((t, i) => {
      const s = samples[i]!;
      assert.deepEqual(t.strings, [
        `**prompt:** ${String(s['prompt'])}\n\n**completion:** ${String(s['completion'])}`,
      ]);
    });
  });

  it('reads a .jsonl file of prompts and messages; a bad line is one clear error and exit code 2', () => {
    const good = path.join(tmp, 'prompts.jsonl');
    writeFileSync(good, '{"prompt": "Say hi."}\n{"messages": [{"role": "user", "content": "Say bye."}]}\n');
    assert.deepEqual(readEvalPrompts([good]), [
      'Say hi.',
      { messages: [{ role: 'user', content: 'Say bye.' }] },
    ]);
    assert.deepEqual(readEvalPrompts(['one prompt', 'another']), ['one prompt', 'another']);
    const bad = path.join(tmp, 'bad.jsonl');
    writeFileSync(bad, '{"prompt": "ok"}\n{"text": "no prompt here"}\n');
    const r = qtune([...tinyTrainArgs(tiny, path.join(tmp, 'out-bad')), ...SHORT, '--eval_prompts', bad]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /bad\.jsonl.*line 2: has no "prompt" text nor a "messages" list/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    const missing = qtune([
      ...tinyTrainArgs(tiny, path.join(tmp, 'out-missing')),
      ...SHORT,
      '--eval_prompts',
      path.join(tmp, 'nope.txt'),
    ]);
    assert.equal(missing.code, 2, missing.stderr);
    assert.match(missing.stderr, /eval_prompts: .*nope\.txt does not exist/);
  });
});
