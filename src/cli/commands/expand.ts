/** `qtune expand`: Llama-Pro block expansion of a Hugging Face model folder. */
import { expandModel } from '../../peft/expand.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'expand',
  summary: 'Insert N zero-output copies of decoder blocks (Llama-Pro); train them with train_type llama_pro.',
  usage: 'qtune expand --model DIR --blocks N --out DIR',
  flags: {
    model: { type: 'string', help: 'Hugging Face model folder (required)' },
    blocks: { type: 'string', help: 'number of blocks to insert, spread evenly (required)' },
    out: { type: 'string', help: 'folder to write the expanded model to (required, must not exist)' },
  },
};

export function run(argv: string[], out: (s: string) => void): number {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const model = values['model'];
  const dest = values['out'];
  const blocks = intFlag('blocks', values['blocks']);
  if (typeof model !== 'string') throw new UsageError('expand: --model is required', 'give a model folder');
  if (typeof dest !== 'string') throw new UsageError('expand: --out is required', 'give a new folder');
  if (blocks === undefined) throw new UsageError('expand: --blocks is required', 'e.g. --blocks 2');
  const plan = expandModel(model, dest, blocks);
  out(
    `expanded ${plan.baseLayers} → ${plan.sourceOf.length} blocks; new blocks ${plan.newLayers.join(', ')} (copies of ${plan.newLayers.map((i) => plan.sourceOf[i]).join(', ')}, o_proj and down_proj zeroed); wrote ${dest}`,
  );
  return 0;
}
