/**
 * `loadModel(source, options)`: a Hugging Face folder, a GGUF file, or a Hub id, loaded onto a
 * backend with its tokenizer.
 *
 * Strategies:
 * - `low_memory` (default): the weights are allocated at their final size first, then each tensor
 *   is read, converted or quantized and written, one at a time — peak memory stays near the final
 *   model plus one tensor;
 * - `full`: every tensor is read into memory, then converted — simpler, twice the peak or more.
 *
 * A model can be split over several devices (`devices`): whole decoder blocks per device, by free
 * memory or as asked (src/models/device-map.ts).
 *
 * @example
 * const { model, tokenizer } = await loadModel('tiny-model', { backend: 'cpu', quantize: 'q8_0' });
 * const split = await loadModel('tiny-model', { devices: { devices: ['vulkan0', 'cpu'] } });
 */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { BackendManager } from '../backends/manager.js';
import type { Backend } from '../engine/device.js';
import { GGML_TYPE_IDS, isFloatDType, isQuantDType, type DType, type FloatDType } from '../engine/dtype.js';
import { getEngine } from '../engine/library.js';
import { ConfigError, FormatError, QtuneError } from '../errors.js';
import { readGguf, readGgufTensor, type GgufFile } from '../io/gguf.js';
import { readJsonObject } from '../io/json.js';
import { downloadModel, isHubId, type HubOptions } from '../io/hub.js';
import { SafetensorsCheckpoint } from '../io/safetensors.js';
import { Tokenizer } from '../io/tokenizer.js';
import { decode, tensorBytes } from '../tensor/host.js';
import { parseLlamaConfig, type LlamaConfig } from './config.js';
import { planDeviceMap, type DeviceMap } from './device-map.js';
import { ggufToConfig, ggufTensorToHf, ggufTokenizer, ggufToHfName } from './llama-gguf.js';
import { LlamaModel, llamaWeights, weightGroup, type WeightSpec } from './llama.js';

export type LoadStrategy = 'full' | 'low_memory';

/** A model split over several devices: which devices, and how the blocks are shared among them. */
export interface DeviceRequest {
  /**
   * The devices in block order (backends or names: `vulkan0`, `cuda1`, `cpu`), or `auto`: every
   * device that is not a software renderer. May be left out when `deviceMap` names every block's.
   */
  devices?: readonly (Backend | string)[] | 'auto';
  /** Proportions of the blocks per device, in the order of `devices` (llama.cpp's --tensor-split). */
  layerSplit?: readonly number[];
  /** The device of every decoder block. */
  deviceMap?: readonly (Backend | string)[];
}

export interface LoadOptions extends HubOptions {
  /** A backend, or a device request for BackendManager.select ('auto', 'cpu', 'vulkan', ...). */
  backend?: Backend | string;
  /** Split the model over several devices instead (not with `backend`). */
  devices?: DeviceRequest;
  strategy?: LoadStrategy;
  /** Storage type of the embeddings and linear weights (default f32; norms and biases stay f32). */
  dtype?: FloatDType;
  /** Quantize the decoder blocks' linear weights to this type as they are read. */
  quantize?: DType;
  /**
   * Make every weight trainable (full fine-tuning), or those a predicate picks by name (Llama-Pro's
   * new blocks). Trainable weights are stored in f32 (master weights) whatever `dtype` says.
   */
  trainable?: boolean | ((name: string) => boolean);
}

export interface LoadedModel {
  model: LlamaModel;
  tokenizer: Tokenizer;
  config: LlamaConfig;
  source: { kind: 'folder' | 'gguf'; path: string };
  /** Weights kept in `dtype` although quantization was asked for (rows not whole blocks). */
  notQuantized: string[];
  dispose(): void;
}

/** Where a tensor's bytes come from, before conversion. */
interface Source {
  names: string[];
  /** The tensor's storage type in the file. */
  dtypeOf(name: string): DType;
  shapeOf(name: string): number[];
  /** Raw bytes in `dtypeOf(name)`, in a new array or at the start of `into`. */
  read(name: string, into?: Uint8Array): Uint8Array;
  close(): void;
}

const ST_TO_DTYPE: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/**
 * Where a multimodal checkpoint keeps its text model's tensors (Gemma 3: `language_model.model.*`,
 * or `model.language_model.*` as transformers 4.52 on saves it), read under the text model's names.
 */
const TEXT_MODEL_PREFIXES: [string, string][] = [
  ['language_model.model.', 'model.'],
  ['language_model.lm_head.', 'lm_head.'],
  ['model.language_model.', 'model.'],
];

