/**
 * From text to training examples: a sample is a token sequence with a flag per token saying whether
 * the model is trained to predict it. An {@link Example} holds next-token pairs, the convention of
 * the Trainer (and of tests/helpers/finetune.ts): for tokens s₀…sₙ, `ids[t] = s[t]` and
 * `labels[t] = s[t+1]` when s[t+1] is a target, else -100.
 */
import { ConfigError, quote } from '../errors.js';
import type { ChatMessage, Tokenizer } from '../io/tokenizer.js';
import type { Example } from './example.js';

/** A tokenized sample: `targets[i]` says whether token i is predicted with loss. */
export interface Sample {
  tokens: number[];
  targets: boolean[];
}

/** A stretch of a sample's text, trained on (`train`) or only read as context. */
export interface TextPart {
  text: string;
  train: boolean;
}

/** Label of positions without loss (PyTorch's ignore_index). */
export const IGNORE = -100;

/** Length of the common start of two id lists. */
function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** Length of the common start of two strings. */
function commonTextPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/**
 * The token index where character `chars` of `text` falls in `ids` (the tokens of all of `text`):
 * the text before it is tokenized on its own and matched against `ids`. Where a token straddles
 * the boundary the two tokenizations part, and the straddling token counts as after it.
 */
function tokenBoundary(
  tok: Tokenizer,
  text: string,
  ids: readonly number[],
  chars: number,
  special: boolean,
): number {
  if (chars >= text.length) return ids.length;
  if (chars <= 0) return 0;
  return commonPrefix(tok.encode(text.slice(0, chars), { addSpecialTokens: special }), ids);
}

/** The id appended after a sample: the tokenizer's (first) EOS. */
export function eosId(tok: Tokenizer): number {
  const id = tok.eosIds[0];
  if (id === undefined)
    throw new ConfigError('the tokenizer has no eos_token, so samples cannot be ended', {
      hint: 'set eos_token in tokenizer_config.json',
    });
  return id;
}

/**
 * Tokenizes text parts as one text (so tokens merge across parts exactly as in the whole text), with
 * the BOS the tokenizer adds, and EOS appended (a target when the last part is). A token is a target
 * when it lies in a trained part; one that straddles two parts counts for the later.
 */
export function tokenizeParts(tok: Tokenizer, parts: readonly TextPart[]): Sample {
  const text = parts.map((p) => p.text).join('');
  const tokens = tok.encode(text, { addSpecialTokens: true });
  const targets = new Array<boolean>(tokens.length).fill(false);
  let chars = 0;
  let from = 0;
  for (const p of parts) {
    chars += p.text.length;
    const to = tokenBoundary(tok, text, tokens, chars, true);
    for (let i = from; i < to; i++) targets[i] = p.train;
    from = Math.max(from, to);
  }
  if (tokens[0] === tok.bosId) targets[0] = false; // the BOS is never predicted
  const eos = eosId(tok);
  if (tokens.length === 0 || !tok.eosIds.includes(tokens[tokens.length - 1]!)) {
    tokens.push(eos);
    targets.push(parts[parts.length - 1]?.train ?? false);
  }
  return { tokens, targets };
}

/** Tokens that close a chat turn in the common templates (and every EOS of the tokenizer). */
const END_OF_TURN = [
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<end_of_turn>',
  '</s>',
  '<|eom_id|>',
  '<|endoftext|>',
];

/**
 * The end-of-turn markers a chat template writes (those of the common templates found in its text):
 * `ids` where the tokenizer has the marker as one token, `texts` where it does not (the marker is
 * then several plain tokens). Generation in the chat format stops at either, as at EOS.
 *
 * @example
 * chatEndOfTurn(llama3Tokenizer); // { ids: [128009], texts: [] } (<|eot_id|>)
 */
export function chatEndOfTurn(tok: Tokenizer): { ids: number[]; texts: string[] } {
  const ids: number[] = [];
  const texts: string[] = [];
  for (const marker of END_OF_TURN) {
    if (!tok.chatTemplate.includes(marker)) continue;
    const id = tok.tokenId(marker);
    if (id === undefined) texts.push(marker);
    else ids.push(id);
  }
  return { ids, texts };
}

/** ChatML's turn markers, which a model learns as tokens (TRL's setup_chat_format adds them). */
const CHATML_MARKERS = ['<|im_start|>', '<|im_end|>'];

/**
 * Refuses to train on a chat template that writes ChatML's `<|im_start|>`/`<|im_end|>` when the
 * tokenizer does not have them as tokens: each would be several plain tokens, and the turn's end
 * never one token the model can learn to emit. Throws a ConfigError naming `where` and the way out.
 */
