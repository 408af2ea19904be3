/**
 * QTUNE_ENGINE_PACKAGES loads the prebuilt packages npm installed in another folder (`npm install
 * --prefix DIR`): how CI runs a subset of the suite on node-llama-cpp 3.21.1 beside the installed
 * 3.22.1 (scripts/test-release.sh). It implies the prebuilt engine; a folder holding none of the
 * packages, or QTUNE_ENGINE=native beside it, is one line.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { findPrebuiltPackages } from '../../src/engine/paths.js';
import { qtune } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-engine-packages-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function oneLine(stderr: string, pattern: RegExp): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, stderr);
  assert.match(lines[0]!, pattern);
}

describe('QTUNE_ENGINE_PACKAGES', () => {
  it('a folder without the packages is one line naming it', () => {
    const empty = path.join(tmp, 'empty');
    mkdirSync(empty);
    const r = qtune(['engine', 'info'], { QTUNE_ENGINE: '', QTUNE_ENGINE_PACKAGES: empty });
    assert.equal(r.code, 2, r.stdout + r.stderr);
    oneLine(r.stderr, new RegExp(`QTUNE_ENGINE_PACKAGES=${empty} holds none of @node-llama-cpp/`));
  });

  it('names prebuilt packages, so QTUNE_ENGINE=native beside it is refused', () => {
    const r = qtune(['engine', 'info'], {
      QTUNE_ENGINE: 'native',
      QTUNE_ENGINE_PACKAGES: path.join(tmp, 'x'),
    });
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /names prebuilt packages, but QTUNE_ENGINE=native/);
  });

  const cpu = findPrebuiltPackages().find((p) => p.gpu === null);
  it(
    'loads the packages of that folder, and nothing else',
    { skip: cpu === undefined ? 'no prebuilt CPU package is installed on this platform' : false },
    () => {
      const dir = path.join(tmp, 'packages');
      mkdirSync(path.join(dir, 'node_modules', '@node-llama-cpp'), { recursive: true });
      symlinkSync(path.dirname(path.dirname(cpu!.dir)), path.join(dir, 'node_modules', cpu!.name));
      const r = qtune(['engine', 'info', '--json'], { QTUNE_ENGINE: '', QTUNE_ENGINE_PACKAGES: dir });
      assert.equal(r.code, 0, r.stderr);
      const info = JSON.parse(r.stdout) as { kind: string; release: string; gpuBackends?: unknown };
      assert.equal(info.kind, 'prebuilt');
      assert.equal(info.release, `${cpu!.name}@${cpu!.version}`);
    },
  );
});
