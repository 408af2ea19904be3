/**
 * Gemma 3's multimodal checkpoints (4B and up: `model_type: gemma3`, the text model's settings in
 * `text_config`, its weights under `language_model.model.*`, or `model.language_model.*` as newer
 * transformers save them) load as their text model. The folders are written to disk in that layout
 * from the gemma3_local_global parity fixture, with a vision tower beside it, and must give the
 * fixture's PyTorch logits.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { ConfigError } from '../../src/errors.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { parseLlamaConfig } from '../../src/models/config.js';
import { loadWeights, readConfig } from '../../src/models/load.js';
import { Graph } from '../../src/tensor/index.js';
import { ROOT } from '../helpers/cli.js';
import { relErr } from '../helpers/ref.js';

const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'gemma3_local_global');
const ref = JSON.parse(readFileSync(path.join(FIXTURE, 'reference.json'), 'utf8')) as {
  batch: number;
  seq: number;
  ids: number[][];
};
const expected = new Float32Array(new Uint8Array(readFileSync(path.join(FIXTURE, 'logits.bin'))).buffer);
const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-gemma3-mm-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A multimodal folder holding the fixture's text model under `prefix` and a small vision tower. */
function writeMultimodal(dir: string, prefix: (name: string) => string): void {
  const text = JSON.parse(readFileSync(path.join(FIXTURE, 'config.json'), 'utf8')) as Record<string, unknown>;
  // as transformers writes text_config: without its model_type's defaults (rms_norm_eps 1e-6 and
  // rope_local_base_freq 10000 are Gemma3TextConfig's), and the token ids and dtype outside
  const { rms_norm_eps: _eps, rope_local_base_freq: _base, torch_dtype: dtype, ...inner } = text;
  assert.deepEqual([_eps, _base], [1e-6, 10000]);
  const config = {
    architectures: ['Gemma3ForConditionalGeneration'],
    model_type: 'gemma3',
    boi_token_index: 255999,
    eos_token_id: [1, 106],
    image_token_index: 262144,
    mm_tokens_per_image: 256,
    text_config: inner,
    vision_config: {
      model_type: 'siglip_vision_model',
      hidden_size: 8,
      num_hidden_layers: 1,
      patch_size: 14,
    },
    torch_dtype: dtype,
  };
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const st = SafetensorsFile.open(path.join(FIXTURE, 'model.safetensors'));
  const tensors = st.names().map((n) => ({
    name: prefix(n),
    shape: st.entry(n).shape,
    data: st.readF32(n),
    dtype: 'F32' as const,
  }));
  st.close();
  const visionPrefix = prefix('model.x').startsWith('model.') ? 'model.' : '';
  for (const [name, shape] of [
    [`${visionPrefix}vision_tower.vision_model.embeddings.patch_embedding.weight`, [8, 3, 14, 14]],
    [`${visionPrefix}multi_modal_projector.mm_input_projection_weight`, [8, 64]],
  ] as const) {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name, shape: [...shape], data: new Float32Array(n).fill(0.5), dtype: 'F32' });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

function logits(dir: string): Float32Array {
  const { model } = loadWeights(dir, readConfig(dir), cpuBackend());
  const g = new Graph(model.backend);
  try {
    const ids = g.input([ref.batch, ref.seq], 'i32', 'ids');
    const out = g.output(model.forward(g, ids));
    g.compile();
    g.set(ids, Int32Array.from(ref.ids.flat()));
    g.run();
    return g.read(out);
  } finally {
    g.dispose();
    model.dispose();
  }
}

describe('Gemma 3 multimodal checkpoints', () => {
  for (const [layout, prefix] of [
    ['language_model.model.*', (n: string) => `language_model.${n}`],
    [
      'model.language_model.* (transformers 4.52 on)',
      (n: string) => n.replace(/^model\./, 'model.language_model.'),
    ],
  ] as const) {
    it(`load their text model from ${layout}, the vision tower left out with one line`, () => {
      const dir = mkdtempSync(path.join(tmp, 'mm-'));
      writeMultimodal(dir, prefix);
      const config = readConfig(dir);
      const textOnly = readConfig(FIXTURE);
      assert.deepEqual(config, { ...textOnly, eos_token_id: [1, 106] });
      const lines: string[] = [];
      const write = process.stderr.write.bind(process.stderr);
      process.stderr.write = (s: string) => (lines.push(s), true);
      let out: Float32Array;
      try {
        out = logits(dir);
      } finally {
        process.stderr.write = write;
      }
      assert.deepEqual(out, logits(FIXTURE));
      const err = relErr(out, expected);
      assert.ok(err <= 1e-4, `logits differ from PyTorch by ${err.toExponential(2)}`);
      assert.deepEqual(lines, [
        `qtune: ${dir} is a multimodal checkpoint: only its text model is loaded (the vision tower's 2 tensors are not read)\n`,
      ]);
    });
  }

  it('a gemma3 config without a text_config is refused by name', () => {
    assert.throws(
      () => parseLlamaConfig({ model_type: 'gemma3', vision_config: {} }),
      (e: unknown) => e instanceof ConfigError && /model_type "gemma3" has no text_config/.test(e.message),
    );
  });
});
