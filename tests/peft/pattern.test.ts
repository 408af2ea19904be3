/**
 * PEFT's rank_pattern / alpha_pattern keys are Python `re` expressions (get_pattern_key runs
 * `re.match(rf"(.*\.)?({key})$", module)`). Python-only syntax is translated so a key means in qtune
 * what it means in PEFT, and what cannot be translated is refused with one line naming the field and
 * the key. Every expected match below is what Python 3.11's `re` gives for that key and module
 * (checked by hand with python3; `(?i)` first in a key is applied as Python ≤ 3.10 applied it,
 * since 3.11 rejects it inside PEFT's expression).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { loadPeftAdapter, savePeftAdapter } from '../../src/peft/peft.js';
import { patternKey } from '../../src/peft/lora-weights.js';
import { peftPatternRegExp, translatePythonPattern } from '../../src/peft/pattern.js';
import { readConfig } from '../../src/models/load.js';
import { GQA_FIXTURE, randomAdapter } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-pattern-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const Q0 = 'model.layers.0.self_attn.q_proj';
const V0 = 'model.layers.0.self_attn.v_proj';
const V1 = 'model.layers.1.self_attn.v_proj';

describe('Python regex keys of rank_pattern / alpha_pattern', () => {
  it('Python-only syntax matches as in Python', () => {
    const cases: [string, string, boolean][] = [
      ['(?P<w>v)_proj', V0, true],
      ['(?P<w>v)_proj', Q0, false],
      ['(?P<d>\\d)\\.(?P=d)', 'blocks.1.1', true],
      ['(?P<d>\\d)\\.(?P=d)', 'blocks.1.2', false],
      ['q_proj\\Z', Q0, true],
      ['\\Aq_proj', Q0, false], // \A: the key must then start the whole name
      [`\\A${Q0.replace(/\./g, '\\.')}`, Q0, true],
      ['(?i)Q_PROJ', Q0, true],
      ['[]q]_proj', Q0, true], // ] first in a set is a literal in Python
      ['[]q]_proj', V0, false],
      ['[^]v]_proj', Q0, true],
      ['layers\\.\\d{,2}\\.self_attn\\.q_proj', Q0, true], // {,2} is {0,2}
      ['(?#a comment)v_proj', V0, true],
    ];
    for (const [key, module, match] of cases)
      assert.equal(patternKey([key], module) === key, match, `${key} on ${module}`);
    // taken as JavaScript, these keys would silently match nothing
    const asJavaScript = '(?P<w>v)_proj';
    assert.throws(() => new RegExp(asJavaScript));
    assert.equal(new RegExp('^(.*\\.)?(q_proj\\Z)$').test(Q0), false);
    assert.deepEqual(translatePythonPattern('(?P<w>v)_proj\\Z'), { source: '(?<w>v)_proj$', flags: '' });
  });

  it('a key with syntax JavaScript cannot run is refused, naming the field and the key', () => {
    for (const [key, why] of [
      ['(?x) v_proj', /verbose mode/],
      ['q_pr(?i)oj', /inline flags such as \(\?i\) must come first/],
      ['(?i:q)_proj', /scoped flags/],
      ['(?>q)_proj', /atomic groups/],
      ['q_proj*+', /possessive quantifiers/],
      ['(?<w>v)_proj', /Python names groups \(\?P<name>\.\.\.\)/],
      ['\\qproj', /\\q is not an escape Python knows/],
    ] as const) {
      assert.throws(
        () => peftPatternRegExp(key, 'lora_alpha_pattern'),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.message.startsWith(
            `lora_alpha_pattern: key ${JSON.stringify(key)} cannot be run as Python's re runs it: `,
          ) &&
          why.test(e.message) &&
          !e.message.includes('\n'),
        key,
      );
    }
  });

  it('an adapter_config.json key in Python syntax gives the modules PEFT would give', () => {
    const config = readConfig(GQA_FIXTURE);
    const dir = path.join(tmp, 'named-group');
    savePeftAdapter(dir, randomAdapter(config, 'lora', 3));
    const file = path.join(dir, 'adapter_config.json');
    const cfg = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    // every module rank 8 and alpha 16 except down_proj (rank 4) and v_proj (alpha 32): as PEFT saves
    assert.deepEqual(Object.values(cfg['alpha_pattern'] as object), Array(config.num_hidden_layers).fill(32));
    writeFileSync(file, JSON.stringify({ ...cfg, alpha_pattern: { '(?P<w>v)_proj\\Z': 32 } }));
    const back = loadPeftAdapter(dir);
    assert.equal(back.modules.get(V1)!.alpha, 32);
    assert.equal(back.modules.get(V0)!.alpha, 32);
    assert.equal(back.modules.get(Q0)!.alpha, 16);
    writeFileSync(file, JSON.stringify({ ...cfg, alpha_pattern: { '(?x) v_proj': 32 } }));
    assert.throws(
      () => loadPeftAdapter(dir),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.message.includes(`${file}: alpha_pattern: key "(?x) v_proj" cannot be run as Python's re runs it`),
    );
  });
});
