/**
 * PEFT adapter folders: save → load gives the same adapter, and the files are what PEFT writes and
 * reads. The key names and config fields asserted here come from huggingface/peft:
 * - src/peft/utils/save_and_load.py, get_peft_model_state_dict: the adapter name is removed
 *   (`lora_A.default.weight` → `lora_A.weight`), and for DoRA `lora_magnitude_vector.default.weight`
 *   loses its `.weight` (→ `lora_magnitude_vector`);
 * - src/peft/tuners/lora/dora.py, DoraLinearLayer.get_weight_norm: the magnitude is
 *   `torch.linalg.norm(W + s·B·A, dim=1)`, one value per output row (`[out]`);
 * - the state dict of PeftModelForCausalLM prefixes the base model's names with `base_model.model.`;
 * - adapter_config.json: LoraConfig's fields (PEFT 0.18.1 serialization).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, copyFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { loadPeftAdapter, savePeftAdapter } from '../../src/peft/peft.js';
import type { LoraAdapterData } from '../../src/peft/lora-weights.js';
import { loraScale } from '../../src/peft/lora-weights.js';
import { ConfigError, FormatError, QtuneError } from '../../src/errors.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { readConfig } from '../../src/models/load.js';
import { GQA_FIXTURE, randomAdapter, TARGETS } from './random-adapter.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-peft-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const config = readConfig(GQA_FIXTURE);

function assertSameAdapter(a: LoraAdapterData, b: LoraAdapterData): void {
  assert.equal(b.baseModel, a.baseModel);
  assert.equal(b.rsLora, a.rsLora);
  assert.equal(b.dora, a.dora);
  assert.equal(b.dropout, a.dropout);
  assert.deepEqual([...b.targetModules].sort(), [...a.targetModules].sort());
  assert.deepEqual([...b.modules.keys()].sort(), [...a.modules.keys()].sort());
  for (const [name, m] of a.modules) {
    const n = b.modules.get(name)!;
    assert.equal(n.rank, m.rank, name);
    assert.equal(n.alpha, m.alpha, name);
    assert.equal(n.inFeatures, m.inFeatures, name);
    assert.equal(n.outFeatures, m.outFeatures, name);
    assert.deepEqual(n.A, m.A, `${name} A`);
    assert.deepEqual(n.B, m.B, `${name} B`);
    assert.deepEqual(n.magnitude, m.magnitude, `${name} magnitude`);
  }
}

function expectThrow(fn: () => unknown, type: new (...a: never[]) => Error, ...parts: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof type, `expected ${type.name}, got ${String(e)}`);
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  });
}

describe('PEFT adapter folders', () => {
  it('round-trips a LoRA with per-module ranks and alphas, with PEFT key names and config fields', () => {
    const data = randomAdapter(config, 'lora', 1);
    const dir = path.join(tmp, 'lora');
    savePeftAdapter(dir, data);
    assertSameAdapter(data, loadPeftAdapter(dir));

    const st = SafetensorsFile.open(path.join(dir, 'adapter_model.safetensors'));
    try {
      const names = st.names();
      assert.equal(names.length, 2 * 7 * config.num_hidden_layers);
      assert.deepEqual(
        st.entry('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight').shape,
        [8, 64],
      );
      assert.deepEqual(
        st.entry('base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight').shape,
        [64, 8],
      );
      assert.deepEqual(
        st.entry('base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight').shape,
        [32, 8],
      );
      assert.deepEqual(
        st.entry('base_model.model.model.layers.1.mlp.down_proj.lora_A.weight').shape,
        [4, 160],
      );
      assert.deepEqual(
        st.entry('base_model.model.model.layers.1.mlp.down_proj.lora_B.weight').shape,
        [64, 4],
      );
      assert.equal(st.entry('base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight').dtype, 'F32');
      assert.ok(
        names.every((n) =>
          /^base_model\.model\.model\.layers\.\d\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$/.test(n),
        ),
      );
      assert.equal(st.metadata['format'], 'pt');
    } finally {
      st.close();
    }

    const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(cfg['peft_type'], 'LORA');
    assert.equal(cfg['task_type'], 'CAUSAL_LM');
    assert.equal(cfg['r'], 8);
    assert.equal(cfg['lora_alpha'], 16);
    assert.equal(cfg['lora_dropout'], 0.05);
    assert.equal(cfg['bias'], 'none');
    assert.equal(cfg['use_rslora'], false);
    assert.equal(cfg['use_dora'], false);
    assert.equal(cfg['fan_in_fan_out'], false);
    assert.equal(cfg['inference_mode'], true);
    assert.equal(cfg['init_lora_weights'], true);
    assert.equal(cfg['base_model_name_or_path'], 'tests/fixtures/parity/llama_gqa');
    assert.deepEqual(cfg['target_modules'], TARGETS);
    assert.deepEqual(cfg['rank_pattern'], {
      'model.layers.0.mlp.down_proj': 4,
      'model.layers.1.mlp.down_proj': 4,
    });
    assert.deepEqual(cfg['alpha_pattern'], {
      'model.layers.0.self_attn.v_proj': 32,
      'model.layers.1.self_attn.v_proj': 32,
    });
    for (const k of [
      'modules_to_save',
      'layers_to_transform',
      'layers_pattern',
      'lora_bias',
      'revision',
      'megatron_config',
    ])
      assert.ok(k in cfg, `adapter_config.json lacks ${k}`);
  });

  it('round-trips rsLoRA (use_rslora) and DoRA (lora_magnitude_vector [out])', () => {
    const rs = randomAdapter(config, 'rslora', 2);
    savePeftAdapter(path.join(tmp, 'rslora'), rs);
    const rsBack = loadPeftAdapter(path.join(tmp, 'rslora'));
    assertSameAdapter(rs, rsBack);
    const q = rsBack.modules.get('model.layers.0.self_attn.q_proj')!;
    assert.equal(loraScale(q, rsBack.rsLora), 16 / Math.sqrt(8));

    const dora = randomAdapter(config, 'dora', 3);
    const dir = path.join(tmp, 'dora');
    savePeftAdapter(dir, dora);
    assertSameAdapter(dora, loadPeftAdapter(dir));
    const st = SafetensorsFile.open(path.join(dir, 'adapter_model.safetensors'));
    try {
      assert.equal(st.names().length, 3 * 7 * config.num_hidden_layers);
      assert.deepEqual(
        st.entry('base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector').shape,
        [64],
      );
      assert.deepEqual(
        st.entry('base_model.model.model.layers.0.self_attn.k_proj.lora_magnitude_vector').shape,
        [32],
      );
      assert.deepEqual(
        st.entry('base_model.model.model.layers.1.mlp.up_proj.lora_magnitude_vector').shape,
        [160],
      );
    } finally {
      st.close();
    }
    const cfg = JSON.parse(readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(cfg['use_dora'], true);
  });

  it('reads BF16/F16 tensors as PEFT often saves them, and PEFT regex patterns', () => {
    const dir = path.join(tmp, 'bf16');
    mkdirSync(dir, { recursive: true });
    const A = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
    const B = Float32Array.from({ length: 64 * 4 }, (_, i) => Math.cos(i));
    writeSafetensors(path.join(dir, 'adapter_model.safetensors'), [
      {
        name: 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
        shape: [4, 64],
        data: A,
        dtype: 'BF16',
      },
      {
        name: 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight',
        shape: [64, 4],
        data: B,
        dtype: 'F16',
      },
    ]);
    writeFileSync(
      path.join(dir, 'adapter_config.json'),
      JSON.stringify({
        peft_type: 'LORA',
        task_type: 'CAUSAL_LM',
        r: 16,
        lora_alpha: 8,
        rank_pattern: { 'layers\\.0\\.self_attn\\.q_proj': 4 },
        alpha_pattern: { q_proj: 12 },
        target_modules: ['q_proj'],
        bias: 'none',
      }),
    );
    const back = loadPeftAdapter(dir);
    const q = back.modules.get('model.layers.0.self_attn.q_proj')!;
    assert.equal(q.rank, 4);
    assert.equal(q.alpha, 12);
    for (let i = 0; i < A.length; i++) assert.ok(Math.abs(q.A[i]! - A[i]!) <= 4e-3, `A[${i}]`);
    for (let i = 0; i < B.length; i++) assert.ok(Math.abs(q.B[i]! - B[i]!) <= 1e-3, `B[${i}]`);
  });

  it('names the file and the key, with a fix, when the folder is wrong', () => {
    expectThrow(() => loadPeftAdapter(path.join(tmp, 'nope')), QtuneError, 'does not exist');
    const good = path.join(tmp, 'lora');

    const noCfg = path.join(tmp, 'no-config');
    mkdirSync(noCfg);
    copyFileSync(path.join(good, 'adapter_model.safetensors'), path.join(noCfg, 'adapter_model.safetensors'));
    expectThrow(() => loadPeftAdapter(noCfg), QtuneError, 'adapter_config.json');

    const bin = path.join(tmp, 'bin-only');
    mkdirSync(bin);
    copyFileSync(path.join(good, 'adapter_config.json'), path.join(bin, 'adapter_config.json'));
    writeFileSync(path.join(bin, 'adapter_model.bin'), 'pickle');
    expectThrow(
      () => loadPeftAdapter(bin),
      QtuneError,
      'adapter_model.safetensors',
      'safe_serialization=True',
    );

    const badJson = path.join(tmp, 'bad-json');
    mkdirSync(badJson);
    copyFileSync(
      path.join(good, 'adapter_model.safetensors'),
      path.join(badJson, 'adapter_model.safetensors'),
    );
    writeFileSync(path.join(badJson, 'adapter_config.json'), '{"r": 8,');
    expectThrow(
      () => loadPeftAdapter(badJson),
      FormatError,
      path.join(badJson, 'adapter_config.json'),
      'not valid JSON',
    );

    const ia3 = path.join(tmp, 'ia3');
    mkdirSync(ia3);
    copyFileSync(path.join(good, 'adapter_model.safetensors'), path.join(ia3, 'adapter_model.safetensors'));
    writeFileSync(
      path.join(ia3, 'adapter_config.json'),
      JSON.stringify({ peft_type: 'IA3', r: 8, lora_alpha: 16 }),
    );
    expectThrow(() => loadPeftAdapter(ia3), ConfigError, 'peft_type', 'IA3');

    const missing = path.join(tmp, 'missing-b');
    mkdirSync(missing);
    copyFileSync(path.join(good, 'adapter_config.json'), path.join(missing, 'adapter_config.json'));
    writeSafetensors(path.join(missing, 'adapter_model.safetensors'), [
      {
        name: 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
        shape: [8, 64],
        data: new Float32Array(512),
        dtype: 'F32',
      },
    ]);
    expectThrow(
      () => loadPeftAdapter(missing),
      FormatError,
      'adapter_model.safetensors',
      'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight',
    );

    const wrongRank = path.join(tmp, 'wrong-rank');
    mkdirSync(wrongRank);
    copyFileSync(
      path.join(good, 'adapter_model.safetensors'),
      path.join(wrongRank, 'adapter_model.safetensors'),
    );
    const cfg = JSON.parse(readFileSync(path.join(good, 'adapter_config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    writeFileSync(path.join(wrongRank, 'adapter_config.json'), JSON.stringify({ ...cfg, rank_pattern: {} }));
    expectThrow(() => loadPeftAdapter(wrongRank), FormatError, 'down_proj.lora_A.weight', 'rank 4', 'rank 8');

    const noMag = path.join(tmp, 'dora-no-magnitude');
    mkdirSync(noMag);
    copyFileSync(path.join(good, 'adapter_model.safetensors'), path.join(noMag, 'adapter_model.safetensors'));
    writeFileSync(path.join(noMag, 'adapter_config.json'), JSON.stringify({ ...cfg, use_dora: true }));
    expectThrow(() => loadPeftAdapter(noMag), FormatError, 'lora_magnitude_vector', 'use_dora');
  });

  it('refuses to save an adapter whose arrays do not fit their shapes', () => {
    const data = randomAdapter(config, 'lora', 4);
    const q = data.modules.get('model.layers.0.self_attn.q_proj')!;
    q.B = q.B.subarray(1);
    expectThrow(
      () => savePeftAdapter(path.join(tmp, 'bad-shape'), data),
      QtuneError,
      'model.layers.0.self_attn.q_proj',
      'B',
    );
    const dora = randomAdapter(config, 'lora', 5);
    dora.dora = true;
    expectThrow(() => savePeftAdapter(path.join(tmp, 'bad-dora'), dora), ConfigError, 'magnitude');
  });
});
