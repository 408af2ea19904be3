/**
 * Llama-Pro block expansion (Wu et al. 2024): N new decoder blocks are inserted, spread evenly, each a
 * copy of the block before it with `o_proj` and `down_proj` zeroed, so each new block adds nothing
 * to the residual stream and the expanded model computes exactly what the original did. Training
 * then updates only the new blocks.
 *
 * @example
 * expandModel('tiny', 'tiny-pro', 2); // 4 blocks → 6, new blocks at 2 and 5
 */
import { copyFileSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, QtuneError, errorText } from '../errors.js';
import { makeFolder } from '../io/folders.js';
import { SafetensorsCheckpoint, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { configToJson } from '../models/config.js';
import { readConfig } from '../models/load.js';

/** Written beside the expanded model: which blocks are new, so training updates only them. */
export const EXPANSION_FILE = 'qtune_expansion.json';

export interface Expansion {
  /** Blocks of the original model. */
  baseLayers: number;
  /** Indices (in the expanded model) of the inserted blocks. */
  newLayers: number[];
  /** For each block of the expanded model, the original block it copies. */
  sourceOf: number[];
}

/** Where N new blocks go in a model of L blocks: after every L/N original blocks. */
export function planExpansion(layers: number, blocks: number): Expansion {
  if (!Number.isInteger(blocks) || blocks < 1 || blocks > layers)
    throw new ConfigError(`blocks: ${blocks} must be an integer from 1 to the model's ${layers} layers`, {
      hint: 'Llama-Pro adds one block per group of original blocks, e.g. a quarter of them',
    });
  const after = new Set(
    Array.from({ length: blocks }, (_, k) => Math.floor(((k + 1) * layers) / blocks) - 1),
  );
  const sourceOf: number[] = [];
  const newLayers: number[] = [];
  for (let i = 0; i < layers; i++) {
    sourceOf.push(i);
    if (after.has(i)) {
      newLayers.push(sourceOf.length);
      sourceOf.push(i);
    }
  }
  return { baseLayers: layers, newLayers, sourceOf };
}

/** Reads the expansion record of a model folder, or null if it was not expanded by qtune. */
export function readExpansion(dir: string): Expansion | null {
  const file = path.join(dir, EXPANSION_FILE);
  if (!existsSync(file)) return null;
  try {
    const j = JSON.parse(readFileSync(file, 'utf8')) as {
      base_layers: number;
      new_layers: number[];
      source_of: number[];
    };
    if (!Array.isArray(j.new_layers) || !Array.isArray(j.source_of)) throw new Error('missing fields');
    return { baseLayers: j.base_layers, newLayers: j.new_layers, sourceOf: j.source_of };
  } catch (e) {
    throw new QtuneError('FORMAT', `${file} is not a valid expansion record (${errorText(e)})`, {
      hint: 'expand the base model again with `qtune expand`',
    });
  }
}

/**
 * Writes the expanded copy of the Hugging Face model folder `src` to `out` (built in a temporary
 * folder, then renamed into place).
 */
export function expandModel(src: string, out: string, blocks: number): Expansion {
  const config = readConfig(src);
  const plan = planExpansion(config.num_hidden_layers, blocks);
  if (existsSync(out))
    throw new QtuneError('INVALID_ARGUMENT', `${out} already exists`, { hint: 'choose a new --out folder' });
  const ckpt = SafetensorsCheckpoint.open(src);
  const tmp = `${out}.tmp-${process.pid}`;
  try {
    const tensors: TensorToWrite[] = [];
    const read = (name: string, zero: boolean): TensorToWrite => {
      const e = ckpt.entry(name);
      if (e.dtype !== 'F32' && e.dtype !== 'F16' && e.dtype !== 'BF16')
        throw new QtuneError('FORMAT', `${name} is ${e.dtype}; expansion copies F32, F16 and BF16 weights`);
      const raw = ckpt.readRaw(name);
      return { name, shape: e.shape, dtype: e.dtype, data: zero ? new Uint8Array(raw.byteLength) : raw };
    };
    for (const name of ckpt.names()) {
      if (!/^model\.layers\.\d+\./.test(name)) tensors.push(read(name, false));
    }
    plan.sourceOf.forEach((source, i) => {
      const isNew = plan.newLayers.includes(i);
      const prefix = `model.layers.${source}.`;
      for (const name of ckpt.names()) {
        if (!name.startsWith(prefix)) continue;
        const rest = name.slice(prefix.length);
        const zero = isNew && /^(self_attn\.o_proj|mlp\.down_proj)\./.test(rest);
        tensors.push({ ...read(name, zero), name: `model.layers.${i}.${rest}` });
      }
    });
    rmSync(tmp, { recursive: true, force: true });
    makeFolder(tmp, '--out');
    writeSafetensors(path.join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    const json = configToJson({
      ...config,
      num_hidden_layers: plan.sourceOf.length,
      // a new block is a copy of its source block, RoPE switch included (SmolLM3)
      no_rope_layers:
        config.no_rope_layers === null ? null : plan.sourceOf.map((s) => config.no_rope_layers![s]!),
    });
    writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(json, null, 2) + '\n');
    writeFileSync(
      path.join(tmp, EXPANSION_FILE),
      JSON.stringify(
        { base_layers: plan.baseLayers, new_layers: plan.newLayers, source_of: plan.sourceOf },
        null,
        2,
      ) + '\n',
    );
    for (const f of [
      'tokenizer.json',
      'tokenizer_config.json',
      'generation_config.json',
      'special_tokens_map.json',
      'tokenizer.model',
    ]) {
      if (existsSync(path.join(src, f))) copyFileSync(path.join(src, f), path.join(tmp, f));
    }
    renameSync(tmp, out);
    return plan;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    ckpt.close();
  }
}