export function checkChatTemplateTokens(tok: Tokenizer, where: string): void {
  const missing = CHATML_MARKERS.filter((m) => tok.chatTemplate.includes(m) && tok.tokenId(m) === undefined);
  if (missing.length === 0) return;
  const pieces = tok.encode(missing[0]!, { addSpecialTokens: false }).length;
  throw new ConfigError(
    `${where}: the chat template writes ${missing.join(' and ')}, which this tokenizer does not have as tokens (${quote(missing[0]!)} would be ${pieces} plain tokens)`,
    {
      hint: 'use a model whose tokenizer has them or a chat template of its own (an Instruct/Chat release), set a chat_template its tokens can write in tokenizer_config.json, or train with dataset_format alpaca',
      details: { field: 'chat_template', value: missing },
    },
  );
}

/**
 * Tokenizes a conversation rendered with the model's chat template, with loss only on the assistant
 * turns. Each assistant turn's span is found by rendering prefixes of the conversation:
 *   start: the render of the messages before it with the generation prompt (`…assistant\n`)
 *   end:   the render up to and including it, cut after its first end-of-turn token
 *          (`<|im_end|>`, `<|eot_id|>`, an EOS), which is trained so the model learns to stop
 * and the characters are turned into tokens by tokenizing each prefix and matching it against the
 * whole conversation's tokens. The rendered text is tokenized without special tokens (the template
 * writes them); a BOS is put in front only when the tokenizer adds one and the template did not. No
 * EOS is appended: the template's end-of-turn tokens end each turn.
 */
export function tokenizeChat(tok: Tokenizer, messages: readonly ChatMessage[]): Sample {
  const full = tok.applyChatTemplate(messages);
  const tokens = tok.encode(full, { addSpecialTokens: false });
  const targets = new Array<boolean>(tokens.length).fill(false);
  const ends = new Set<number>(tok.eosIds);
  for (const t of END_OF_TURN) {
    const id = tok.tokenId(t);
    if (id !== undefined) ends.add(id);
  }
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const prompt = tok.applyChatTemplate(messages.slice(0, i), { addGenerationPrompt: true });
    const turn = tok.applyChatTemplate(messages.slice(0, i + 1));
    const start = tokenBoundary(tok, full, tokens, commonTextPrefix(prompt, full), false);
    let end = tokenBoundary(tok, full, tokens, commonTextPrefix(turn, full), false);
    for (let k = start; k < end; k++) {
      if (ends.has(tokens[k]!)) {
        end = k + 1;
        break;
      }
    }
    for (let k = start; k < end; k++) targets[k] = true;
  });
  const bos = tok.bosId;
  if (bos !== null && tokens[0] !== bos && tok.encode('a', { addSpecialTokens: true })[0] === bos) {
    tokens.unshift(bos);
    targets.unshift(false);
  }
  return { tokens, targets };
}

/**
 * The pad id of examples: the tokenizer's pad token, else its EOS (never a target either way). A pad
 * token without a row in the model's embeddings (an added `<pad>` at id 32000 beside vocab_size
 * 32000) is never used: padding falls back to EOS ({@link padNotice} says so).
 */
export function padId(tok: Tokenizer): number {
  const pad = tok.padId;
  const rows = tok.modelVocabSize;
  return pad !== null && (rows === null || pad < rows) ? pad : eosId(tok);
}

/** The one-line notice for a pad token that {@link padId} replaced by EOS, or null. */
export function padNotice(tok: Tokenizer): string | null {
  const pad = tok.padId;
  const rows = tok.modelVocabSize;
  if (pad === null || rows === null || pad < rows) return null;
  const eos = eosId(tok);
  return `notice: pad token ${quote(tok.padToken ?? '')} (id ${pad}) has no row in the model's ${rows} embeddings; padding with eos ${tok.describeToken(eos)} instead (its positions carry no loss)`;
}

/**
 * The next-token positions of a sample, at most `contextLength` of them (the sample is truncated to
 * its first contextLength + 1 tokens): `ids[t] = tokens[t]`, `labels[t] = tokens[t+1]` or -100.
 */
export function samplePositions(s: Sample, contextLength: number): { ids: number[]; labels: number[] } {
  const n = Math.min(s.tokens.length, contextLength + 1);
  const ids: number[] = [];
  const labels: number[] = [];
  for (let t = 0; t + 1 < n; t++) {
    ids.push(s.tokens[t]!);
    labels.push(s.targets[t + 1]! ? s.tokens[t + 1]! : IGNORE);
  }
  return { ids, labels };
}

/** One sample as an example of exactly `contextLength` positions: truncated, then padded (labels -100). */
export function toExample(s: Sample, contextLength: number, pad: number): Example {
  const p = samplePositions(s, contextLength);
  const ids = new Int32Array(contextLength).fill(pad);
  const labels = new Int32Array(contextLength).fill(IGNORE);
  ids.set(p.ids);
  labels.set(p.labels);
  return { ids, labels, length: p.ids.length };
}
