/**
 * Adapters from a run, as the commands that take `--adapter` read them: a checkpoint-N folder of a
 * LoRA run is an adapter to generate, chat, eval, merge and export (the same tensors as the PEFT
 * folder the run saved at the same step); a full fine-tune checkpoint is refused with one line that
 * names the model folder to pass instead.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
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
});
