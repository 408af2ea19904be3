/**
 * Samples during training: the `evalPrompts` generated at each evaluation (and at the end) by the
 * model as trained so far, its adapter applied without dropout, greedy unless the sampling options
 * say otherwise. A prompt is put to the model in the run's prompt format, as `qtune generate
 * --prompt-format` does: `none` (the text as it is), `alpaca` (the Stanford Alpaca prompt) or `chat`
 * (a user message through the model's chat template, ending at its end-of-turn marker).
 *
 * @example
 * const s = EvalSamples.create(model, tokenizer, { evalPrompts: ['Call me'], evalGeneration: { maxNewTokens: 16 } });
 * s?.generate(lora); // [{ prompt: 'Call me', completion: ' Ishmael.' }]
 */
import { ConfigError } from '../errors.js';
import { alpacaPrompt } from '../data/formats.js';
import { chatEndOfTurn } from '../data/tokenize.js';
import type { ChatMessage, Tokenizer } from '../io/tokenizer.js';
import { generate, type GenerateOptions } from '../models/generate.js';
import type { LlamaModel } from '../models/llama.js';
import type { LoraLayers } from '../peft/lora.js';

/** A prompt: a text (in {@link EvalPromptFormat}), or chat messages (through the chat template). */
export type EvalPrompt = string | { messages: readonly ChatMessage[] };

export const EVAL_PROMPT_FORMATS = ['none', 'alpaca', 'chat'] as const;
export type EvalPromptFormat = (typeof EVAL_PROMPT_FORMATS)[number];

/** How the samples are generated (Hugging Face generate()'s names). Greedy, 64 new tokens by default. */
export interface EvalGeneration {
  maxNewTokens?: number;
  /** 0 = greedy (the default). */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Sampling seed (default the run's): each evaluation samples with the same one. */
  seed?: number;
}

/** One generation: the prompt as given (a chat prompt's last message), and the text generated. */
export interface Sample {
  prompt: string;
  completion: string;
}

interface Encoded {
  prompt: string;
  ids: number[];
  chat: boolean;
}

export class EvalSamples {
  private constructor(
    private readonly model: LlamaModel,
    private readonly tokenizer: Tokenizer,
    private readonly prompts: readonly Encoded[],
    private readonly options: GenerateOptions,
  ) {}

  /**
   * The samples of `o.evalPrompts` over `model` (null without prompts). Refuses prompts when the
   * model has no tokenizer, an unknown format, a chat prompt without a chat template, and
   * generation options out of range, before the run starts. A tokenizer without a chat template
   * formats chat prompts in ChatML, as everywhere in qtune.
   */
  static create(
    model: LlamaModel,
    tokenizer: Tokenizer | null,
    o: {
      evalPrompts?: readonly EvalPrompt[];
      evalPromptFormat?: EvalPromptFormat;
      evalGeneration?: EvalGeneration;
      seed?: number;
    },
  ): EvalSamples | null {
    const prompts = o.evalPrompts ?? [];
    if (prompts.length === 0) return null;
    const format = o.evalPromptFormat ?? 'none';
    if (!EVAL_PROMPT_FORMATS.includes(format))
      throw new ConfigError(`eval_prompt_format: ${JSON.stringify(format)} is not a prompt format`, {
        hint: `use ${EVAL_PROMPT_FORMATS.join(', ')}`,
      });
    const g = o.evalGeneration ?? {};
    checkGeneration(g);
    if (tokenizer === null)
      throw new ConfigError('eval_prompts: this model has no tokenizer to encode them', {
        hint: 'give a model folder with tokenizer.json, or leave eval_prompts out',
      });
    const encoded = prompts.map((p, i) => encodePrompt(tokenizer, p, format, i));
    const options = {
      maxNewTokens: g.maxNewTokens ?? 64,
      temperature: g.temperature ?? 0,
      topK: g.topK ?? 0,
      topP: g.topP ?? 1,
      seed: g.seed ?? o.seed ?? 42,
    };
    return new EvalSamples(model, tokenizer, encoded, options);
  }

  /** Generates every prompt with the model as it is now, and `lora` (the run's adapter) applied. */
  generate(lora: LoraLayers | null): Sample[] {
    const linear = lora?.inferenceHook();
    const turn = chatEndOfTurn(this.tokenizer);
    return this.prompts.map((p) => {
      const r = generate(this.model, this.tokenizer, p.ids, {
        ...this.options,
        ...(p.chat ? { stopIds: turn.ids, stopStrings: turn.texts } : {}),
        ...(linear === undefined ? {} : { linear }),
      });
      return { prompt: p.prompt, completion: r.text };
    });
  }
}

function encodePrompt(tok: Tokenizer, p: EvalPrompt, format: EvalPromptFormat, i: number): Encoded {
  const given: unknown = typeof p === 'string' ? null : p.messages; // from YAML or JSON: checked
  const messages = given as readonly ChatMessage[] | null;
  if (given !== null && !(Array.isArray(given) && given.length > 0))
    throw new ConfigError(`eval_prompts[${i}]: a prompt is a string or { messages: [...] }`, {
      hint: 'give a text, or a non-empty list of { role, content } messages',
    });
  if (typeof p === 'string' && p === '')
    throw new ConfigError(`eval_prompts[${i}]: the prompt is empty`, { hint: 'remove it, or give a text' });
  if (messages !== null || format === 'chat') {
    const m = messages ?? [{ role: 'user', content: p as string }];
    const text = tok.applyChatTemplate(m, { addGenerationPrompt: true });
    return { prompt: m.at(-1)!.content, ids: tok.encode(text, { addSpecialTokens: false }), chat: true };
  }
  const text = p as string;
  return { prompt: text, ids: tok.encode(format === 'alpaca' ? alpacaPrompt(text) : text), chat: false };
}

function checkGeneration(g: EvalGeneration): void {
  const bad = (field: string, v: number, want: string) =>
    new ConfigError(`${field}: ${v} must be ${want}`, { hint: `set ${field} to ${want}` });
  if (g.maxNewTokens !== undefined && !(Number.isInteger(g.maxNewTokens) && g.maxNewTokens >= 1))
    throw bad('eval_max_new_tokens', g.maxNewTokens, 'a whole number ≥ 1');
  if (g.temperature !== undefined && !(g.temperature >= 0 && Number.isFinite(g.temperature)))
    throw bad('eval_temperature', g.temperature, 'a number ≥ 0');
  if (g.topK !== undefined && !(Number.isInteger(g.topK) && g.topK >= 0))
    throw bad('eval_top_k', g.topK, 'a whole number ≥ 0');
  if (g.topP !== undefined && !(g.topP > 0 && g.topP <= 1)) throw bad('eval_top_p', g.topP, 'in (0, 1]');
}
