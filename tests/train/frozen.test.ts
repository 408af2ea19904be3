/**
 * The frozen base's matmul choices (src/train/frozen.ts, src/train/kernel-choice.ts), on the parity
 * fixture's Llama (untied head, 2 blocks of 7 linear layers):
 *
 * - `frozen_weight_copies`: `auto` makes Wᵀ copies for a float base (LoRA) and none for a quantized
 *   one (QLoRA; its weights get a repacked forward copy where the CPU repacks them), `on` makes Wᵀ
 *   copies for QLoRA too, `off` none; Wᵀ copies change where Wᵀ lives, not the step's numbers
 *   (losses bit for bit; the precision test checks every mode the same way).
 * - `quant_compute_dtype`: a quantized base's input-gradient products take bf16 × f32 with `bf16` and
 *   f32 × f32 with `f32`; the loss of the step after a bf16 step stays within bf16's unit roundoff
 *   (2⁻⁸, relative) of the f32 one, and differs from it.
 * - `auto` measures the device once and caches the speeds (QTUNE_CACHE_DIR); the decision is bf16
 *   only when measured at least 1.15x f32.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { llamaWeights } from '../../src/models/llama.js';
import { readConfig } from '../../src/models/load.js';
import { checkFrozenCopies, repackedCopy, type FrozenCopies } from '../../src/train/frozen.js';
import {
  checkComputeDType,
  chooseGradType,
  decideGradType,
  type ComputeDTypeChoice,
} from '../../src/train/kernel-choice.js';
import { Trainer } from '../../src/train/trainer.js';
import { ROOT } from '../helpers/cli.js';
import { byteData, prepareFolder } from '../helpers/finetune.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
const DATA = byteData(16, 4, 1);
const CONFIG = readConfig(FIXTURE);
const LINEAR = llamaWeights(CONFIG).filter((w) => w.role === 'linear' || w.role === 'lm_head');
const BLOCK_LINEAR = LINEAR.filter((w) => w.role === 'linear').map((w) => w.name);

interface Run {
  losses: number[];
  copies: number;
  reason: string | null;
  /** Source types of the input-gradient matmuls of the blocks' (quantized) weights. */
  dxTypes: string[][];
  lines: string[];
}

function run(trainType: 'lora' | 'qlora', copies: FrozenCopies, compute: ComputeDTypeChoice): Run {
  const t = new Trainer(prepareFolder(FIXTURE, trainType, cpuBackend()), DATA, {
    trainType,
    batchSize: 2,
    maxSteps: 2,
    seed: 5,
    frozenWeightCopies: copies,
    quantComputeDType: compute,
  });
  try {
    const nodes = t.graphNodes().accumulate;
    // a block weight's Wᵀ: the weight's `.T` copy, or casts, copies and views of the weight
    const PASS = new Set(['CPY', 'CONT', 'TRANSPOSE', 'RESHAPE', 'VIEW', 'PERMUTE']);
    const weightOf = (src: (typeof nodes)[number]['src'][number]): string | null => {
      for (let s = src; ;) {
        if (s.node === null) return s.name;
        const n = nodes[s.node]!;
        if (!PASS.has(n.op) || n.src[0] === undefined) return null;
        s = n.src[0];
      }
    };
    const dxTypes = nodes
      .filter((n) => n.op === 'MUL_MAT')
      .filter((n) => {
        const s = n.src[0]!;
        const w = weightOf(s);
        // the forward multiplies the weight itself; the input gradient its transposed copy
        if (s.node === null) return w !== null && w.endsWith('.T') && BLOCK_LINEAR.includes(w.slice(0, -2));
        return w !== null && BLOCK_LINEAR.includes(w);
      })
      .map((n) => n.src.map((s) => s.dtype));
    const losses = [t.step().loss, t.step().loss];
    const k = t.kernelChoices()!;
    return {
      losses,
      copies: k.frozenCopies.count,
      reason: k.frozenCopies.reason,
      dxTypes,
      lines: t.kernelChoiceLines(),
    };
  } finally {
    t.dispose();
  }
}

/** How many of the fixture's block weights the CPU repacks once quantized as QLoRA quantizes them. */
function repackable(): number {
  const prepared = prepareFolder(FIXTURE, 'qlora', cpuBackend());
  try {
    let n = 0;
    for (const name of BLOCK_LINEAR) {
      const copy = repackedCopy(prepared.model.weight(name));
      if (copy !== null) n++;
      copy?.store.dispose();
    }
    return n;
  } finally {
    prepared.dispose();
  }
}

