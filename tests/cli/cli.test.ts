/** The qtune command: engine info, backends, help, and exit code 2 with one line for bad input. */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { qtune } from '../helpers/cli.js';

describe('qtune CLI', () => {
  it('backends --json lists a cpu device with the documented fields', () => {
    const r = qtune(['backends', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const devices = JSON.parse(r.stdout) as Record<string, unknown>[];
    const cpu = devices.find((d) => d['kind'] === 'cpu');
    assert.ok(cpu);
    for (const key of ['name', 'kind', 'available', 'memory_total', 'memory_free', 'dtypes', 'quant_types']) {
      assert.ok(key in cpu, `missing ${key}`);
    }
    assert.equal(cpu['available'], true);
    assert.ok((cpu['quant_types'] as string[]).includes('q4_0'));
  });

  it('backends prints a table', () => {
    const r = qtune(['backends']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^device\s+kind\s+available/m);
    assert.match(r.stdout, /^CPU\s+cpu\s+yes/m);
  });

  it('engine info reports the loaded engine', () => {
    const r = qtune(['engine', 'info', '--json'], { QTUNE_ENGINE: 'prebuilt' });
    assert.equal(r.code, 0, r.stderr);
    const info = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(info['kind'], 'prebuilt');
    assert.equal(info['ggmlVersion'], '0.25.1');
    assert.equal(typeof info['cpuVariant'], 'string');
    assert.ok((info['threads'] as number) >= 1);
    const text = qtune(['engine', 'info'], { QTUNE_ENGINE: 'prebuilt' });
    assert.match(text.stdout, /^engine:\s+prebuilt \(ggml 0\.25\.1/m);
    assert.match(text.stdout, /^cpu backend:/m);
    assert.match(text.stdout, /^threads:\s+\d+/m);
  });

  it('QTUNE_THREADS sets the thread count', () => {
    const r = qtune(['engine', 'info', '--json'], { QTUNE_THREADS: '1' });
    assert.equal((JSON.parse(r.stdout) as { threads: number }).threads, 1);
  });

  for (const [args, env, mention] of [
    [['backends', '--bogus'], {}, '--bogus'],
    [['engine', 'frobnicate'], {}, 'frobnicate'],
    [['nosuchcommand'], {}, 'nosuchcommand'],
    [['engine', 'build', '--jobs', 'many'], {}, '--jobs=many'],
    [['engine', 'info'], { QTUNE_THREADS: 'lots' }, 'QTUNE_THREADS=lots'],
    [['engine', 'info'], { QTUNE_ENGINE: 'turbo' }, 'QTUNE_ENGINE=turbo'],
    [['demo', '--backend', 'tpu'], {}, '"tpu"'],
    [['demo', '--steps=-3'], {}, '--steps=-3'],
    [['init-tiny'], {}, 'init-tiny'],
    [['init-tiny', '/tmp/x', '--family', 'gpt2'], {}, '--family=gpt2'],
    [['init-tiny', '/tmp/x', '--tokenizer', 'bert'], {}, '--tokenizer=bert'],
    [['generate', '--prompt', 'hi'], {}, '--model'],
    [['generate', '--model', '/nonexistent/model', '--prompt', 'hi'], {}, '/nonexistent/model'],
    [['generate', '--model', 'x', '--prompt', 'hi', '--top-p', '2'], {}, '--top-p=2'],
  ] as [string[], Record<string, string>, string][]) {
    it(`bad input (${[...args, ...Object.entries(env).map(([k, v]) => `${k}=${v}`)].join(' ')}) exits 2 with one line`, () => {
      const r = qtune(args, env);
      assert.equal(r.code, 2, r.stdout + r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0]!, /^qtune: error: /);
      assert.ok(lines[0]!.includes(mention), lines[0]);
    });
  }

  it('demo fine-tunes the QLoRA MLP and reports the loss falling', () => {
    const r = qtune(['demo', '--backend', 'cpu', '--steps', '60']);
    assert.equal(r.code, 0, r.stderr);
    const m = /loss ([\d.]+) → ([\d.]+)/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.ok(Number(m[2]) < Number(m[1]) * 0.5, r.stdout);
    assert.match(r.stdout, /frozen base weight unchanged/);
  });

  it('init-tiny writes a model that generate loads and runs, plain and with --chat', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'qtune-cli-'));
    try {
      const init = qtune([
        'init-tiny',
        path.join(dir, 'm'),
        '--family',
        'qwen2',
        '--layers',
        '2',
        '--seed',
        '3',
      ]);
      assert.equal(init.code, 0, init.stderr);
      assert.match(init.stdout, /qwen2, hidden 256, 2 layers, 8 heads \(4 kv\), vocab 151665/);
      for (const chat of [[], ['--chat', '--system', 'Be brief.']]) {
        const gen = qtune([
          'generate',
          '--model',
          path.join(dir, 'm'),
          '--prompt',
          'Call me Ishmael.',
          '--max-new-tokens',
          '5',
          '--backend',
          'cpu',
          ...chat,
        ]);
        assert.equal(gen.code, 0, gen.stderr);
        assert.ok(gen.stdout.trim().length > 0, 'no text generated');
      }
      const corrupt = path.join(dir, 'm', 'model.safetensors');
      writeFileSync(corrupt, readFileSync(corrupt).subarray(0, 1000));
      const bad = qtune(['generate', '--model', path.join(dir, 'm'), '--prompt', 'x', '--backend', 'cpu']);
      assert.equal(bad.code, 2);
      assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
      assert.match(bad.stderr, /model\.safetensors/);
      const gguf = path.join(dir, 'broken.gguf');
      writeFileSync(gguf, Buffer.from('GGUF\x03\x00\x00\x00truncated', 'latin1'));
      const badGguf = qtune(['generate', '--model', gguf, '--prompt', 'x', '--backend', 'cpu']);
      assert.equal(badGguf.code, 2, badGguf.stderr);
      assert.equal(badGguf.stderr.trim().split('\n').length, 1, badGguf.stderr);
      assert.match(badGguf.stderr, /broken\.gguf: declares \d+ tensors/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('every command has --help listing its options', () => {
    for (const cmd of ['demo', 'generate', 'init-tiny', 'backends', 'engine']) {
      const r = qtune([cmd, '--help']);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /usage: qtune/);
      assert.match(r.stdout, /--help/);
    }
    const top = qtune(['--help']);
    assert.equal(top.code, 0);
    assert.match(top.stdout, /backends/);
    assert.match(top.stdout, /engine/);
  });
});
