/**
 * Which rank_pattern / alpha_pattern key wins, as PEFT decides it (peft.utils.other.get_pattern_key,
 * used by LoraModel._create_and_replace): the keys are tried in the dict's order, each as the regular
 * expression `(.*\.)?(KEY)$` anchored at the start of the module's full name (Python's re.match),
 * and the first that matches wins; with none, r / lora_alpha apply. So a key matches the whole name
 * or a suffix that starts right after a dot, `^` pins it to the whole name, and a later, more
 * specific key never overrides an earlier one. Every expected value below follows from that rule by
 * hand; the rank and the alpha are chosen independently.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { patternKey } from '../../src/peft/lora-weights.js';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import { LoraLayers } from '../../src/peft/lora.js';
import { ROOT } from '../helpers/cli.js';

const Q0 = 'model.layers.0.self_attn.q_proj';
const Q1 = 'model.layers.1.self_attn.q_proj';
const V0 = 'model.layers.0.self_attn.v_proj';
const UP1 = 'model.layers.1.mlp.up_proj';

describe("PEFT's rank/alpha pattern precedence", () => {
  it('a short name matches every module of that name', () => {
    assert.equal(patternKey(['q_proj'], Q0), 'q_proj');
    assert.equal(patternKey(['q_proj'], V0), undefined);
  });

  it('the first matching key in order wins, even over a more specific later one', () => {
    assert.equal(patternKey(['q_proj', `^${Q1}`], Q1), 'q_proj');
    assert.equal(patternKey([`^${Q1}`, 'q_proj'], Q1), `^${Q1}`);
    assert.equal(patternKey([`^${Q1}`, 'q_proj'], Q0), 'q_proj');
    assert.equal(patternKey(['self_attn.q_proj', 'layers.1.self_attn.q_proj'], Q1), 'self_attn.q_proj');
  });

  it('a key matches the whole name or a suffix starting after a dot, nothing shorter', () => {
    assert.equal(patternKey(['proj'], Q0), undefined); // "q_proj" ends with "proj" but not after a dot
    assert.equal(patternKey(['_proj'], Q0), undefined);
    assert.equal(patternKey(['self_attn.q_proj'], Q0), 'self_attn.q_proj');
    assert.equal(patternKey(['layers.0'], Q0), undefined); // must reach the end of the name
    assert.equal(patternKey([Q0], Q0), Q0);
  });

  it('^ pins a key to the whole name', () => {
    assert.equal(patternKey(['^q_proj'], Q0), undefined);
    assert.equal(patternKey([`^${Q0}`], Q0), `^${Q0}`);
    assert.equal(patternKey([`^${Q0}`], Q1), undefined);
  });

  it('keys are regular expressions', () => {
    assert.equal(patternKey(['(q|v)_proj'], V0), '(q|v)_proj');
    assert.equal(patternKey(['layers\\.1\\..*'], UP1), 'layers\\.1\\..*');
    assert.equal(patternKey(['layers\\.1\\..*'], Q0), undefined);
    assert.equal(patternKey(['mlp\\..*'], UP1), 'mlp\\..*');
    assert.equal(patternKey(['model.layers.*.mlp.*'], UP1), 'model.layers.*.mlp.*');
  });

  it('LoraLayers picks rank and alpha per module by that rule, independently', () => {
    const dir = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
    const { model } = loadWeights(dir, readConfig(dir), cpuBackend());
    const lora = LoraLayers.create(model, {
      rank: 8,
      alpha: 16,
      rankPattern: { q_proj: 4, [`^${Q1}`]: 2, 'mlp\\.(gate|up)_proj': 6 },
      alphaPattern: { [`^${Q1}`]: 64, 'layers\\.1\\..*': 8 },
    });
    try {
      const got = (m: string): [number, number] => {
        const info = lora.modules.get(m)!;
        return [info.rank, info.alpha];
      };
      assert.deepEqual(got(Q0), [4, 16]); // rank: q_proj; alpha: no key matches
      assert.deepEqual(got(Q1), [4, 64]); // rank: q_proj comes before ^…q_proj; alpha: ^…q_proj first
      assert.deepEqual(got(UP1), [6, 8]);
      assert.deepEqual(got('model.layers.0.mlp.down_proj'), [8, 16]);
      assert.deepEqual(got('model.layers.1.mlp.down_proj'), [8, 8]);
      assert.equal(lora.modules.get(Q1)!.scale, 64 / 4);
    } finally {
      lora.dispose();
    }
    assert.throws(
      () => LoraLayers.create(model, { rank: 8, alpha: 16, rankPattern: { 'q_proj(': 4 } }),
      (e: unknown) =>
        e instanceof ConfigError &&
        /^lora_rank_pattern: key "q_proj\(" is not a regular expression/.test(e.message),
    );
    model.dispose();
  });
});
