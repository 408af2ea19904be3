/**
 * Llama-Pro expansion: `qtune expand` inserts copies of decoder blocks with o_proj and down_proj
 * zeroed, so the expanded model's logits equal the original's; the plan spreads blocks evenly; bad
 * input fails with one line and exit code 2.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import { Graph } from '../../src/tensor/index.js';
import { EXPANSION_FILE, planExpansion } from '../../src/peft/expand.js';
import { ROOT, qtune } from '../helpers/cli.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-expand-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function logits(dir: string): Float32Array {
  const { model } = loadWeights(dir, readConfig(dir), cpuBackend());
  const g = new Graph(model.backend);
  try {
    const ids = g.input([1, 16], 'i32');
    const out = g.output(g.noGrad(() => model.forward(g, ids)));
    g.compile();
    g.set(
      ids,
      Int32Array.from({ length: 16 }, (_, i) => (i * 37 + 11) % 256),
    );
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
    model.dispose();
  }
}

describe('Llama-Pro expansion', () => {
  it('spreads new blocks evenly, each after a group of original blocks', () => {
    assert.deepEqual(planExpansion(4, 2).newLayers, [2, 5]);
    assert.deepEqual(planExpansion(4, 2).sourceOf, [0, 1, 1, 2, 3, 3]);
    assert.deepEqual(planExpansion(32, 8).newLayers, [4, 9, 14, 19, 24, 29, 34, 39]);
    assert.deepEqual(planExpansion(3, 1).sourceOf, [0, 1, 2, 2]);
    assert.throws(() => planExpansion(2, 3), /blocks: 3 must be an integer from 1 to the model's 2 layers/);
  });

  it('qtune expand leaves the model output unchanged', () => {
    const out = path.join(tmp, 'pro');
    const r = qtune(['expand', '--model', FIXTURE, '--blocks', '2', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /expanded 2 → 4 blocks; new blocks 1, 3/);
    assert.equal(readConfig(out).num_hidden_layers, 4);
    const record = JSON.parse(readFileSync(path.join(out, EXPANSION_FILE), 'utf8')) as {
      new_layers: number[];
    };
    assert.deepEqual(record.new_layers, [1, 3]);
    const a = logits(FIXTURE);
    const b = logits(out);
    let worst = 0;
    for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    assert.equal(worst, 0, `logits changed by ${worst}`);
  });

  it('bad input: one line, exit code 2, nothing written', () => {
    const out = path.join(tmp, 'bad');
    for (const args of [
      ['--model', FIXTURE, '--blocks', '9', '--out', out],
      ['--model', FIXTURE, '--blocks', 'two', '--out', out],
      ['--model', path.join(tmp, 'missing'), '--blocks', '1', '--out', out],
      ['--model', FIXTURE, '--out', out],
    ]) {
      const r = qtune(['expand', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.ok(!existsSync(out));
    }
  });
});
