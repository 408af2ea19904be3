/**
 * QTUNE_CPU_VARIANT loads a chosen prebuilt CPU variant: each variant in the package either loads
 * (and `qtune engine info` names it) or is refused in one line because this CPU lacks its
 * instructions; an unknown name is one line listing the variants. The default is one that loads.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { describe, it } from 'node:test';
import { findPrebuiltPackages } from '../../src/engine/paths.js';
import { qtune } from '../helpers/cli.js';

const cpuPackage = findPrebuiltPackages().find((p) => p.gpu === null);
const variants =
  cpuPackage === undefined
    ? []
    : readdirSync(cpuPackage.dir)
        .map((f) => /^(?:lib)?ggml-cpu-([a-z0-9_]+)\.(?:so|dylib|dll)$/.exec(f)?.[1])
        .filter((v): v is string => v !== undefined);
const skip =
  variants.length === 0 ? 'the prebuilt package has no CPU variants on this platform (one library)' : false;

function info(env: Record<string, string>): { code: number; variant: string | null; stderr: string } {
  const r = qtune(['engine', 'info', '--json'], { QTUNE_ENGINE: '', ...env });
  const variant = r.code === 0 ? ((JSON.parse(r.stdout) as { cpuVariant: string }).cpuVariant ?? null) : null;
  return { code: r.code, variant, stderr: r.stderr };
}

describe('QTUNE_CPU_VARIANT', { skip }, () => {
  it('loads each variant the CPU can run, and refuses the others in one line', () => {
    const loaded: string[] = [];
    for (const v of variants) {
      const r = info({ QTUNE_CPU_VARIANT: v });
      if (r.code === 0) {
        assert.equal(r.variant, v);
        loaded.push(v);
      } else {
        assert.equal(r.code, 2, r.stderr);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
        assert.match(r.stderr, new RegExp(`QTUNE_CPU_VARIANT=${v} needs CPU features this CPU lacks`));
      }
    }
    console.log(`# variants this CPU runs: ${loaded.join(', ')}`);
    // every x86-64 machine of this project has AVX2: the variant CI runs the numeric suites under
    if (process.arch === 'x64') assert.ok(loaded.includes('haswell'), loaded.join(', '));
    const auto = info({ QTUNE_ENGINE: 'prebuilt' }); // the variant ggml picks (a native build aside)
    assert.equal(auto.code, 0, auto.stderr);
    assert.ok(auto.variant !== null && loaded.includes(auto.variant), `default ${auto.variant}`);
  });

  it('an unknown variant is one line naming the ones there are', () => {
    const r = info({ QTUNE_CPU_VARIANT: 'pentium4' });
    assert.equal(r.code, 2);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /QTUNE_CPU_VARIANT=pentium4 is not a prebuilt CPU variant/);
    assert.ok(r.stderr.includes(variants[0]!), r.stderr);
  });

  it('names a prebuilt variant, so QTUNE_ENGINE=native beside it is refused', () => {
    const r = qtune(['engine', 'info', '--json'], { QTUNE_ENGINE: 'native', QTUNE_CPU_VARIANT: 'haswell' });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /QTUNE_CPU_VARIANT=haswell names a prebuilt CPU variant, but QTUNE_ENGINE=native/);
  });
});