describe('frozen weight copies', () => {
  it('auto: Wᵀ copies for a float base (LoRA), the same losses as without', () => {
    const auto = run('lora', 'auto', 'f32');
    const off = run('lora', 'off', 'f32');
    assert.equal(auto.copies, LINEAR.length, auto.reason ?? '');
    assert.match(auto.reason!, /^on: \d+ MB/);
    assert.equal(off.copies, 0);
    assert.deepEqual(auto.losses, off.losses);
    assert.ok(auto.lines.some((l) => l.startsWith('frozen weight copies: on')));
  });

  it('auto: none for a quantized base (QLoRA; the f32 head gets one); on: every weight', () => {
    const auto = run('qlora', 'auto', 'f32');
    // the quantized weights get a repacked forward copy where this CPU's engine repacks their type
    const repacked = repackable();
    assert.equal(auto.copies, 1 + repacked);
    assert.match(
      auto.reason!,
      new RegExp(
        `^on: \\d+ MB for 1 float weights \\(not for the 14 quantized ones\\)${repacked === 0 ? '' : `; ${repacked} quantized weights repacked for the forward \\(\\d+ MB\\)`}$`,
      ),
    );
    const on = run('qlora', 'on', 'f32');
    // the head stays f32 in QLoRA: 14 quantized block weights and the head
    assert.equal(on.copies, LINEAR.length);
    // an f32 Wᵀ of the dequantized weight is what the in-graph path computes: the same losses
    assert.deepEqual(on.losses, auto.losses);
  });

  it('rejects an unknown setting with the field and the choices', () => {
    assert.throws(() => checkFrozenCopies('maybe'), ConfigError);
    assert.throws(
      () => checkFrozenCopies('maybe'),
      /frozen_weight_copies: "maybe" is not one of auto, on, off/,
    );
    assert.throws(() => checkComputeDType('fp8'), /quant_compute_dtype: "fp8" is not one of auto, f32, bf16/);
  });
});

describe('quantized base: the input gradient in a compute type', () => {
  it('bf16: the dequantized Wᵀ in bf16, loss within bf16 roundoff of f32 and not equal', () => {
    const f32 = run('qlora', 'auto', 'f32');
    const bf16 = run('qlora', 'auto', 'bf16');
    // every block weight has an input gradient but block 0's q, k and v: their input comes from the
    // frozen embeddings, so autograd leaves it out
    assert.equal(f32.dxTypes.length, BLOCK_LINEAR.length - 3);
    for (const types of f32.dxTypes) assert.deepEqual(types, ['f32', 'f32']);
    assert.equal(bf16.dxTypes.length, BLOCK_LINEAR.length - 3);
    for (const types of bf16.dxTypes) assert.deepEqual(types, ['bf16', 'f32']);
    // the first step's loss is the forward's, before any gradient: the same
    assert.equal(bf16.losses[0], f32.losses[0]);
    const rel = Math.abs(bf16.losses[1]! - f32.losses[1]!) / f32.losses[1]!;
    console.log(
      `# qlora second-step loss: bf16 ${bf16.losses[1]} vs f32 ${f32.losses[1]}, relative ${rel.toExponential(2)}`,
    );
    assert.ok(rel <= 2 ** -8, `relative ${rel}`);
    assert.ok(rel > 0, 'the bf16 gradient changed nothing: it ran in f32');
    assert.ok(bf16.lines.includes('quant compute dtype: bf16 (set)'));
  });
});

describe('quant_compute_dtype auto: measured once, cached', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'qtune-kernels-'));
  const saved = { cache: process.env['QTUNE_CACHE_DIR'], pin: process.env['QTUNE_QUANT_COMPUTE_DTYPE'] };
  process.env['QTUNE_CACHE_DIR'] = dir;
  delete process.env['QTUNE_QUANT_COMPUTE_DTYPE']; // the test runner pins it; measured here
  after(() => {
    if (saved.cache === undefined) delete process.env['QTUNE_CACHE_DIR'];
    else process.env['QTUNE_CACHE_DIR'] = saved.cache;
    if (saved.pin === undefined) delete process.env['QTUNE_QUANT_COMPUTE_DTYPE'];
    else process.env['QTUNE_QUANT_COMPUTE_DTYPE'] = saved.pin;
    rmSync(dir, { recursive: true, force: true });
  });

  it('decides bf16 only when it is clearly faster', () => {
    assert.equal(decideGradType({ f32: 100, bf16: 300 }), 'bf16');
    assert.equal(decideGradType({ f32: 100, bf16: 114 }), 'f32');
    assert.equal(decideGradType({ f32: 100, bf16: 0 }), 'f32'); // cannot run bf16
  });

  it('measures, writes the cache, then reads it; a corrupt cache is measured again', () => {
    const backend = cpuBackend();
    const file = path.join(dir, 'kernel-choices.json');
    const first = chooseGradType(backend, 'auto');
    assert.equal(first.source, 'measured');
    assert.ok(first.speeds!.f32 > 0 && first.speeds!.bf16 > 0, JSON.stringify(first.speeds));
    assert.equal(first.type, decideGradType(first.speeds!));
    const cached = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    assert.deepEqual(Object.values(cached), [first.speeds]);
    const second = chooseGradType(backend, 'auto');
    assert.equal(second.source, 'cache');
    assert.deepEqual(second.speeds, first.speeds);
    // a setting is not measured
    assert.deepEqual(chooseGradType(backend, 'f32'), { type: 'f32', speeds: null, source: 'setting' });
    writeFileSync(file, '{ not json');
    assert.equal(chooseGradType(backend, 'auto').source, 'measured');
    // the variable stands in for auto, and is checked
    process.env['QTUNE_QUANT_COMPUTE_DTYPE'] = 'bf16';
    assert.deepEqual(chooseGradType(backend, 'auto'), { type: 'bf16', speeds: null, source: 'setting' });
    process.env['QTUNE_QUANT_COMPUTE_DTYPE'] = 'fp8';
    assert.throws(() => chooseGradType(backend, 'auto'), /quant_compute_dtype: "fp8"/);
    delete process.env['QTUNE_QUANT_COMPUTE_DTYPE'];
  });
});
