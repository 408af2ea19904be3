/**
 * LoRA adapters as GGUF, the file llama.cpp loads with `llama_adapter_lora_init` (and
 * `llama-cli --lora`), laid out as llama.cpp's `convert_lora_to_gguf.py` writes it:
 *
 * - metadata `general.type = "adapter"`, `general.architecture` (`llama`, `qwen2`, `qwen3`, `smollm3`, as the base
 *   model's GGUF), `adapter.type = "lora"`, `adapter.lora.alpha` (f32);
 * - per module, `<base GGUF tensor>.lora_a` with ggml dims `[in, r]` (torch `[r, in]`) and
 *   `<base GGUF tensor>.lora_b` with dims `[r, out]` (torch `[out, r]`), e.g. `blk.0.attn_q.weight.lora_a`;
 * - for `llama` and `smollm3`, the rows of `lora_b` of attn_q and attn_k are reordered as llama.cpp reorders q_proj
 *   and k_proj rows ({@link reorderRopeRows}); `lora_a` acts on the input side and is not touched.
 *
 * llama.cpp scales every module by `alpha / rank` with one alpha per adapter file (src/llama-adapter.cpp).
 * When modules need other scales (rsLoRA's `alpha/√rank`, per-module alphas from `alpha_pattern`), the
 * writer stores the most common alpha and folds the remaining factor into `B`:
 * `B' = B · scale / (alpha_file / rank)`, so llama.cpp computes the same `scale · B · A`. Reading such a
 * file back gives an equivalent adapter (same products), with folded `B` and plain LoRA scaling.
 *
 * DoRA's magnitude vector has no place in this format: {@link saveGgufLoraAdapter} refuses DoRA
 * adapters; merge them into the model instead (`qtune merge`).
 *
 * @example
 * saveGgufLoraAdapter('adapter.gguf', data, model.config);
 * // llama-cli -m model.gguf --lora adapter.gguf
 */
import { ConfigError, FormatError } from '../errors.js';
import { f32ToHalfBytes } from '../io/half.js';
import { decode } from '../tensor/host.js';
import {
  ggufGet,
  kv,
  readGguf,
  readGgufTensor,
  writeGguf,
  type GgufKv,
  type GgufTensorToWrite,
} from '../io/gguf.js';
import type { LlamaConfig } from '../models/config.js';
import { ggufArch, ggufToHfName, hfToGgufName, reorderRopeRows, ropeHeads } from '../models/llama-gguf.js';
import {
  checkAdapterDType,
  loraScale,
  mostCommon,
  shortModuleName,
  validateAdapter,
  type AdapterDType,
  type LoraAdapterData,
  type LoraModule,
} from './lora-weights.js';

function bytesOf(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Writes a LoRA adapter as a GGUF file llama.cpp loads (`llama_adapter_lora_init`), atomically.
 * `modelConfig` is the base model's (its architecture and head counts decide the row order of
 * attn_q/attn_k). Module scales llama.cpp cannot express are folded into `B` (see the module comment).
 *
 * Throws {@link ConfigError} for a DoRA adapter, and for a module the base model has no tensor for.
 *
 * @example
 * saveGgufLoraAdapter('lora.gguf', loadPeftAdapter('runs/lora-1'), readConfig('TinyLlama'));
 */
export function saveGgufLoraAdapter(
  file: string,
  data: LoraAdapterData,
  modelConfig: LlamaConfig,
  o: { dtype?: AdapterDType } = {},
): void {
  if (data.dora)
    throw new ConfigError(
      'a DoRA adapter cannot be written as a llama.cpp LoRA GGUF (no magnitude vectors)',
      {
        hint: 'merge it into the base model instead: qtune merge --model BASE --adapter ADAPTER --out OUT --format gguf',
        details: { field: 'dora', value: true },
      },
    );
  validateAdapter(data);
  const dtype = checkAdapterDType(o.dtype ?? 'f32');
  // f16/bf16 round to nearest even, as llama.cpp's convert_lora_to_gguf.py --outtype does
  const stored = (a: Float32Array): Uint8Array => (dtype === 'f32' ? bytesOf(a) : f32ToHalfBytes(a, dtype));
  const modules = [...data.modules.entries()];
  const alpha = mostCommon(modules.map(([, m]) => m.alpha));
  let folded = false;
  const tensors: GgufTensorToWrite[] = [];
  for (const [name, m] of modules) {
    let base: string;
    try {
      base = hfToGgufName(`${name}.weight`);
    } catch {
      throw new ConfigError(`adapter module ${name} is not a linear layer of a Llama-family model`, {
        hint: 'modules are named like model.layers.0.self_attn.q_proj',
        details: { module: name },
      });
    }
    // llama.cpp multiplies by alpha/rank (or by 1 when alpha is 0); fold what remains into B
    const fileScale = alpha === 0 ? 1 : alpha / m.rank;
    const factor = loraScale(m, data.rsLora) / fileScale;
    let b = m.B;
    if (factor !== 1) {
      folded = true;
      b = Float32Array.from(m.B, (v) => v * factor);
    }
    let bBytes = stored(b);
    const heads = ropeHeads(modelConfig, `${name}.weight`);
    if (heads !== null) bBytes = reorderRopeRows(bBytes, m.outFeatures, heads, true);
    tensors.push({ name: `${base}.lora_a`, shape: [m.rank, m.inFeatures], dtype, data: stored(m.A) }); // (r, in)
    tensors.push({ name: `${base}.lora_b`, shape: [m.outFeatures, m.rank], dtype, data: bBytes }); // (out, r)
  }
  const meta = new Map<string, GgufKv>([
    ['general.architecture', kv.str(ggufArch(modelConfig))],
    ['general.type', kv.str('adapter')],
    ['general.name', kv.str(data.baseModel === '' ? 'qtune LoRA adapter' : `${data.baseModel} LoRA adapter`)],
    ['adapter.type', kv.str('lora')],
    ['adapter.lora.alpha', kv.f32(alpha)],
    ['qtune.adapter.base_model', kv.str(data.baseModel)],
    ['qtune.adapter.target_modules', kv.strings(data.targetModules)],
    ['qtune.adapter.scale_folded', kv.bool(folded)],
  ]);
  writeGguf(file, meta, tensors);
}

