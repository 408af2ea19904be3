/**
 * A model's tokenizer, from its `tokenizer.json` (run by @huggingface/tokenizers, a port of the Rust
 * `tokenizers` crate) and `tokenizer_config.json` (special tokens and the chat template, rendered by
 * @huggingface/jinja). Models without a chat template get {@link DEFAULT_CHAT_TEMPLATE}.
 *
 * @example
 * const tok = Tokenizer.fromFolder('tiny-model');
 * const ids = tok.encode(tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true }), { addSpecialTokens: false });
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Template } from '@huggingface/jinja';
import * as hfTokenizers from '@huggingface/tokenizers';
import { ConfigError, QtuneError, errorText, quote } from '../errors.js';
import { readJsonObject } from './json.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/**
 * ChatML, the format Hugging Face used as its default template and TRL's `setup_chat_format`
 * installs: `<|im_start|>role\ncontent<|im_end|>\n`, ending with `<|im_start|>assistant\n` when a
 * reply is wanted.
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

type Json = Record<string, unknown>;

/**
 * What qtune uses of @huggingface/tokenizers. Its published type declarations import without file
 * extensions, which TypeScript's NodeNext resolution cannot follow, so the class is typed here once.
 */
interface HfTokenizer {
  encode(text: string, options: { add_special_tokens: boolean }): { ids: number[] };
  decode(ids: number[], options: { skip_special_tokens: boolean }): string;
}
const HfTokenizerClass = (
  hfTokenizers as unknown as { Tokenizer: new (json: object, config: object) => HfTokenizer }
).Tokenizer;

function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as Json)['content'] === 'string')
    return (v as Json)['content'] as string;
  return null;
}

export class Tokenizer {
  /** The parsed tokenizer.json. */
  readonly json: Json;
  /** The parsed tokenizer_config.json. */
  readonly config: Json;
  readonly chatTemplate: string;
  /** Whether the chat template came from the model (false: qtune's default). */
  readonly hasOwnChatTemplate: boolean;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly bosId: number | null;
  readonly eosIds: number[];
  readonly padId: number | null;
  private readonly tok: HfTokenizer;
  private readonly vocab: Map<string, number>;
  /** Largest id of the base vocabulary (tokenizer.json's model.vocab), without the added tokens. */
  private readonly baseMaxId: number;
  private readonly template: Template;
  private rows: number | null = null;

