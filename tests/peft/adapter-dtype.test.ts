/**
 * `adapter_dtype`: a PEFT folder and a llama.cpp LoRA GGUF written in f16 or bf16 hold their tensors
 * in that type (the safetensors header's dtype, the GGUF tensor type), and every value read back is
 * the f32 one rounded to nearest: within half a unit in the last place, 2^-11 of the value for f16
 * (10 mantissa bits; 2^-25 absolute below f16's normal range) and 2^-8 for bf16 (7 bits). An f32
 * file gives the values back exactly; a type adapters are not saved in is refused by name.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.js';
import { readGguf } from '../../src/io/gguf.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { readConfig } from '../../src/models/load.js';
import { loadGgufLoraAdapter, saveGgufLoraAdapter } from '../../src/peft/gguf-lora.js';
import type { AdapterDType, LoraAdapterData } from '../../src/peft/lora-weights.js';
import { loadPeftAdapter, savePeftAdapter } from '../../src/peft/peft.js';
import { GQA_FIXTURE, randomAdapter } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-adapter-dtype-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const config = readConfig(GQA_FIXTURE);

/** Half a unit in the last place of `x` in `dtype` (what round-to-nearest may move it by). */
function halfUlp(x: number, dtype: AdapterDType): number {
  if (dtype === 'f32') return 0;
  return dtype === 'f16' ? Math.max(Math.abs(x) * 2 ** -11, 2 ** -25) : Math.abs(x) * 2 ** -8;
}

/** Every tensor of `got` is `want`'s rounded to `dtype`; some value actually moved (not f32). */
function assertRounded(want: LoraAdapterData, got: LoraAdapterData, dtype: AdapterDType): void {
  let moved = 0;
  for (const [name, m] of want.modules) {
    const g = got.modules.get(name)!;
    const pairs: [Float32Array, Float32Array, string][] = [
      [m.A, g.A, 'A'],
      [m.B, g.B, 'B'],
      ...(m.magnitude === undefined
        ? []
        : [[m.magnitude, g.magnitude!, 'magnitude'] as [Float32Array, Float32Array, string]]),
    ];
    for (const [w, r, what] of pairs) {
      assert.equal(r.length, w.length);
      for (let i = 0; i < w.length; i++) {
        const err = Math.abs(r[i]! - w[i]!);
        if (err > halfUlp(w[i]!, dtype) * (1 + 1e-6))
          assert.fail(`${name}.${what}[${i}]: ${r[i]} for ${w[i]} in ${dtype}`);
        if (err > 0) moved++;
      }
    }
  }
  if (dtype === 'f32') assert.equal(moved, 0);
  else assert.ok(moved > 0, `${dtype} rounded nothing`);
}

describe('adapter_dtype', () => {
  for (const variant of ['lora', 'dora'] as const)
    it(`a PEFT ${variant} folder in f32, f16 and bf16: the header's dtype, the values rounded`, () => {
      const data = randomAdapter(config, variant, 7);
      for (const dtype of ['f32', 'f16', 'bf16'] as const) {
        const dir = path.join(tmp, `${variant}-${dtype}`);
        savePeftAdapter(dir, data, { dtype });
        const st = SafetensorsFile.open(path.join(dir, 'adapter_model.safetensors'));
        const types = new Set(st.names().map((n) => st.entry(n).dtype));
        st.close();
        assert.deepEqual([...types], [dtype.toUpperCase()]);
        assertRounded(data, loadPeftAdapter(dir), dtype);
      }
    });

  it('a llama.cpp LoRA GGUF in f32, f16 and bf16: the tensor type, the values rounded', () => {
    const data = randomAdapter(config, 'rslora', 9); // rsLoRA: a scale folded into B before rounding
    const f32File = path.join(tmp, 'f32.gguf');
    saveGgufLoraAdapter(f32File, data, config);
    const exact = loadGgufLoraAdapter(f32File, config);
    for (const dtype of ['f16', 'bf16'] as const) {
      const file = path.join(tmp, `${dtype}.gguf`);
      saveGgufLoraAdapter(file, data, config, { dtype });
      const types = new Set([...readGguf(file).tensors.values()].map((t) => t.dtype));
      assert.deepEqual([...types], [dtype]);
      assertRounded(exact, loadGgufLoraAdapter(file, config), dtype);
    }
  });

  it('a type adapters are not saved in is refused by name', () => {
    const data = randomAdapter(config, 'lora', 1);
    for (const save of [
      () => savePeftAdapter(path.join(tmp, 'q8'), data, { dtype: 'q8_0' as AdapterDType }),
      () => saveGgufLoraAdapter(path.join(tmp, 'q8.gguf'), data, config, { dtype: 'q8_0' as AdapterDType }),
    ])
      assert.throws(
        save,
        (e: unknown) =>
          e instanceof ConfigError &&
          e.message === 'adapter_dtype: "q8_0" is not a type adapters are saved in (use f32, f16, bf16)',
      );
  });
});
