/**
 * `model:` as a path: a value that looks like a path (./x, ../x, /x, ~/x, x.gguf, or a/b where a/ is
 * a folder here) and does not exist is one line "model: path X does not exist", exit code 2, never a
 * Hub download ("cannot reach …/models/out/quickstart-base" was what the README's step 2 gave).
 * Relative paths are from the current folder; one that exists beside the config file instead is
 * named in the hint.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { isHubId, looksLikePath } from '../../src/io/hub.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { BIN, ROOT } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-model-path-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** `qtune train` in `cwd`, the Hub pointed at a closed port so that a download attempt shows. */
function train(cwd: string, args: string[]): { code: number; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, 'train', ...args], {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, HF_ENDPOINT: 'http://127.0.0.1:9', QTUNE_ENGINE: 'prebuilt' },
    timeout: 60_000,
  });
  return { code: r.status ?? -1, stderr: r.stderr };
}

function oneLine(r: { code: number; stderr: string }): string {
  assert.equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  return lines[0]!;
}

describe('model: a path or a Hub id', () => {
  it('tells paths from Hub ids', () => {
    mkdirSync(path.join(tmp, 'out'));
    const here = process.cwd();
    process.chdir(tmp);
    try {
      for (const p of [
        './x',
        '../x',
        '/x/y',
        '~/models/x',
        'x.gguf',
        'org/x.safetensors',
        'out/base',
        'C:\\m',
      ])
        assert.ok(looksLikePath(p), p);
      for (const id of ['meta-llama/Llama-3.2-1B', 'Qwen/Qwen2.5-0.5B', 'tiny-model'])
        assert.ok(!looksLikePath(id), id);
      assert.ok(isHubId('meta-llama/Llama-3.2-1B'));
      assert.ok(!isHubId('out/base'), 'out/ is a folder here: out/base is a path');
    } finally {
      process.chdir(here);
    }
  });

  it('the quickstart config before `qtune quickstart` made its base: one line naming the path', () => {
    const dir = path.join(tmp, 'clone');
    mkdirSync(path.join(dir, 'out'), { recursive: true });
    const config = path.join(ROOT, 'examples', 'quickstart.yaml');
    for (const model of [[], ['--model', 'out/quickstart-base']]) {
      const line = oneLine(train(dir, ['--config', config, ...model]));
      assert.match(
        line,
        /^qtune: error: model: path (\.\/)?out\/quickstart-base does not exist \(relative paths are from the current folder, /,
      );
      assert.doesNotMatch(line, /cannot reach|huggingface|127\.0\.0\.1/);
    }
  });

  it("names the config file's folder when the path exists relative to it", () => {
    const cfg = path.join(tmp, 'cfg');
    createTinyModel(path.join(cfg, 'tiny'), {
      hiddenSize: 32,
      intermediateSize: 64,
      layers: 1,
      heads: 2,
      kvHeads: 1,
    });
    writeFileSync(path.join(cfg, 'run.yaml'), 'model: ./tiny\ndataset_format: dummy\nmax_steps: 1\n');
    const line = oneLine(train(tmp, ['--config', 'cfg/run.yaml']));
    assert.equal(
      line,
      `qtune: error: model: path ./tiny does not exist (relative paths are from the current folder, not the config file's: use ${path.join('cfg', 'tiny')})`,
    );
  });
});
