/** `qtune eval`: loss and perplexity of a model (and an adapter) on a dataset. */
import { createAdapterHook } from '../../peft/apply.js';
import { readAdapter } from '../adapter.js';
import { DATASET_FORMATS } from '../../data/formats.js';
import { loadDataset } from '../../data/dataset.js';
import { loadModel } from '../../models/load.js';
import { Batches } from '../../data/batches.js';
import { DEFAULT_CHUNK_TOKENS } from '../../tensor/ops/loss.js';
import { Evaluator, type Evaluation } from '../../train/evaluate.js';
import {
  DEVICE_FLAGS,
  devicesFlag,
  helpText,
  intFlag,
  parse,
  UsageError,
  type CommandSpec,
} from '../args.js';

export const spec: CommandSpec = {
  name: 'eval',
  summary: 'Loss and perplexity of a model (and a LoRA/DoRA adapter) on a dataset.',
  usage:
    'qtune eval --model PATH --dataset FILE [--format alpaca] [--adapter DIR|FILE.gguf] [--context-length N]',
  flags: {
    model: { type: 'string', help: 'model folder, .gguf file or Hub id (required)' },
    adapter: { type: 'string', help: 'a PEFT adapter folder, a LoRA .gguf or a checkpoint-N folder' },
    dataset: { type: 'string', help: 'a .json/.jsonl file or a Hub dataset id (required)' },
    format: {
      type: 'string',
      default: 'alpaca',
      help: `record layout: ${DATASET_FORMATS.join(', ')}`,
      aliases: ['dataset-format'], // qtune train's name
    },
    'context-length': {
      type: 'string',
      default: '512',
      help: 'tokens per sequence',
      aliases: ['sequence-len'], // Axolotl's name, as qtune train takes it
    },
    'max-samples': { type: 'string', help: 'evaluate at most this many records' },
    backend: { type: 'string', default: 'auto', help: 'device' },
    json: { type: 'boolean', default: false, help: 'print JSON' },
    ...DEVICE_FLAGS,
  },
};

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const model = values['model'];
  const dataset = values['dataset'];
  if (typeof model !== 'string') throw new UsageError('eval: --model is required');
  if (typeof dataset !== 'string' && values['format'] !== 'dummy')
    throw new UsageError('eval: --dataset is required');
  const T = intFlag('context-length', values['context-length'])!;
  const maxSamples = intFlag('max-samples', values['max-samples']);
  const devices = devicesFlag(values);
  const loaded = await loadModel(
    model,
    devices === undefined ? { backend: String(values['backend']) } : { devices },
  );
  const adapter =
    typeof values['adapter'] === 'string'
      ? createAdapterHook(loaded.model, readAdapter(values['adapter'], loaded.config))
      : null;
  try {
    // every record is evaluated: none is split off for validation
    const data = await loadDataset(
      {
        ...(typeof dataset === 'string' ? { path: dataset } : {}),
        format: String(values['format']),
        val_size: 0,
        shuffle: false,
        ...(maxSamples === undefined ? {} : { max_samples: maxSamples }),
      },
      loaded.tokenizer,
      T,
    );
    // the Trainer's evaluation: the output layer fused with the loss, so the [T, vocab] logits never
    // exist whole, only chunks of rows
    const evaluator = Evaluator.build({
      model: loaded.model,
      adapter: adapter?.hook,
      computeDType: null,
      frozen: null,
      crossEntropyChunk: DEFAULT_CHUNK_TOKENS,
      batch: 1,
      seqLen: T,
      packed: false,
    });
    let result: Evaluation;
    try {
      const batches = new Batches(data, {
        batchSize: 1,
        accumulation: 1,
        microBatchSize: 1,
        seed: 0,
        vocabSize: loaded.config.vocab_size,
      });
      result = evaluator.evaluate(data.train, (b) => batches.collate(b));
    } finally {
      evaluator.dispose();
    }
    const { loss, perplexity, tokens } = result;
    const samples = data.train.length;
    out(
      values['json'] === true
        ? JSON.stringify({ loss, perplexity, tokens, samples })
        : `loss ${loss.toFixed(4)}, perplexity ${perplexity.toFixed(3)} over ${tokens} target tokens in ${samples} samples`,
    );
    return 0;
  } finally {
    adapter?.dispose();
    loaded.dispose();
  }
}
