/**
 * `qtune export`: an adapter in another format — a PEFT folder, a LoRA .gguf or a training
 * checkpoint in, a PEFT folder, a llama.cpp LoRA .gguf or an mlx-lm adapter folder out.
 */
import { existsSync } from 'node:fs';
import { saveGgufLoraAdapter } from '../../peft/gguf-lora.js';
import { ADAPTER_DTYPES, type AdapterDType, type LoraAdapterData } from '../../peft/lora-weights.js';
import { saveMlxAdapter } from '../../peft/mlx-lora.js';
import { savePeftAdapter } from '../../peft/peft.js';
import { readGguf } from '../../io/gguf.js';
import type { LlamaConfig } from '../../models/config.js';
import { ggufToConfig } from '../../models/llama-gguf.js';
import { readConfig } from '../../models/load.js';
import { readAdapter } from '../adapter.js';
import { helpText, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'export',
  summary:
    'Export an adapter (PEFT folder, LoRA .gguf or checkpoint) as a PEFT folder, a llama.cpp LoRA .gguf or an mlx-lm adapter folder.',
  usage:
    'qtune export --from DIR|FILE.gguf --model BASE --format gguf|peft|mlx --out PATH [--adapter-dtype f32|f16|bf16]',
  flags: {
    from: {
      type: 'string',
      help: 'a PEFT adapter folder, a LoRA .gguf or a checkpoint-N folder (required)',
      aliases: ['adapter'], // the name eval, generate and merge give it
    },
    model: { type: 'string', help: 'the base model folder or .gguf (required: its shapes and heads)' },
    format: {
      type: 'string',
      help: 'gguf, peft or mlx (mlx-lm: adapters.safetensors + adapter_config.json) (required)',
    },
    out: { type: 'string', help: 'the .gguf file or folder to write (required)' },
    'adapter-dtype': {
      type: 'string',
      default: 'f32',
      help: 'storage type of the written tensors: f32, f16 or bf16',
    },
  },
};

function baseConfig(model: string): LlamaConfig {
  if (!existsSync(model))
    throw new UsageError(
      `export: --model ${model} does not exist`,
      'give the base model folder or .gguf file',
    );
  return model.endsWith('.gguf') ? ggufToConfig(readGguf(model)) : readConfig(model);
}

export function run(argv: string[], out: (s: string) => void): number {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const from = values['from'];
  const model = values['model'];
  const format = values['format'];
  const dest = values['out'];
  if (typeof from !== 'string') throw new UsageError('export: --from is required');
  if (typeof model !== 'string') throw new UsageError('export: --model is required', 'the base model');
  if (format !== 'gguf' && format !== 'peft' && format !== 'mlx')
    throw new UsageError(
      `export: --format=${String(format)} is not gguf or peft or mlx`,
      'use --format gguf, --format peft or --format mlx',
    );
  if (typeof dest !== 'string') throw new UsageError('export: --out is required');
  const dtype = values['adapter-dtype'];
  if (!(ADAPTER_DTYPES as readonly unknown[]).includes(dtype))
    throw new UsageError(
      `export: --adapter-dtype=${String(dtype)} is not a type adapters are saved in`,
      `use ${ADAPTER_DTYPES.join(', ')}`,
    );
  const adapterDType = dtype as AdapterDType;
  if (!existsSync(from)) throw new UsageError(`export: --from ${from} does not exist`);
  const config = baseConfig(model);
  const data: LoraAdapterData = readAdapter(from, config);
  if (format === 'gguf') {
    if (!dest.endsWith('.gguf'))
      throw new UsageError(`export: --out ${dest} must end with .gguf for --format gguf`);
    saveGgufLoraAdapter(dest, data, config, { dtype: adapterDType });
  } else if (format === 'mlx') {
    saveMlxAdapter(dest, data, config);
  } else {
    savePeftAdapter(dest, data, { dtype: adapterDType });
  }
  out(
    `exported ${data.modules.size} adapted modules (${data.dora ? 'DoRA' : 'LoRA'}) as ${format} (${adapterDType}): ${dest}`,
  );
  return 0;
}