  constructor(json: Json, config: Json, extraEosIds: readonly number[] = []) {
    this.json = json;
    this.config = config;
    try {
      this.tok = new HfTokenizerClass(json, config);
    } catch (e) {
      throw new QtuneError('FORMAT', `tokenizer.json could not be loaded: ${errorText(e)}`);
    }
    this.vocab = new Map();
    const model = json['model'] as Json | undefined;
    const v = model?.['vocab'];
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      for (const [t, id] of Object.entries(v as Record<string, number>)) this.vocab.set(t, id);
    } else if (Array.isArray(v)) {
      v.forEach((entry, id) => this.vocab.set(String((entry as unknown[])[0]), id)); // Unigram: [piece, score]
    }
    let baseMax = -1;
    for (const id of this.vocab.values()) if (id > baseMax) baseMax = id;
    this.baseMaxId = baseMax;
    const added = json['added_tokens'];
    for (const a of Array.isArray(added) ? (added as unknown[]) : []) {
      if (a === null || typeof a !== 'object') continue;
      const { content, id } = a as Json;
      if (typeof content === 'string' && typeof id === 'number') this.vocab.set(content, id);
    }
    const own = typeof config['chat_template'] === 'string' ? config['chat_template'] : null;
    this.chatTemplate = own ?? DEFAULT_CHAT_TEMPLATE;
    this.hasOwnChatTemplate = own !== null;
    try {
      this.template = new Template(this.chatTemplate);
    } catch (e) {
      throw new QtuneError('FORMAT', `the chat template does not parse: ${errorText(e)}`, {
        hint: 'fix chat_template in tokenizer_config.json',
      });
    }
    this.bosToken = tokenContent(config['bos_token']);
    this.eosToken = tokenContent(config['eos_token']);
    this.padToken = tokenContent(config['pad_token']);
    this.bosId = this.bosToken === null ? null : (this.vocab.get(this.bosToken) ?? null);
    const eos = this.eosToken === null ? undefined : this.vocab.get(this.eosToken);
    this.eosIds = [...new Set([...(eos === undefined ? [] : [eos]), ...extraEosIds])];
    this.padId = this.padToken === null ? null : (this.vocab.get(this.padToken) ?? null);
  }

  /**
   * Reads `tokenizer.json` and `tokenizer_config.json` from a model folder (`defaultConfig` when it
   * has no tokenizer_config.json).
   */
  static fromFolder(dir: string, extraEosIds: readonly number[] = [], defaultConfig: Json = {}): Tokenizer {
    const tj = path.join(dir, 'tokenizer.json');
    if (!existsSync(tj)) {
      throw new QtuneError('NOT_FOUND', `${dir} has no tokenizer.json`, {
        hint: 'qtune reads fast (tokenizer.json) tokenizers',
      });
    }
    const tc = path.join(dir, 'tokenizer_config.json');
    return new Tokenizer(
      readJsonObject(tj),
      existsSync(tc) ? readJsonObject(tc) : defaultConfig,
      extraEosIds,
    );
  }

  /**
   * Pairs the tokenizer with a model whose embedding table has `vocabSize` rows (loadModel does it).
   * A base vocabulary with ids beyond the table is the wrong tokenizer and is refused. Added tokens
   * beyond it (a `<pad>` at id 32000 beside 32000 rows, as many Llama-2 fine-tunes ship) are kept:
   * they are listed by {@link tokensWithoutRow}, padding falls back to EOS, and a text that holds one
   * is refused where it is tokenized.
   */
  fitTo(vocabSize: number, where: string): void {
    if (this.baseMaxId >= vocabSize) {
      throw new ConfigError(
        `${where}: the tokenizer's vocabulary has ids up to ${this.baseMaxId}, but the model's vocab_size is ${vocabSize}`,
        {
          hint: `use the tokenizer that belongs to the model, or resize the embeddings to ${this.baseMaxId + 1} rows`,
          details: { largestId: this.baseMaxId, vocabSize },
        },
      );
    }
    this.rows = vocabSize;
  }

  /** The model's vocab_size once {@link fitTo} paired the tokenizer with a model, else null. */
  get modelVocabSize(): number | null {
    return this.rows;
  }

  /** Added tokens whose id has no row in the paired model's embeddings (none before {@link fitTo}). */
  get tokensWithoutRow(): { token: string; id: number }[] {
    const rows = this.rows;
    if (rows === null) return [];
    return [...this.vocab].filter(([, id]) => id >= rows).map(([token, id]) => ({ token, id }));
  }

  /** `"<pad>" (id 32000)`: a token for a message. */
  describeToken(id: number): string {
    for (const [t, i] of this.vocab) if (i === id) return `${quote(t)} (id ${id})`;
    return `id ${id}`;
  }

  /** Token count: the largest id plus one. */
  get vocabSize(): number {
    let max = -1;
    for (const id of this.vocab.values()) max = Math.max(max, id);
    return max + 1;
  }

  tokenId(token: string): number | undefined {
    return this.vocab.get(token);
  }

  /** Token ids of `text`; `addSpecialTokens` applies the tokenizer's post-processor (BOS for Llama 2). */
  encode(text: string, o: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: o.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], o: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.tok.decode([...ids], { skip_special_tokens: o.skipSpecialTokens ?? false });
  }

  /** Renders messages with the model's chat template (or the default one). */
  applyChatTemplate(messages: readonly ChatMessage[], o: { addGenerationPrompt?: boolean } = {}): string {
    try {
      return this.template.render({
        messages,
        add_generation_prompt: o.addGenerationPrompt ?? false,
        bos_token: this.bosToken ?? '',
        eos_token: this.eosToken ?? '',
        pad_token: this.padToken ?? '',
      });
    } catch (e) {
      if (e instanceof QtuneError) throw e;
      throw new QtuneError('INVALID_ARGUMENT', `the chat template failed to render: ${errorText(e)}`);
    }
  }
}
