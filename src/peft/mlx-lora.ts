/**
 * LoRA/DoRA adapters for mlx-lm (Apple's MLX), laid out as mlx-lm's tuner saves and loads them
 * (`mlx_lm.lora --adapter-path`, `mlx_lm.generate --adapter-path`, `mlx_lm.fuse`; checked against
 * mlx-lm 0.32.0, commit d78bf58e: mlx_lm/tuner/lora.py, dora.py, utils.py `linear_to_lora_layers`
 * and `load_adapters`, mlx_lm/lora.py):
 *
 * - `adapters.safetensors`: per module, `<module>.lora_a` `(in, r)` and `<module>.lora_b` `(r, out)`
 *   under mlx-lm's parameter paths, which are the Hugging Face module names
 *   (`model.layers.0.self_attn.q_proj.lora_a`). mlx-lm computes `y = x·Wᵀ + scale·(x·lora_a)·lora_b`,
 *   so `lora_a = Aᵀ` and `lora_b = Bᵀ` of PEFT's `A` `[r, in]` and `B` `[out, r]`. DoRA adds
 *   `<module>.m` `(out)`, the magnitude (the same per-output-row norm as PEFT's).
 * - `adapter_config.json`: `fine_tune_type` (`lora` or `dora`), `num_layers` (mlx-lm adapts the
 *   last `num_layers` blocks), `lora_parameters` `{ rank, scale, dropout, keys }` with `keys` the
 *   module paths inside a block (`self_attn.q_proj`); a module outside the blocks (`lm_head`) is
 *   named whole.
 *
 * mlx-lm has one rank and one scale per adapter, and its `scale` multiplies `B·A` directly (PEFT's
 * `alpha / r`, or `alpha / √r` with rsLoRA). Modules of a smaller rank are padded with zero columns
 * of `lora_a` and zero rows of `lora_b`; a module whose scale differs from the adapter's has the
 * ratio folded into `lora_b`. Both keep every product exact. mlx-lm also wraps the adapted module
 * names in blocks qtune did not adapt; those start with `lora_b = 0` (and DoRA's `m` from `W`), so
 * they change nothing.
 *
 * The files go into a folder of their own: mlx-lm's `adapter_config.json` has PEFT's file name.
 *
 * @example
 * saveMlxAdapter('out/mlx', trainer.adapterWeights(), model.config);
 * // mlx_lm.generate --model BASE --adapter-path out/mlx --prompt "..."
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import type { LlamaConfig } from '../models/config.js';
import { loraScale, mostCommon, validateAdapter, type LoraAdapterData } from './lora-weights.js';
import { PEFT_WEIGHTS_FILE } from './peft.js';

export const MLX_WEIGHTS_FILE = 'adapters.safetensors';
export const MLX_CONFIG_FILE = 'adapter_config.json';
/** The mlx-lm release (and commit) whose tuner this layout was checked against. */
export const MLX_LM_VERSION = '0.32.0 (d78bf58e)';

/** The safetensors key names of one module, as mlx-lm's parameter tree flattens them. */
export function mlxKeys(module: string): { A: string; B: string; magnitude: string } {
  return { A: `${module}.lora_a`, B: `${module}.lora_b`, magnitude: `${module}.m` };
}

/** A module's block index and its path inside the block, or null outside the blocks (`lm_head`). */
function inBlock(module: string): { layer: number; key: string } | null {
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(module);
  return m === null ? null : { layer: Number(m[1]), key: m[2]! };
}

/** The `adapter_config.json` object mlx-lm's `load_adapters` reads for this adapter. */
export function mlxAdapterConfig(data: LoraAdapterData, modelConfig: LlamaConfig): Record<string, unknown> {
  const modules = [...data.modules.entries()];
  const layers = modelConfig.num_hidden_layers;
  const keys = new Set<string>();
  let first = layers;
  for (const [name] of modules) {
    const b = inBlock(name);
    if (b !== null && b.layer >= layers)
      throw new ConfigError(`adapter module ${name} is in block ${b.layer}; the model has ${layers} blocks`, {
        hint: 'give the base model the adapter was trained on',
        details: { module: name },
      });
    if (b !== null) first = Math.min(first, b.layer);
    keys.add(b === null ? name : b.key);
  }
  return {
    fine_tune_type: data.dora ? 'dora' : 'lora',
    num_layers: layers - first,
    lora_parameters: {
      rank: Math.max(...modules.map(([, m]) => m.rank)),
      scale: mostCommon(modules.map(([, m]) => loraScale(m, data.rsLora))),
      dropout: data.dropout,
      keys: [...keys].sort(),
    },
    ...(data.baseModel === '' ? {} : { model: data.baseModel }),
  };
}

/**
 * Writes a LoRA/DoRA adapter as an mlx-lm adapter folder (`adapters.safetensors`,
 * `adapter_config.json`), each file atomically. `modelConfig` is the base model's (its block count
 * gives `num_layers`). Throws {@link ConfigError} when `dir` holds a PEFT adapter (the two
 * `adapter_config.json` would collide) or a module lies beyond the model's blocks.
 *
 * @example
 * saveMlxAdapter('runs/lora-1/mlx', loadPeftAdapter('runs/lora-1'), readConfig('TinyLlama'));
 */
export function saveMlxAdapter(dir: string, data: LoraAdapterData, modelConfig: LlamaConfig): void {
  validateAdapter(data);
  if (existsSync(path.join(dir, PEFT_WEIGHTS_FILE)))
    throw new ConfigError(
      `${dir} holds a PEFT adapter, whose adapter_config.json the mlx-lm one would replace`,
      { hint: 'write the mlx-lm adapter into a folder of its own, e.g. DIR/mlx', details: { path: dir } },
    );
  const config = mlxAdapterConfig(data, modelConfig);
  const { rank: R, scale } = config['lora_parameters'] as { rank: number; scale: number };
  const tensors: TensorToWrite[] = [];
  for (const [name, m] of data.modules) {
    const { rank: r, inFeatures: nIn, outFeatures: nOut } = m;
    const fold = loraScale(m, data.rsLora) / scale;
    const a = new Float32Array(nIn * R); // (in, R): Aᵀ, zero columns past r
    for (let k = 0; k < r; k++) for (let i = 0; i < nIn; i++) a[i * R + k] = m.A[k * nIn + i]!;
    const b = new Float32Array(R * nOut); // (R, out): Bᵀ·fold, zero rows past r
    for (let o = 0; o < nOut; o++) for (let k = 0; k < r; k++) b[k * nOut + o] = m.B[o * r + k]! * fold;
    const k = mlxKeys(name);
    tensors.push({ name: k.A, shape: [nIn, R], data: a, dtype: 'F32' });
    tensors.push({ name: k.B, shape: [R, nOut], data: b, dtype: 'F32' });
    if (data.dora) tensors.push({ name: k.magnitude, shape: [nOut], data: m.magnitude!, dtype: 'F32' });
  }
  writeSafetensors(path.join(dir, MLX_WEIGHTS_FILE), tensors, { format: 'mlx' });
  writeFileAtomic(path.join(dir, MLX_CONFIG_FILE), [JSON.stringify(config, null, 2) + '\n']);
}
