/**
 * PEFT adapter folders, written and read the way Hugging Face PEFT saves a LoRA/DoRA adapter of a
 * causal LM (`PeftModel.save_pretrained`):
 *
 * - `adapter_model.safetensors`: `base_model.model.<module>.lora_A.weight` `[r, in]`,
 *   `base_model.model.<module>.lora_B.weight` `[out, r]` and, for DoRA,
 *   `base_model.model.<module>.lora_magnitude_vector` `[out]`. PEFT drops the adapter name
 *   (`lora_A.default.weight` → `lora_A.weight`) and, for DoRA, the `.weight` of
 *   `lora_magnitude_vector.default.weight` (peft/utils/save_and_load.py, get_peft_model_state_dict);
 *   the magnitude is the per-output-row norm `‖W + s·B·A‖` over dim 1 (peft/tuners/lora/dora.py).
 * - `adapter_config.json`: a `LoraConfig` with peft_type `LORA`, task_type `CAUSAL_LM`; the most
 *   common rank and alpha as `r` and `lora_alpha`, modules that differ in `rank_pattern` and
 *   `alpha_pattern` (full module names, which PEFT matches as suffixes).
 *
 * Both files are written atomically (temporary file, then rename).
 *
 * @example
 * savePeftAdapter('out/adapter', data);
 * const back = loadPeftAdapter('out/adapter'); // same modules, ranks, alphas and values
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, FormatError, QtuneError, fmtShape, errorText } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import {
  checkAdapterDType,
  checkPatternKeys,
  mostCommon,
  patternKey,
  shortModuleName,
  validateAdapter,
  type AdapterDType,
  type LoraAdapterData,
  type LoraModule,
} from './lora-weights.js';

export const PEFT_WEIGHTS_FILE = 'adapter_model.safetensors';
export const PEFT_CONFIG_FILE = 'adapter_config.json';
/** The prefix PeftModelForCausalLM's state dict puts before the base model's own module names. */
export const PEFT_PREFIX = 'base_model.model.';
/** The PEFT release whose `LoraConfig` fields {@link peftAdapterConfig} writes. */
export const PEFT_FORMAT_VERSION = '0.18.1';

/** The safetensors key names of one module, as PEFT saves them. */
export function peftKeys(module: string): { A: string; B: string; magnitude: string } {
  return {
    A: `${PEFT_PREFIX}${module}.lora_A.weight`,
    B: `${PEFT_PREFIX}${module}.lora_B.weight`,
    magnitude: `${PEFT_PREFIX}${module}.lora_magnitude_vector`,
  };
}

/** The `adapter_config.json` object PEFT would write for this adapter. */
export function peftAdapterConfig(data: LoraAdapterData): Record<string, unknown> {
  const modules = [...data.modules.entries()];
  const r = mostCommon(modules.map(([, m]) => m.rank));
  const alpha = mostCommon(modules.map(([, m]) => m.alpha));
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  for (const [name, m] of modules) {
    if (m.rank !== r) rankPattern[name] = m.rank;
    if (m.alpha !== alpha) alphaPattern[name] = m.alpha;
  }
  const targets =
    data.targetModules.length > 0
      ? [...data.targetModules]
      : [...new Set(modules.map(([n]) => shortModuleName(n)))];
  // the fields of LoraConfig as PEFT 0.18 serializes them (sorted keys, as its to_dict/json.dump)
  return {
    alora_invocation_tokens: null,
    alpha_pattern: alphaPattern,
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: data.baseModel,
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: alpha,
    lora_bias: false,
    lora_dropout: data.dropout,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    peft_version: PEFT_FORMAT_VERSION,
    qalora_group_size: 16,
    r,
    rank_pattern: rankPattern,
    revision: null,
    target_modules: targets,
    target_parameters: null,
    task_type: 'CAUSAL_LM',
    trainable_token_indices: null,
    use_dora: data.dora,
    use_qalora: false,
    use_rslora: data.rsLora,
  };
}

/**
 * Writes `dir/adapter_model.safetensors` and `dir/adapter_config.json`, as PEFT's `save_pretrained`
 * does, each atomically. Creates `dir`. The tensors are stored in `o.dtype` (default f32; f16 and
 * bf16 round each value to nearest even, as torch's `.to(dtype)`).
 *
 * @example
 * savePeftAdapter('runs/lora-1', data, { dtype: 'bf16' });
 * // Python: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), 'runs/lora-1')
 */
