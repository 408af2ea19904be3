/** `qtune generate`: text from a model folder, GGUF file or Hub id. */
import { isFloatDType, isDType } from '../../engine/dtype.js';
import { createAdapterHook, type AdapterHook } from '../../peft/apply.js';
import { readAdapter } from '../adapter.js';
import { generate } from '../../models/generate.js';
import { loadModel } from '../../models/load.js';
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
  name: 'generate',
  summary: 'Generate text with a model (greedy or sampled); --chat applies its chat template.',
  usage:
    'qtune generate --model PATH|ORG/NAME [--adapter DIR|FILE.gguf] --prompt TEXT [--chat] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]',
  flags: {
    model: { type: 'string', help: 'model folder, .gguf file, or Hub id (required)' },
    prompt: { type: 'string', help: 'the prompt (required)' },
    chat: {
      type: 'boolean',
      default: false,
      help: "treat the prompt as a user message and apply the model's chat template",
    },
    system: { type: 'string', help: 'system message for --chat' },
    'max-new-tokens': { type: 'string', default: '64', help: 'tokens to generate at most' },
    temperature: { type: 'string', default: '0', help: '0 = greedy; higher samples more freely' },
    'top-k': { type: 'string', default: '0', help: 'sample among the k most likely tokens (0 = all)' },
    'top-p': { type: 'string', default: '1', help: 'sample within the top-p probability mass' },
    seed: { type: 'string', default: '0', help: 'sampling seed' },
    backend: { type: 'string', default: 'auto', help: 'device (QTUNE_BACKEND also works)' },
    dtype: { type: 'string', help: 'weight storage type: f32, f16 or bf16 (default: as stored in the file)' },
    quantize: { type: 'string', help: 'quantize the linear weights on load (q8_0, q4_0, q4_K, iq4_nl, ...)' },
    adapter: {
      type: 'string',
      help: 'a LoRA/DoRA adapter: a PEFT folder, a LoRA .gguf file or a checkpoint-N folder of a run',
    },
    ...DEVICE_FLAGS,
  },
};

function numberFlag(name: string, v: string | boolean | undefined, min: number, max = Infinity): number {
  const n = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(n) || n < min || n > max) {
    throw new UsageError(
      `--${name}=${String(v)} is not a number in [${min}, ${max === Infinity ? '∞' : max}]`,
    );
  }
  return n;
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const model = values['model'];
  const prompt = values['prompt'];
  if (typeof model !== 'string')
    throw new UsageError('generate: --model is required', 'a model folder, a .gguf file or a Hub id');
  if (typeof prompt !== 'string') throw new UsageError('generate: --prompt is required');
  const dtype = values['dtype'];
  if (dtype !== undefined && !(typeof dtype === 'string' && isDType(dtype) && isFloatDType(dtype))) {
    throw new UsageError(`--dtype=${String(dtype)} is not a float type`, 'use f32, f16 or bf16');
  }
  const quantize = values['quantize'];
  if (quantize !== undefined && !(typeof quantize === 'string' && isDType(quantize))) {
    throw new UsageError(
      `--quantize=${String(quantize)} is not a ggml type`,
      'use q8_0, q4_0, q4_K, iq4_nl, ...',
    );
  }
  const options = {
    maxNewTokens: intFlag('max-new-tokens', values['max-new-tokens'])!,
    temperature: numberFlag('temperature', values['temperature'], 0),
    topK: numberFlag('top-k', values['top-k'], 0),
    topP: numberFlag('top-p', values['top-p'], Number.MIN_VALUE, 1),
    seed: numberFlag('seed', values['seed'], 0),
  };
  const devices = devicesFlag(values);
  const loaded = await loadModel(model, {
    ...(devices === undefined ? { backend: String(values['backend']) } : { devices }),
    ...(dtype === undefined ? {} : { dtype }),
    ...(quantize === undefined ? {} : { quantize }),
  });
  let adapter: AdapterHook | null = null;
  try {
    if (typeof values['adapter'] === 'string')
      adapter = createAdapterHook(loaded.model, readAdapter(values['adapter'], loaded.config));
    const tok = loaded.tokenizer;
    const ids =
      values['chat'] === true
        ? tok.encode(
            tok.applyChatTemplate(
              [
                ...(typeof values['system'] === 'string'
                  ? [{ role: 'system', content: values['system'] }]
                  : []),
                { role: 'user', content: prompt },
              ],
              { addGenerationPrompt: true },
            ),
            { addSpecialTokens: false },
          )
        : tok.encode(prompt);
    const r = generate(loaded.model, tok, ids, {
      ...options,
      ...(adapter === null ? {} : { linear: adapter.hook }),
    });
    out(r.text);
    return 0;
  } finally {
    adapter?.dispose();
    loaded.dispose();
  }
}
