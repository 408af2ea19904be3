/**
 * `qtune bench`: the JSON's fields for one cheap run (behaviour, not timings) with a profile per
 * run, help, and bad flags.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { qtune } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-bench-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('qtune bench', () => {
  it('--padding runs max_length, longest and longest + group_by_length on data/style.jsonl', () => {
    const r = qtune([
      'bench',
      '--padding',
      '--json',
      '--context-length',
      '128',
      '--batch-size',
      '2',
      '--steps',
      '2',
      '--warmup',
      '1',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const rows = JSON.parse(r.stdout) as {
      mode: string;
      tokensPerS: number;
      inputTokensPerS: number;
      speedup: number;
      finalLoss: number;
    }[];
    assert.deepEqual(
      rows.map((x) => x.mode),
      ['max_length', 'longest', 'longest + group_by_length'],
    );
    assert.equal(rows[0]!.speedup, 1);
    for (const x of rows) {
      assert.ok(x.tokensPerS > 0 && x.inputTokensPerS >= x.tokensPerS, JSON.stringify(x));
      assert.ok(Number.isFinite(x.finalLoss), JSON.stringify(x));
    }
    // the same batches in the same order: dynamic padding trains exactly what max_length does
    const [fixed, dynamic] = [rows[0]!.finalLoss, rows[1]!.finalLoss];
    assert.ok(Math.abs(dynamic - fixed) <= 1e-3 * fixed, `final loss ${dynamic} vs ${fixed}`);
  });

  it('--json prints one object per run with the documented fields; --profile a trace per run', () => {
    const profiles = path.join(tmp, 'profiles');
    const r = qtune([
      'bench',
      '--json',
      '--shapes',
      'tiny',
      '--train-types',
      'lora,qlora',
      '--steps',
      '1',
      '--warmup',
      '0',
      '--no-baseline',
      '--quiet-wait',
      '0',
      '--rounds',
      '1',
      '--profile',
      '--profile-dir',
      profiles,
    ]);
    assert.equal(r.code, 0, r.stderr);
    for (const run of ['tiny-lora-fp32-round1', 'tiny-qlora-fp32-round1']) {
      assert.match(r.stderr, new RegExp(`profile of ${run}:`));
      const trace = JSON.parse(readFileSync(path.join(profiles, `profile-${run}.json`), 'utf8')) as {
        traceEvents: { ph: string }[];
      };
      assert.ok(trace.traceEvents.some((e) => e.ph === 'X'));
    }
    assert.match(r.stderr, /\| op label \| ggml op \|/);
    const rows = JSON.parse(r.stdout) as Record<string, unknown>[];
    assert.equal(rows.length, 2);
    for (const key of [
      'shape',
      'train_type',
      'quantization',
      'precision',
      'gradient_checkpointing',
      'gradient_checkpointing_default',
      'tokens_per_s',
      'tokens_per_s_median',
      'peak_rss_mb',
      'baseline_tokens_per_s',
      'baseline_peak_rss_mb',
      'ratio',
      'ratio_median',
      'cpu',
      'cpu_flags',
      'engine',
    ]) {
      for (const row of rows) assert.ok(key in row, `missing ${key}`);
    }
    const [lora, qlora] = rows as [Record<string, unknown>, Record<string, unknown>];
    assert.deepEqual([lora['shape'], lora['train_type'], lora['quantization']], ['tiny', 'lora', null]);
    assert.deepEqual([qlora['train_type'], qlora['quantization']], ['qlora', 'nf4']);
    assert.equal(lora['precision'], 'fp32');
    // the rows run as users get them: gradient checkpointing by default over a quantized base only
    assert.deepEqual(
      rows.map((x) => [x['gradient_checkpointing'], x['gradient_checkpointing_default']]),
      [
        [false, true],
        [true, true],
      ],
    );
    assert.ok((lora['tokens_per_s'] as number) > 0);
    assert.ok((lora['peak_rss_mb'] as number) > 0);
    assert.ok(Number.isFinite(lora['loss_first']));
    // without the baseline there is nothing to divide by
    assert.equal(lora['baseline_tokens_per_s'], null);
    assert.equal(lora['ratio'], null);
    assert.ok('rss_ratio' in qlora);
    assert.ok(!('rss_ratio' in lora));
  });

  it('--gradient-checkpointing off runs a QLoRA row without it, and says so', () => {
    const r = qtune([
      'bench',
      '--shapes',
      'tiny',
      '--train-types',
      'qlora',
      '--gradient-checkpointing',
      'off',
      '--steps',
      '1',
      '--warmup',
      '0',
      '--no-baseline',
      '--quiet-wait',
      '0',
      '--rounds',
      '1',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\| gradient checkpointing \|/);
    assert.match(r.stdout, /\| tiny \| qlora \| nf4 \| fp32 \| off \|/);
    assert.match(r.stdout, /target tiny qlora nf4 \(checkpointing off\)/);
  });

  it('--help lists the flags', () => {
    const r = qtune(['bench', '--help']);
    assert.equal(r.code, 0, r.stderr);
    for (const flag of [
      '--shapes',
      '--train-types',
      '--precision',
      '--gradient-checkpointing',
      '--rounds',
      '--profile',
      '--baseline',
      '--json',
    ])
      assert.ok(r.stdout.includes(flag), flag);
  });

  for (const args of [
    ['--shapes', 'huge'],
    ['--train-types', 'lora,magic'],
    ['--steps', '0'],
    ['--precision', 'fp8'],
    ['--gradient-checkpointing', 'sometimes'],
    ['--gradient-checkpointing', 'on,off'],
    ['--baseline', path.join(tmp, 'no-such-baseline')],
  ]) {
    it(`bad input (${args.join(' ')}) exits 2 with one line`, () => {
      const r = qtune(['bench', ...args]);
      assert.equal(r.code, 2, r.stdout + r.stderr);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0]!, /^qtune: error: /);
      assert.ok(lines[0]!.includes(args[1]!), lines[0]);
    });
  }
});
