/** `qtune merge`: fuse a LoRA/DoRA adapter into its base model and save the result. */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { readAdapter } from '../adapter.js';
import { mergeAdapter } from '../../peft/merge.js';
import { saveModel, type SaveDType, type SaveFormat } from '../../models/save.js';
import { QtuneError } from '../../errors.js';
import { loadModel } from '../../models/load.js';
import { helpText, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'merge',
  summary: 'Merge a LoRA/DoRA adapter (PEFT folder or LoRA .gguf) into its base model and save it.',
  usage:
    'qtune merge --model DIR|FILE.gguf --adapter DIR|FILE.gguf --out OUT [--dtype f16|bf16|f32] [--format safetensors|gguf]',
  flags: {
    model: { type: 'string', help: 'base model: Hugging Face folder, .gguf file or Hub id (required)' },
    adapter: {
      type: 'string',
      help: 'PEFT adapter folder (adapter_config.json + adapter_model.safetensors), LoRA .gguf or checkpoint-N folder (required)',
    },
    out: { type: 'string', help: 'output folder (safetensors) or .gguf file; must not exist (required)' },
    dtype: {
      type: 'string',
      help: "storage type of the saved weights (default: the base model's, else f32)",
    },
    format: { type: 'string', help: 'safetensors or gguf (default: gguf when --out ends with .gguf)' },
    backend: { type: 'string', default: 'cpu', help: 'device the model is loaded on' },
  },
};

const DTYPES = ['f32', 'f16', 'bf16'] as const;
const TORCH_TO_DTYPE: Record<string, SaveDType> = { float32: 'f32', float16: 'f16', bfloat16: 'bf16' };

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  if (positionals.length > 0)
    throw new UsageError(
      `merge: unexpected argument "${positionals[0]!}"`,
      'pass --model, --adapter and --out',
    );
  const modelPath = values['model'];
  const adapterPath = values['adapter'];
  const outPath = values['out'];
  if (typeof modelPath !== 'string')
    throw new UsageError('merge: --model is required', 'see `qtune merge --help`');
  if (typeof adapterPath !== 'string')
    throw new UsageError('merge: --adapter is required', 'see `qtune merge --help`');
  if (typeof outPath !== 'string')
    throw new UsageError('merge: --out is required', 'see `qtune merge --help`');
  const dtypeFlag = values['dtype'];
  if (dtypeFlag !== undefined && !(DTYPES as readonly unknown[]).includes(dtypeFlag))
    throw new UsageError(
      `--dtype=${String(dtypeFlag)} is not a type merge writes`,
      `use ${DTYPES.join(', ')}`,
    );
  const formatFlag = values['format'];
  if (formatFlag !== undefined && formatFlag !== 'safetensors' && formatFlag !== 'gguf')
    throw new UsageError(
      `--format=${String(formatFlag)} is not a format merge writes`,
      'use safetensors or gguf',
    );
  const format: SaveFormat = formatFlag ?? (outPath.endsWith('.gguf') ? 'gguf' : 'safetensors');
  if (format === 'gguf' && !outPath.endsWith('.gguf'))
    throw new UsageError(`--out=${outPath} must name a .gguf file with --format gguf`);
  if (format === 'safetensors' && outPath.endsWith('.gguf'))
    throw new UsageError(
      `--out=${outPath} names a .gguf file but --format is safetensors`,
      'give a folder name',
    );

  if (existsSync(outPath) && (statSync(outPath).isFile() || readdirSync(outPath).length > 0))
    throw new UsageError(
      `--out=${outPath} already exists`,
      'choose a new output path, or remove the old one first',
    );
  if (!existsSync(adapterPath))
    throw new QtuneError('NOT_FOUND', `adapter ${adapterPath} does not exist`, {
      hint: 'give a PEFT adapter folder, a LoRA .gguf file or a checkpoint-N folder',
    });

  // the base is loaded in f32 so the merge is exact (a quantized GGUF base is dequantized)
  const loaded = await loadModel(modelPath, { backend: String(values['backend']), dtype: 'f32' });
  try {
    const adapter = readAdapter(adapterPath, loaded.config);
    const report = mergeAdapter(loaded.model, adapter);
    const dtype: SaveDType =
      (dtypeFlag as SaveDType | undefined) ?? TORCH_TO_DTYPE[loaded.config.torch_dtype ?? ''] ?? 'f32';
    saveModel(loaded.model, outPath, loaded.tokenizer, { dtype, format });
    const kind = adapter.dora ? 'DoRA' : adapter.rsLora ? 'rsLoRA' : 'LoRA';
    out(
      `merged a ${kind} adapter into ${report.merged.length} weights; wrote ${outPath} (${format}, ${dtype})`,
    );
    return 0;
  } finally {
    loaded.dispose();
  }
}
