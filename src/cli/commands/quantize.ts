/** `qtune quantize`: quantize a model's linear weights and save it as GGUF. */
import { formatBytes } from '../../engine/memory.js';
import { BackendManager } from '../../backends/manager.js';
import { loadModel } from '../../models/load.js';
import { createQuantizer } from '../../train/quantize.js';
import { isQuantMethod, QUANT_METHODS } from '../../quant/methods.js';
import type { QuantizationConfig } from '../../quant/config.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'quantize',
  summary: 'Quantize a model (int8, int4, nf4, k-quants, hqq, ...) and save it as GGUF.',
  usage: 'qtune quantize --model PATH|ORG/NAME --method METHOD [--bits N] [--skip GLOB,...] --out FILE.gguf',
  flags: {
    model: { type: 'string', help: 'model folder, .gguf file or Hub id (required)' },
    method: { type: 'string', help: `one of ${QUANT_METHODS.join(', ')} (required)` },
    bits: { type: 'string', help: 'bit width where the method has several (hqq: 4 or 5)' },
    skip: {
      type: 'string',
      help: 'comma-separated module globs kept in full precision (default: lm_head,model.embed_tokens)',
    },
    out: { type: 'string', help: 'GGUF file to write (required)' },
    backend: { type: 'string', default: 'cpu', help: 'device to quantize on' },
  },
};

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const model = values['model'];
  const method = values['method'];
  const file = values['out'];
  if (typeof model !== 'string') throw new UsageError('quantize: --model is required');
  if (typeof method !== 'string' || !isQuantMethod(method))
    throw new UsageError(
      `--method=${String(method)} is not a method`,
      `use one of ${QUANT_METHODS.join(', ')}`,
    );
  if (typeof file !== 'string' || !file.endsWith('.gguf'))
    throw new UsageError(`--out=${String(file)} must name a .gguf file`);
  const config: QuantizationConfig = { method };
  const bits = intFlag('bits', values['bits']);
  if (bits !== undefined) config.bits = bits;
  if (typeof values['skip'] === 'string')
    config.skipModules = values['skip']
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
  const backend = new BackendManager().select(String(values['backend']));
  const quantizer = createQuantizer(backend, config);
  const loaded = await loadModel(model, { backend });
  try {
    const report = quantizer.quantizeModel(loaded.model);
    quantizer.save(loaded.model, loaded.tokenizer, file);
    out(
      `quantized ${report.quantized.length} weights with ${method}: ${formatBytes(report.bytesBefore)} → ${formatBytes(report.bytesAfter)}; wrote ${file}`,
    );
    for (const k of report.kept) if (k.reason !== 'skipped by the config') out(`kept ${k.name}: ${k.reason}`);
    return 0;
  } finally {
    loaded.dispose();
  }
}