/** The tensors of a multimodal checkpoint that are not its text model's (not read). */
const VISION_PREFIXES = [
  'vision_tower.',
  'multi_modal_projector.',
  'model.vision_tower.',
  'model.multi_modal_projector.',
];

function folderSource(dir: string): Source {
  const ckpt = SafetensorsCheckpoint.open(dir);
  const stored = new Map<string, string>(); // the text model's name → the checkpoint's
  const all = ckpt.names();
  const multimodal = all.some((n) => TEXT_MODEL_PREFIXES.some(([p]) => n.startsWith(p)));
  for (const n of all) {
    const prefix = multimodal ? TEXT_MODEL_PREFIXES.find(([p]) => n.startsWith(p)) : undefined;
    if (prefix !== undefined) stored.set(prefix[1] + n.slice(prefix[0].length), n);
    else if (!multimodal) stored.set(n, n);
  }
  const vision = all.filter((n) => VISION_PREFIXES.some((p) => n.startsWith(p))).length;
  if (multimodal && vision > 0)
    process.stderr.write(
      `qtune: ${dir} is a multimodal checkpoint: only its text model is loaded (the vision tower's ${vision} tensors are not read)\n`,
    );
  const real = (n: string): string => stored.get(n) ?? n;
  return {
    names: [...stored.keys()],
    dtypeOf: (n) => {
      const e = ckpt.entry(real(n));
      const d = ST_TO_DTYPE[e.dtype];
      if (d === undefined)
        throw new FormatError(e.file, `tensor ${n} is ${e.dtype}; qtune reads F32, F16 and BF16 weights`);
      return d;
    },
    shapeOf: (n) => ckpt.entry(real(n)).shape,
    read: (n, into) => ckpt.readRaw(real(n), into),
    close: () => ckpt.close(),
  };
}

function resolveBackend(b: Backend | string | undefined): Backend {
  if (b === undefined || typeof b === 'string') return new BackendManager().select(b);
  return b;
}

/** Where the weights go: one backend, or a device map planned once the weights' sizes are known. */
type Placement = Backend | ((bytesOf: (group: string) => number, layers: number) => DeviceMap);

function resolvePlacement(o: LoadOptions): Placement {
  const req = o.devices;
  if (req === undefined) return resolveBackend(o.backend);
  if (o.backend !== undefined)
    throw new ConfigError('backend and devices are both set', {
      hint: 'give devices to split the model, or backend to keep it on one device',
    });
  const manager = new BackendManager();
  const one = (d: Backend | string) => (typeof d === 'string' ? manager.select(d) : d);
  const deviceMap = req.deviceMap?.map(one);
  const devices =
    req.devices === 'auto'
      ? manager.usableDevices()
      : req.devices !== undefined
        ? req.devices.map(one)
        : [...new Set(deviceMap ?? [])];
  if (devices.length === 0)
    throw new ConfigError('devices: no device given', { hint: 'list devices, e.g. [vulkan0, cpu], or auto' });
  const unlisted = deviceMap?.find((d) => !devices.includes(d));
  if (unlisted !== undefined)
    throw new ConfigError(
      `device_map: ${unlisted.name} is not among devices (${devices.map((d) => d.name).join(', ')})`,
      {
        hint: 'add it to devices, or leave devices out',
      },
    );
  return (bytesOf, layers) =>
    planDeviceMap(layers, bytesOf, {
      devices,
      ...(req.layerSplit === undefined ? {} : { layerSplit: req.layerSplit }),
      ...(deviceMap === undefined ? {} : { deviceMap }),
    });
}

/** Loads a model and its tokenizer. */
export async function loadModel(source: string, o: LoadOptions = {}): Promise<LoadedModel> {
  let location = source;
  if (!existsSync(source)) {
    if (!isHubId(source)) {
      const from = path.isAbsolute(source)
        ? ''
        : `relative paths are from the current folder, ${process.cwd()}; `;
      throw new QtuneError('NOT_FOUND', `model: path ${source} does not exist`, {
        hint: `${from}give a model folder, a .gguf file, or a Hub id such as org/name`,
      });
    }
    location = await downloadModel(source, o);
  }
  const placement = resolvePlacement(o);
  if (o.quantize !== undefined && !isQuantDType(o.quantize) && !isFloatDType(o.quantize)) {
    throw new QtuneError('INVALID_ARGUMENT', `quantize: ${o.quantize} is not a weight type`);
  }
  if (statSync(location).isFile()) {
    if (!location.endsWith('.gguf'))
      throw new QtuneError('INVALID_ARGUMENT', `${location} is a file but not .gguf`, {
        hint: 'give a model folder or a .gguf file',
      });
    return loadGguf(location, placement, o);
  }
  const config = readConfig(location);
  const genFile = path.join(location, 'generation_config.json');
  const genEos = existsSync(genFile) ? readJsonObject(genFile)['eos_token_id'] : undefined;
  const genIds: unknown[] = Array.isArray(genEos) ? genEos : [genEos];
  const extraEos = [...config.eos_token_id, ...genIds.filter((x): x is number => typeof x === 'number')];
  const tokenizer = Tokenizer.fromFolder(location, extraEos);
  tokenizer.fitTo(config.vocab_size, path.join(location, 'tokenizer.json'));
  const { model, notQuantized } = folderWeights(location, config, placement, o);
  return {
    model,
    tokenizer,
    config,
    source: { kind: 'folder', path: location },
    notQuantized,
    dispose: () => model.dispose(),
  };
}

