/**
 * `qtune quickstart`, the first command a user runs, as they run it: the real binary in a child
 * process, shortened by its own flags (2 pretraining steps, 2 fine-tuning steps, 4 answer tokens),
 * with QTUNE_CACHE_DIR in this test's temporary folder so the user's cache is neither read nor
 * written.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { qtune } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-quickstart-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
// the prebuilt engine unless QTUNE_ENGINE says otherwise: an empty cache would otherwise make the first
// computing command build the native engine into it (minutes), as npm test's runner also avoids
const env = {
  QTUNE_CACHE_DIR: path.join(tmp, 'cache'),
  QTUNE_ENGINE: process.env['QTUNE_ENGINE'] ?? 'prebuilt',
};
const SHORT = ['--pretrain-steps', '2', '--finetune-steps', '2', '--answer-tokens', '4'];

describe('qtune quickstart', () => {
  it('--help documents the flags that shorten it', () => {
    const r = qtune(['quickstart', '--help']);
    assert.equal(r.code, 0, r.stderr);
    for (const flag of ['--pretrain-steps', '--finetune-steps', '--answer-tokens', '--out'])
      assert.match(r.stdout, new RegExp(`${flag} VALUE .*\\(default: `), flag);
    assert.match(r.stdout, /QTUNE_CACHE_DIR/);
  });

  it('pretrains a base into the cache it is given, fine-tunes, and prints base and tuned answers', () => {
    const out = path.join(tmp, 'out');
    const r = qtune(['quickstart', '--out', out, ...SHORT], env, 300_000);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const base = path.join(tmp, 'cache', 'quickstart', 'moby-base-v1-2-steps');
    assert.ok(r.stdout.includes(`2 steps) — once, then cached in ${base}`), r.stdout);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json'])
      assert.ok(existsSync(path.join(base, f)), f);
    // linked where examples/quickstart.yaml names it (out/quickstart → out/quickstart-base)
    assert.equal(realpathSync(`${out}-base`), realpathSync(base));
    for (const prompt of ['What is a harpoon?', 'What is a mast?', 'Why do whales sing?'])
      assert.match(
        r.stdout,
        new RegExp(`prompt: ${prompt.replace('?', '\\?')}\\n  base:  \\S.*\\n  tuned: \\S`),
        prompt,
      );
    for (const f of ['adapter_model.safetensors', 'adapter_config.json', 'adapter.gguf', 'loss.png'])
      assert.ok(existsSync(path.join(out, f)), `${f} written`);
    const records = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; step: number });
    assert.deepEqual(
      records.filter((x) => x.kind === 'step').map((x) => x.step),
      [1, 2],
    );
    assert.match(r.stdout, new RegExp(`done in \\d+ s; adapter, metrics.jsonl and loss.png are in ${out}`));
  });

  it('refuses a step count that is not a positive integer, in one line, exit code 2', () => {
    const r = qtune(['quickstart', '--out', path.join(tmp, 'bad'), '--finetune-steps', '0'], env);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /--finetune-steps=0 is not a positive integer/);
    assert.ok(!existsSync(path.join(tmp, 'bad')), 'nothing written');
  });
});
