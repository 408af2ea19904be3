/** `qtune generate`: text from a model folder, GGUF file or Hub id. */
import { alpacaPrompt } from '../../data/formats.js';
import { chatEndOfTurn } from '../../data/tokenize.js';
import { isFloatDType, isDType } from '../../engine/dtype.js';
import type { Tokenizer } from '../../io/tokenizer.js';
import { createAdapterHook, type AdapterHook } from '../../peft/apply.js';
import { generate } from '../../models/generate.js';
import { loadModel } from '../../models/load.js';
import {
  PROMPT_FORMATS,
  RUN_CONFIG_FILE,
  adapterBaseModel,
  readAdapter,
  savedPromptFormat,
  type PromptFormat,
} from '../adapter.js';
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
    'qtune generate [--model PATH|ORG/NAME] [--adapter DIR|FILE.gguf] --prompt TEXT [--prompt-format alpaca|chat|none|auto] [--chat] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]',
  flags: {
    model: {
      type: 'string',
      help: "model folder, .gguf file, or Hub id (default: the base model the adapter's config names)",
    },
    prompt: { type: 'string', help: 'the prompt (required)' },
    'prompt-format': {
      type: 'string',
      help: "alpaca (the Stanford Alpaca prompt), chat (the model's chat template), none (the text as it is; the default) or auto (what the adapter's run trained on)",
    },
    chat: {
      type: 'boolean',
      default: false,
      help: "treat the prompt as a user message and apply the model's chat template (--prompt-format chat)",
    },
    system: { type: 'string', help: 'system message for the chat format' },
    input: { type: 'string', help: "the alpaca format's input (context for the instruction)" },
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

/**
 * The prompt format asked for: `--prompt-format` (auto: the one the adapter's run trained on,
 * {@link savedPromptFormat}), `--chat` (chat), else `fallback`. When the fallback is used and the
 * run trained on another format, `notice` says how to prompt it the same way (for stderr).
 * `--system` needs chat, `--input` alpaca.
 */
export function promptFormat(
  command: string,
  values: Record<string, string | boolean | undefined>,
  fallback: PromptFormat = 'none',
): { format: PromptFormat; notice: string | null } {
  const flag = values['prompt-format'];
  const choices = [...PROMPT_FORMATS, 'auto'];
  if (flag !== undefined && !choices.includes(String(flag)))
    throw new UsageError(
      `${command}: --prompt-format=${String(flag)} is not a prompt format`,
      `use ${choices.join(', ')}`,
    );
  if (values['chat'] === true && flag !== undefined && flag !== 'chat')
    throw new UsageError(
      `${command}: --chat and --prompt-format ${String(flag)} disagree`,
      'give one of them',
    );
  const adapter = typeof values['adapter'] === 'string' ? values['adapter'] : null;
  const saved = adapter === null ? null : savedPromptFormat(adapter);
  let format: PromptFormat;
  let notice: string | null = null;
  if (flag === 'auto') {
    if (saved === null)
      throw new UsageError(
        `${command}: --prompt-format auto, but ${adapter === null ? 'no --adapter is given' : `no ${RUN_CONFIG_FILE} of the run lies beside ${adapter}`}`,
        `give --prompt-format ${PROMPT_FORMATS.join('|')}`,
      );
    format = saved;
  } else if (flag !== undefined) format = flag as PromptFormat;
  else if (values['chat'] === true) format = 'chat';
  else {
    format = fallback;
    if (saved !== null && saved !== format)
      notice = `notice: ${adapter!}'s run trained on ${saved} prompts (dataset_format in its ${RUN_CONFIG_FILE}); this prompt is ${format}: add --prompt-format ${saved} (or auto) to prompt it as it was trained`;
  }
  if (typeof values['system'] === 'string' && format !== 'chat')
    throw new UsageError(
      `${command}: --system needs the chat prompt format, this is ${format}`,
      'add --chat',
    );
  if (typeof values['input'] === 'string' && format !== 'alpaca')
    throw new UsageError(
      `${command}: --input needs the alpaca prompt format, this is ${format}`,
      'add --prompt-format alpaca',
    );
  return { format, notice };
}

/** Prints a notice of {@link promptFormat} on stderr (once the model and adapter have loaded). */
export function printNotice(notice: string | null): void {
  if (notice !== null) process.stderr.write(`qtune: ${notice}\n`);
}

/** The token ids of `prompt` in a prompt format. */
export function promptIds(
  tok: Tokenizer,
  format: PromptFormat,
  prompt: string,
  values: Record<string, string | boolean | undefined>,
): number[] {
  if (format === 'alpaca')
    return tok.encode(alpacaPrompt(prompt, typeof values['input'] === 'string' ? values['input'] : ''));
  if (format === 'none') return tok.encode(prompt);
  const system = values['system'];
  const messages = [
    ...(typeof system === 'string' ? [{ role: 'system', content: system }] : []),
    { role: 'user', content: prompt },
  ];
  return tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), {
    addSpecialTokens: false,
  });
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  return generateFromFlags(values, promptFormat('generate', values), out);
}

/** `qtune generate` on parsed flags, in a prompt format (also `qtune chat --prompt`). */
export async function generateFromFlags(
  values: Record<string, string | boolean | undefined>,
  { format, notice }: { format: PromptFormat; notice: string | null },
  out: (s: string) => void,
  command = 'generate',
): Promise<number> {
  const prompt = values['prompt'];
  const adapterPath = values['adapter'];
  if (typeof values['model'] !== 'string' && typeof adapterPath !== 'string')
    throw new UsageError(`${command}: --model is required`, 'a model folder, a .gguf file or a Hub id');
  if (typeof prompt !== 'string') throw new UsageError(`${command}: --prompt is required`);
  const model =
    typeof values['model'] === 'string' ? values['model'] : adapterBaseModel(command, String(adapterPath));
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
    if (typeof adapterPath === 'string')
      adapter = createAdapterHook(loaded.model, readAdapter(adapterPath, loaded.config));
    const tok = loaded.tokenizer;
    const ids = promptIds(tok, format, prompt, values);
    printNotice(notice);
    // the chat format ends at the template's end-of-turn marker (as a token, or as text)
    const turn = format === 'chat' ? chatEndOfTurn(tok) : { ids: [], texts: [] };
    const r = generate(loaded.model, tok, ids, {
      ...options,
      stopIds: turn.ids,
      stopStrings: turn.texts,
      ...(adapter === null ? {} : { linear: adapter.hook }),
    });
    out(r.text);
    return 0;
  } finally {
    adapter?.dispose();
    loaded.dispose();
  }
}