export function savePeftAdapter(dir: string, data: LoraAdapterData, o: { dtype?: AdapterDType } = {}): void {
  validateAdapter(data);
  const dtype = checkAdapterDType(o.dtype ?? 'f32');
  const st = ({ f32: 'F32', f16: 'F16', bf16: 'BF16' } as const)[dtype];
  const tensors: TensorToWrite[] = [];
  for (const [name, m] of data.modules) {
    const k = peftKeys(name);
    tensors.push({ name: k.A, shape: [m.rank, m.inFeatures], data: m.A, dtype: st }); // (r, in)
    tensors.push({ name: k.B, shape: [m.outFeatures, m.rank], data: m.B, dtype: st }); // (out, r)
    if (data.dora) tensors.push({ name: k.magnitude, shape: [m.outFeatures], data: m.magnitude!, dtype: st });
  }
  writeSafetensors(path.join(dir, PEFT_WEIGHTS_FILE), tensors, { format: 'pt' });
  writeFileAtomic(path.join(dir, PEFT_CONFIG_FILE), [
    JSON.stringify(peftAdapterConfig(data), null, 2) + '\n',
  ]);
}

/** PEFT's pattern lookup ({@link patternKey}): the first key, a Python regex, matching the module's name or a dotted suffix. */
function patternValue(patterns: Record<string, unknown>, module: string): number | undefined {
  const numeric = Object.keys(patterns).filter((k) => typeof patterns[k] === 'number');
  const key = patternKey(numeric, module);
  return key === undefined ? undefined : (patterns[key] as number);
}

function readConfigJson(file: string): Record<string, unknown> {
  let j: unknown;
  try {
    j = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new FormatError(file, `is not valid JSON (${errorText(e)})`, {
      hint: 'save the adapter again, or fix the file by hand',
    });
  }
  if (j === null || typeof j !== 'object' || Array.isArray(j))
    throw new FormatError(file, 'is not a JSON object', { hint: 'save the adapter again' });
  return j as Record<string, unknown>;
}

/**
 * Reads a PEFT LoRA/DoRA adapter folder (as saved by PEFT or {@link savePeftAdapter}). Tensors in
 * F32, F16 or BF16 are read as f32.
 *
 * Throws {@link QtuneError} `NOT_FOUND` for a missing folder or file, {@link FormatError} for a
 * file that is not what it should be (bad JSON, missing or misshapen tensors: names the file and the
 * key), {@link ConfigError} for settings qtune does not support.
 *
 * @example
 * const data = loadPeftAdapter('runs/lora-1');
 * console.log(data.modules.size, data.targetModules);
 */