/**
 * Reads a llama.cpp LoRA adapter GGUF (written by {@link saveGgufLoraAdapter} or by llama.cpp's
 * `convert_lora_to_gguf.py`) back into torch layout: `B` rows of attn_q/attn_k are put back in the
 * Hugging Face order using `modelConfig`'s head counts. Every module gets the file's alpha; an alpha
 * of 0 (llama.cpp: scale 1) becomes `alpha = rank`.
 *
 * @example
 * const data = loadGgufLoraAdapter('lora.gguf', model.config);
 * mergeAdapter(model, data);
 */
export function loadGgufLoraAdapter(file: string, modelConfig: LlamaConfig): LoraAdapterData {
  const g = readGguf(file);
  const type = ggufGet(g, 'general.type', 'string');
  if (type !== 'adapter')
    throw new FormatError(file, `general.type is ${JSON.stringify(type ?? null)}, not "adapter"`, {
      hint: 'this is a model, not a LoRA adapter; give the adapter file',
    });
  const adapterType = ggufGet(g, 'adapter.type', 'string');
  if (adapterType !== 'lora')
    throw new FormatError(file, `adapter.type is ${JSON.stringify(adapterType ?? null)}, not "lora"`, {
      hint: 'qtune reads LoRA adapters only',
    });
  const arch = ggufGet(g, 'general.architecture', 'string');
  if (arch !== ggufArch(modelConfig))
    throw new ConfigError(
      `${file}: the adapter is for architecture ${String(arch)}, the model is ${ggufArch(modelConfig)}`,
      { hint: 'use the adapter with the base model it was trained on' },
    );
  const alpha = ggufGet(g, 'adapter.lora.alpha', 'number') ?? 0;
  const pairs = new Map<string, { a?: string; b?: string }>();
  for (const name of g.tensors.keys()) {
    const m = /^(.+)\.lora_(a|b)$/.exec(name);
    if (m === null) {
      if (name.endsWith('_norm.weight')) continue; // llama.cpp skips these too
      throw new FormatError(file, `has tensor ${name}, which is not a .lora_a/.lora_b tensor`);
    }
    const slot = pairs.get(m[1]!) ?? {};
    if (m[2] === 'a') slot.a = name;
    else slot.b = name;
    pairs.set(m[1]!, slot);
  }
  if (pairs.size === 0) throw new FormatError(file, 'holds no LoRA tensors');
  const read = (name: string): Float32Array => {
    const t = g.tensors.get(name)!;
    if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16')
      throw new FormatError(file, `tensor ${name} is ${t.dtype}; qtune reads f32, f16 and bf16 adapters`);
    const n = t.shape.reduce((x, y) => x * y, 1);
    return decode(t.dtype, readGgufTensor(g, name), n);
  };
  const modules = new Map<string, LoraModule>();
  for (const [base, p] of pairs) {
    if (p.a === undefined || p.b === undefined)
      throw new FormatError(file, `has no tensor ${base}.lora_${p.a === undefined ? 'a' : 'b'}`, {
        hint: 'every module needs both lora_a and lora_b',
      });
    const hf = ggufToHfName(base, modelConfig);
    if (hf === null || !hf.endsWith('.weight'))
      throw new FormatError(file, `tensor ${p.a} adapts ${base}, which qtune does not know`);
    const module = hf.slice(0, -'.weight'.length);
    const sa = g.tensors.get(p.a)!.shape;
    const sb = g.tensors.get(p.b)!.shape;
    if (sa.length !== 2 || sb.length !== 2 || sa[0] !== sb[1])
      throw new FormatError(
        file,
        `${p.a} is [${sa.join(', ')}] and ${p.b} is [${sb.join(', ')}]; expected [r, in] and [out, r]`,
      );
    const rank = sa[0]!;
    const out = sb[0]!;
    let B = read(p.b);
    const heads = ropeHeads(modelConfig, hf);
    if (heads !== null) {
      const bytes = reorderRopeRows(new Uint8Array(B.buffer, B.byteOffset, B.byteLength), out, heads, false);
      B = new Float32Array(bytes.buffer, bytes.byteOffset, B.length);
    }
    modules.set(module, {
      rank,
      alpha: alpha === 0 ? rank : alpha,
      inFeatures: sa[1]!,
      outFeatures: out,
      A: read(p.a),
      B,
    });
  }
  const targets = ggufGet(g, 'qtune.adapter.target_modules', 'array');
  return {
    baseModel: ggufGet(g, 'qtune.adapter.base_model', 'string') ?? '',
    rsLora: false,
    dora: false,
    dropout: 0,
    targetModules:
      targets !== undefined && targets.length > 0
        ? targets.map(String)
        : [...new Set([...modules.keys()].map(shortModuleName))],
    modules,
  };
}
