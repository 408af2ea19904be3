/**
 * The benchmark's set-up, without running it: where the PyTorch baseline is found (a folder or the
 * script given, or shared/bench/baseline looked for upward from the checkout) and the CPU flags
 * summary every row carries.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuFlags } from '../../src/bench/train-spec.js';
import { defaultBaseline, resolveBaseline } from '../../src/bench/train.js';
import { ConfigError } from '../../src/errors.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-bench-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('the PyTorch baseline', () => {
  const folder = path.join(tmp, 'project', 'shared', 'bench', 'baseline');
  const script = path.join(folder, 'bench_lora.py');
  mkdirSync(folder, { recursive: true });
  writeFileSync(script, '# stand-in\n');
  const checkout = path.join(tmp, 'project', 'checkouts', 'wt-x', 'dist', 'src', 'bench');
  mkdirSync(checkout, { recursive: true });

  it('is found upward from any checkout location', () => {
    assert.equal(defaultBaseline(checkout), script);
    assert.equal(defaultBaseline(path.join(tmp, 'project')), script);
  });

  it('is null where no ancestor holds shared/bench/baseline/bench_lora.py', () => {
    const elsewhere = path.join(tmp, 'elsewhere', 'a');
    mkdirSync(elsewhere, { recursive: true });
    // the machine may hold one at / itself: only then is a result outside tmp right
    const found = defaultBaseline(elsewhere);
    assert.ok(found === null || !found.startsWith(tmp), String(found));
  });

  it('--baseline takes the folder or the script, and names a wrong path', () => {
    assert.equal(resolveBaseline(folder), script);
    assert.equal(resolveBaseline(script), script);
    assert.throws(
      () => resolveBaseline(path.join(tmp, 'project')),
      (e: unknown) => e instanceof ConfigError && /a folder without bench_lora\.py/.test(e.message),
    );
    assert.throws(() => resolveBaseline(path.join(tmp, 'missing.py')), /is not a file or folder/);
  });
});

describe('cpuFlags', () => {
  it('lists the kernel-deciding features ggml reports, in a fixed order', () => {
    assert.equal(
      cpuFlags({ AVX512_BF16: '1', AVX2: '1', SSE3: '1', AVX512: '1' }),
      'AVX2 AVX512 AVX512_BF16',
    );
    assert.equal(cpuFlags({ AVX2: '1', FMA: '1', F16C: '1' }), 'AVX2 FMA F16C');
    assert.equal(cpuFlags({}), 'none reported');
  });
});