/**
 * The weights of a Hugging Face folder (or a .safetensors file) as a model, without a tokenizer: on
 * `backend`, or split over `o.devices` (then `backend` must be undefined).
 */
export function loadWeights(
  location: string,
  config: LlamaConfig,
  backend: Backend | string | undefined,
  o: Omit<LoadOptions, keyof HubOptions | 'backend'> = {},
): { model: LlamaModel; notQuantized: string[] } {
  const placement = resolvePlacement({
    ...(backend === undefined ? {} : { backend }),
    ...(o.devices === undefined ? {} : { devices: o.devices }),
  });
  return folderWeights(location, config, placement, o);
}

function folderWeights(
  location: string,
  config: LlamaConfig,
  placement: Placement,
  o: Omit<LoadOptions, keyof HubOptions | 'backend'>,
): { model: LlamaModel; notQuantized: string[] } {
  const src = folderSource(location);
  try {
    return fill(config, src, placement, o, location);
  } finally {
    src.close();
  }
}

/** Reads and validates a folder's config.json. */
export function readConfig(dir: string): LlamaConfig {
  const configFile = path.join(dir, 'config.json');
  if (!existsSync(configFile))
    throw new QtuneError('NOT_FOUND', `${dir} has no config.json`, {
      hint: 'point at a Hugging Face model folder',
    });
  try {
    return parseLlamaConfig(readJsonObject(configFile));
  } catch (e) {
    if (e instanceof ConfigError)
      throw new ConfigError(
        `${configFile}: ${e.problem.replace('config.json: ', '')}`,
        e.hint === undefined ? {} : { hint: e.hint },
      );
    throw e;
  }
}