export function loadPeftAdapter(dir: string): LoraAdapterData {
  if (!existsSync(dir) || !statSync(dir).isDirectory())
    throw new QtuneError('NOT_FOUND', `adapter folder ${dir} does not exist`, {
      hint: `give the folder holding ${PEFT_CONFIG_FILE} and ${PEFT_WEIGHTS_FILE}`,
    });
  const configFile = path.join(dir, PEFT_CONFIG_FILE);
  const weightsFile = path.join(dir, PEFT_WEIGHTS_FILE);
  if (!existsSync(configFile))
    throw new QtuneError('NOT_FOUND', `${dir} has no ${PEFT_CONFIG_FILE}`, {
      hint: 'point at a PEFT adapter folder (PeftModel.save_pretrained writes one)',
    });
  if (!existsSync(weightsFile)) {
    const bin = existsSync(path.join(dir, 'adapter_model.bin'));
    throw new QtuneError('NOT_FOUND', `${dir} has no ${PEFT_WEIGHTS_FILE}`, {
      hint: bin
        ? 'it has adapter_model.bin (pickle), which qtune does not read: save with safe_serialization=True'
        : 'point at a PEFT adapter folder (PeftModel.save_pretrained writes one)',
    });
  }
  const cfg = readConfigJson(configFile);
  const field = (key: string, fix: string): ConfigError =>
    new ConfigError(`${configFile}: ${key} = ${JSON.stringify(cfg[key])} is not supported`, {
      hint: fix,
      details: { file: configFile, field: key, value: cfg[key] },
    });
  if (cfg['peft_type'] !== 'LORA') throw field('peft_type', 'qtune reads LORA adapters (LoRA, rsLoRA, DoRA)');
  if (cfg['fan_in_fan_out'] === true)
    throw field(
      'fan_in_fan_out',
      'Conv1D (GPT-2 style) layers are not Llama modules; train on a Llama model',
    );
  if (cfg['bias'] !== undefined && cfg['bias'] !== 'none')
    throw field('bias', 'train with bias="none" (qtune adapters have no bias terms)');
  if (cfg['lora_bias'] === true) throw field('lora_bias', 'train with lora_bias=False');
  const r = cfg['r'];
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 1)
    throw field('r', 'r must be a positive integer');
  const alpha = cfg['lora_alpha'];
  if (typeof alpha !== 'number' || !Number.isFinite(alpha))
    throw field('lora_alpha', 'lora_alpha must be a number');
  const rankPattern = (cfg['rank_pattern'] ?? {}) as Record<string, unknown>;
  const alphaPattern = (cfg['alpha_pattern'] ?? {}) as Record<string, unknown>;
  // Python regular expressions, translated or refused (a key taken literally would match nothing)
  checkPatternKeys(`${configFile}: rank_pattern`, rankPattern);
  checkPatternKeys(`${configFile}: alpha_pattern`, alphaPattern);
  const dora = cfg['use_dora'] === true;

  const st = SafetensorsFile.open(weightsFile);
  try {
    const found = new Map<string, { A?: string; B?: string; magnitude?: string }>();
    for (const key of st.names()) {
      const m =
        /^base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)$/.exec(
          key,
        );
      if (m === null) {
        throw new FormatError(
          weightsFile,
          `has tensor "${key}", which is not a LoRA weight of a linear layer`,
          {
            hint: /lora_embedding|modules_to_save|\.bias$/.test(key)
              ? 'embedding LoRA, modules_to_save and bias training are not supported; train LoRA on linear layers only'
              : `expected ${PEFT_PREFIX}<module>.lora_A.weight / lora_B.weight / lora_magnitude_vector`,
          },
        );
      }
      const slot = found.get(m[1]!) ?? {};
      if (m[2] === 'lora_A.weight') slot.A = key;
      else if (m[2] === 'lora_B.weight') slot.B = key;
      else slot.magnitude = key;
      found.set(m[1]!, slot);
    }
    if (found.size === 0)
      throw new FormatError(weightsFile, 'holds no LoRA tensors', { hint: 'save the adapter again' });
    const modules = new Map<string, LoraModule>();
    for (const [name, keys] of found) {
      const k = peftKeys(name);
      if (keys.A === undefined || keys.B === undefined)
        throw new FormatError(weightsFile, `has no tensor "${keys.A === undefined ? k.A : k.B}"`, {
          hint: 'every module needs both lora_A and lora_B; the file is incomplete or from another tool',
        });
      const a = st.entry(keys.A);
      const b = st.entry(keys.B);
      if (a.shape.length !== 2 || b.shape.length !== 2 || a.shape[0] !== b.shape[1])
        throw new FormatError(
          weightsFile,
          `"${keys.A}" is ${fmtShape(a.shape)} and "${keys.B}" is ${fmtShape(b.shape)}; expected [r, in] and [out, r]`,
          { hint: 'the adapter is corrupt or not a PEFT LoRA of a linear layer' },
        );
      const rank = a.shape[0]!;
      const expectRank = patternValue(rankPattern, name) ?? r;
      if (rank !== expectRank)
        throw new FormatError(
          weightsFile,
          `"${keys.A}" has rank ${rank} but ${PEFT_CONFIG_FILE} gives ${name} rank ${expectRank}`,
          { hint: 'the weights and the config come from different adapters; keep the pair together' },
        );
      const mod: LoraModule = {
        rank,
        alpha: patternValue(alphaPattern, name) ?? alpha,
        inFeatures: a.shape[1]!,
        outFeatures: b.shape[0]!,
        A: st.readF32(keys.A),
        B: st.readF32(keys.B),
      };
      if (keys.magnitude !== undefined) {
        const e = st.entry(keys.magnitude);
        if (e.shape.length !== 1 || e.shape[0] !== mod.outFeatures)
          throw new FormatError(
            weightsFile,
            `"${keys.magnitude}" is ${fmtShape(e.shape)}, the DoRA magnitude of ${name} must be [${mod.outFeatures}]`,
          );
        mod.magnitude = st.readF32(keys.magnitude);
      } else if (dora) {
        throw new FormatError(weightsFile, `has no tensor "${k.magnitude}" although use_dora is true`, {
          hint: 'the adapter is incomplete; save it again',
        });
      }
      modules.set(name, mod);
    }
    const targets = cfg['target_modules'];
    const data: LoraAdapterData = {
      baseModel: typeof cfg['base_model_name_or_path'] === 'string' ? cfg['base_model_name_or_path'] : '',
      rsLora: cfg['use_rslora'] === true,
      dora,
      dropout: typeof cfg['lora_dropout'] === 'number' ? cfg['lora_dropout'] : 0,
      targetModules: Array.isArray(targets)
        ? targets.filter((t): t is string => typeof t === 'string')
        : [...new Set([...modules.keys()].map(shortModuleName))],
      modules,
    };
    return data;
  } finally {
    st.close();
  }
}
