/** `qtune init-tiny DIR`: write a tiny random Llama-family model folder (no download). */
import {
  createTinyModel,
  TINY_FAMILIES,
  TINY_TOKENIZERS,
  type TinyFamily,
  type TinyTokenizer,
} from '../../models/tiny.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'init-tiny',
  summary: 'Write a tiny random Llama/Qwen2/Qwen3 model as a Hugging Face folder, with a real tokenizer.',
  usage: `qtune init-tiny DIR [--family ${Object.keys(TINY_FAMILIES).join('|')}] [--tokenizer ${TINY_TOKENIZERS.join('|')}] [--seed N]`,
  flags: {
    family: {
      type: 'string',
      default: 'llama',
      help: `architecture: ${Object.entries(TINY_FAMILIES)
        .map(([f, d]) => `${f} (${d.about})`)
        .join('; ')}`,
    },
    tokenizer: {
      type: 'string',
      help: `tokenizer: ${TINY_TOKENIZERS.join(', ')} (default: the family's, ${Object.entries(TINY_FAMILIES)
        .map(([f, d]) => `${d.tokenizer} for ${f}`)
        .join(', ')})`,
    },
    hidden: { type: 'string', default: '256', help: 'hidden_size' },
    intermediate: { type: 'string', default: '688', help: 'intermediate_size' },
    layers: { type: 'string', default: '4', help: 'num_hidden_layers' },
    heads: { type: 'string', default: '8', help: 'num_attention_heads' },
    'kv-heads': { type: 'string', default: '4', help: 'num_key_value_heads' },
    seed: { type: 'string', default: '0', help: 'seed of the random weights' },
  },
};

export function run(argv: string[], out: (s: string) => void): number {
  const { values, positionals } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const dir = positionals[0];
  if (dir === undefined)
    throw new UsageError('init-tiny: give the folder to write, e.g. `qtune init-tiny tiny-model`');
  const family = String(values['family']);
  if (!Object.hasOwn(TINY_FAMILIES, family))
    throw new UsageError(
      `--family=${family} is not supported`,
      `use ${Object.keys(TINY_FAMILIES).join(', ')}`,
    );
  const tok = values['tokenizer'];
  if (tok !== undefined && !(TINY_TOKENIZERS as readonly string[]).includes(String(tok))) {
    throw new UsageError(`--tokenizer=${String(tok)} is not available`, `use ${TINY_TOKENIZERS.join(', ')}`);
  }
  const seedRaw = String(values['seed']);
  const seed = Number(seedRaw);
  if (!Number.isInteger(seed) || seed < 0)
    throw new UsageError(`--seed=${seedRaw} is not a whole number >= 0`);
  const config = createTinyModel(dir, {
    family: family as TinyFamily,
    ...(tok === undefined ? {} : { tokenizer: tok as TinyTokenizer }),
    hiddenSize: intFlag('hidden', values['hidden'])!,
    intermediateSize: intFlag('intermediate', values['intermediate'])!,
    layers: intFlag('layers', values['layers'])!,
    heads: intFlag('heads', values['heads'])!,
    kvHeads: intFlag('kv-heads', values['kv-heads'])!,
    seed,
  });
  out(
    `wrote ${dir}: ${config.model_type}, hidden ${config.hidden_size}, ${config.num_hidden_layers} layers, ${config.num_attention_heads} heads (${config.num_key_value_heads} kv), vocab ${config.vocab_size}`,
  );
  return 0;
}