function loadGguf(file: string, placement: Placement, o: LoadOptions): LoadedModel {
  const { model, config, notQuantized, gguf } = loadGgufWeights(file, placement, o);
  let tokenizer: Tokenizer;
  try {
    tokenizer = ggufTokenizer(gguf, config);
    tokenizer.fitTo(config.vocab_size, file);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return {
    model,
    tokenizer,
    config,
    source: { kind: 'gguf', path: file },
    notQuantized,
    dispose: () => model.dispose(),
  };
}

/**
 * The weights and config of a GGUF model file, without its tokenizer (the GGUF twin of
 * {@link loadWeights}).
 */
export function loadGgufWeights(
  file: string,
  placement: Placement | string | undefined,
  o: Omit<LoadOptions, keyof HubOptions | 'backend'> = {},
): { model: LlamaModel; config: LlamaConfig; notQuantized: string[]; gguf: GgufFile } {
  const g = readGguf(file);
  const config = ggufToConfig(g);
  const hfNames = new Map<string, string>();
  for (const name of g.tensors.keys()) {
    const hf = ggufToHfName(name, config);
    if (hf !== null) hfNames.set(hf, name);
  }
  const src: Source = {
    names: [...hfNames.keys()],
    dtypeOf: (n) => g.tensors.get(hfNames.get(n)!)!.dtype,
    shapeOf: (n) => g.tensors.get(hfNames.get(n)!)!.shape,
    read: (n, into) =>
      ggufTensorToHf(
        config,
        n,
        g.tensors.get(hfNames.get(n)!)!.shape,
        readGgufTensor(g, hfNames.get(n)!, into),
      ),
    close: () => undefined,
  };
  const { model, notQuantized } = fill(
    config,
    src,
    typeof placement === 'function' ? placement : resolveBackend(placement),
    o,
    file,
  );
  return { model, config, notQuantized, gguf: g };
}

function fill(
  config: LlamaConfig,
  src: Source,
  placement: Placement,
  o: Omit<LoadOptions, keyof HubOptions | 'backend'>,
  file: string,
): { model: LlamaModel; notQuantized: string[] } {
  const { api } = getEngine();
  // the config's layer count is checked against the file before every layer's weights are listed
  let layers = 0;
  for (const n of src.names) {
    const m = /^model\.layers\.(\d+)\./.exec(n);
    if (m !== null) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (config.num_hidden_layers > layers)
    throw new FormatError(
      file,
      `holds ${layers} decoder layers, the config has num_hidden_layers = ${config.num_hidden_layers}`,
      {
        hint: 'the checkpoint does not match its config',
      },
    );
  const specs = llamaWeights(config);
  const have = new Set(src.names);
  for (const w of specs) {
    if (!have.has(w.name))
      throw new FormatError(file, `has no tensor ${w.name}`, {
        hint: 'the checkpoint does not match its config',
      });
    const stored = src.dtypeOf(w.name);
    if (!isFloatDType(stored) && !isQuantDType(stored))
      throw new FormatError(file, `tensor ${w.name} is stored as ${stored}`, {
        hint: 'qtune reads weights stored as f32, f16, bf16 or a quantized type',
      });
    const shape = src.shapeOf(w.name);
    if (shape.join() !== w.shape.join()) {
      throw new FormatError(
        file,
        `tensor ${w.name} is [${shape.join(', ')}], the config needs [${w.shape.join(', ')}]`,
      );
    }
  }
  const notQuantized: string[] = [];
  const float: DType = o.dtype ?? 'f32';
  const trains = (name: string): boolean =>
    typeof o.trainable === 'function' ? o.trainable(name) : o.trainable === true;
  const targetOf = (w: WeightSpec): DType => {
    if (w.role === 'norm' || w.role === 'bias' || trains(w.name)) return 'f32';
    if (o.quantize !== undefined && w.role === 'linear') {
      if (w.shape[1]! % api.blck_size(GGML_TYPE_IDS[o.quantize]) === 0) return o.quantize;
      notQuantized.push(w.name);
    }
    // without a requested type, keep the file's (a quantized GGUF model stays quantized)
    return o.dtype === undefined && o.quantize === undefined ? src.dtypeOf(w.name) : float;
  };
  const targets = new Map(specs.map((w) => [w.name, targetOf(w)]));
  // what each weight group will occupy, for planning a split: a trainable weight also needs its
  // gradient and (AdamW's) two moments, four times its f32 bytes in all
  const groupBytes = new Map<string, number>();
  for (const w of specs) {
    const g = weightGroup(w.name);
    const bytes = tensorBytes(targets.get(w.name)!, w.shape) * (trains(w.name) ? 4 : 1);
    groupBytes.set(g, (groupBytes.get(g) ?? 0) + bytes);
  }
  const numel = (name: string) => src.shapeOf(name).reduce((a, b) => a * b, 1);
  // low_memory reuses one byte buffer and one f32 buffer, sized for the largest tensor, for every
  // tensor: the only garbage left per tensor is its quantized bytes
  const largest = specs.reduce((m, w) => Math.max(m, numel(w.name)), 0);
  const scratch =
    o.strategy === 'full' ? null : { bytes: new Uint8Array(largest * 4), f32: new Float32Array(largest) };
  const convert = (name: string, raw: Uint8Array): Uint8Array | Float32Array => {
    const from = src.dtypeOf(name);
    if (from === targets.get(name)) return raw;
    if (from === 'f32' && raw.byteOffset % 4 === 0)
      return new Float32Array(raw.buffer, raw.byteOffset, numel(name));
    return decode(from, raw, numel(name), scratch?.f32);
  };

  // full: everything in host memory first; low_memory: one tensor at a time into the allocated model
  const preloaded = o.strategy === 'full' ? new Map(specs.map((w) => [w.name, src.read(w.name)])) : null;
  {
    const frozen = specs.find((w) => trains(w.name) && !isFloatDType(targets.get(w.name)!));
    if (frozen !== undefined) {
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `trainable: ${frozen.name} is ${targets.get(frozen.name)!}; only float weights train`,
        {
          hint: 'load with dtype f32 (or bf16/f16) for full fine-tuning, or train an adapter over the quantized base',
        },
      );
    }
  }
  const map =
    typeof placement === 'function'
      ? placement((group) => groupBytes.get(group) ?? 0, config.num_hidden_layers)
      : placement;
  const model = LlamaModel.allocate(
    map,
    config,
    (w) => targets.get(w.name)!,
    (w) => trains(w.name),
  );
  try {
    for (const w of specs) {
      const raw = preloaded?.get(w.name) ?? src.read(w.name, scratch?.bytes);
      model.write(w.name, convert(w.name, raw));
    }
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, notQuantized };
}
