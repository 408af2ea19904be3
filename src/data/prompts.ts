/**
 * Prompt datasets, for objectives that sample their own completions (GRPO): each record holds a
 * `prompt` — a string, or a list of chat messages rendered with the model's chat template and its
 * generation prompt — and any other fields (an `answer` a reward function checks, say), which are
 * kept whole and handed to the reward functions with the completions. Each prompt becomes an
 * {@link Example} of the run's positions (the prompt, then room for a completion) that carries the
 * prompt with it, so the Trainer's batches deal prompts like any examples.
 *
 * @example
 * const prompts = promptExamples(tokenizer, readRecords('prompts.jsonl'), 256, 64, padId(tokenizer));
 * prompts[0].prompt.ids; // the prompt's tokens, with BOS
 */
import { ConfigError, FormatError } from '../errors.js';
import type { ChatMessage, Tokenizer } from '../io/tokenizer.js';
import type { Example, TrainData } from './example.js';
import { dummyRecords } from './formats.js';
import { loadRecords, type DataRecord } from './records.js';
import { IGNORE, padId } from './tokenize.js';

/** One prompt, tokenized. */
export interface Prompt {
  /** The prompt as the model reads it (a chat prompt rendered with the template). */
  text: string;
  /** Its tokens (with the BOS the tokenizer adds; a chat template writes its own). */
  ids: number[];
  /** The record's fields, for the reward functions. */
  record: Readonly<Record<string, unknown>>;
  /** A chat prompt: its completion ends at the template's end-of-turn (tokenize.ts's chatEndOfTurn). */
  chat: boolean;
  /** The pad id of the run's examples. */
  pad: number;
}

/**
 * A prompt as a training example: its ids are the prompt then padding, up to the run's positions;
 * no label counts, and `length` covers the longest completion it may get (so the step's graphs are
 * built long enough).
 */
export interface PromptExample extends Example {
  prompt: Prompt;
}

export function isPromptExample(e: Example): e is PromptExample {
  return typeof (e as Partial<PromptExample>).prompt === 'object';
}

function bad(r: DataRecord, what: string, hint?: string): FormatError {
  return new FormatError(r.file, `line ${r.line}: ${what}`, {
    hint: hint ?? 'a prompt record holds "prompt": a string or [{"role", "content"}] messages',
    details: { line: r.line },
  });
}

function messages(r: DataRecord, v: unknown[]): ChatMessage[] {
  return v.map((m: unknown, i) => {
    const o = m as Record<string, unknown> | null;
    if (
      o === null ||
      typeof o !== 'object' ||
      typeof o['role'] !== 'string' ||
      typeof o['content'] !== 'string'
    )
      throw bad(r, `prompt[${i}] must be {"role": string, "content": string}`);
    return { role: o['role'], content: o['content'] };
  });
}

/** The prompt of one record. */
export function recordPrompt(tok: Tokenizer, r: DataRecord, pad: number): Prompt {
  const p = r.value['prompt'];
  if (p === undefined || p === null) throw bad(r, 'the record has no "prompt" field');
  if (typeof p === 'string') {
    if (p.trim() === '') throw bad(r, 'field "prompt" is empty');
    return { text: p, ids: tok.encode(p, { addSpecialTokens: true }), record: r.value, chat: false, pad };
  }
  if (!Array.isArray(p) || p.length === 0)
    throw bad(r, `field "prompt" must be a string or a non-empty list of messages, got ${typeof p}`);
  const text = tok.applyChatTemplate(messages(r, p), { addGenerationPrompt: true });
  const ids = tok.encode(text, { addSpecialTokens: false });
  // a BOS in front when the tokenizer adds one and the template did not (as tokenizeChat)
  const bos = tok.bosId;
  if (bos !== null && ids[0] !== bos && tok.encode('a', { addSpecialTokens: true })[0] === bos)
    ids.unshift(bos);
  return { text, ids, record: r.value, chat: true, pad };
}

/**
 * The prompts of `records` as examples of `contextLength` positions; each prompt must leave room
 * for `maxCompletionLength` tokens after it.
 */
export function promptExamples(
  tok: Tokenizer,
  records: readonly DataRecord[],
  contextLength: number,
  maxCompletionLength: number,
  pad: number,
): PromptExample[] {
  return records.map((r) => {
    const prompt = recordPrompt(tok, r, pad);
    const n = prompt.ids.length;
    // a sequence of n + m tokens takes n + m − 1 positions
    if (n + maxCompletionLength - 1 > contextLength)
      throw bad(
        r,
        `the prompt has ${n} tokens, and with max_completion_length ${maxCompletionLength} needs ${n + maxCompletionLength - 1} positions; context_length is ${contextLength}`,
        `raise context_length to ${n + maxCompletionLength - 1}, lower max_completion_length, or shorten the prompt`,
      );
    const ids = new Int32Array(contextLength).fill(pad);
    ids.set(prompt.ids.slice(0, contextLength));
    const labels = new Int32Array(contextLength).fill(IGNORE);
    return { ids, labels, length: n + maxCompletionLength - 1, prompt };
  });
}

/** Where a prompt dataset comes from (the YAML's dataset keys). */
export interface PromptDatasetConfig {
  /** A `.jsonl` / `.json` file or a Hub dataset id; not needed for `dummy`. */
  path?: string;
  /** `dummy`: the synthetic sums of formats.ts (prompt "a + b =", completion " a+b"); else the records as they are. */
  format?: string;
  seed?: number;
  /** Use at most this many records; for `dummy`, how many to make (default 64). */
  max_samples?: number;
}

/** Reads a prompt dataset into the Trainer's data: {@link promptExamples} of every record. */
export async function loadPromptDataset(
  c: PromptDatasetConfig,
  tok: Tokenizer,
  contextLength: number,
  maxCompletionLength: number,
): Promise<TrainData> {
  const dummy = c.format === 'dummy';
  let records = dummy ? dummyRecords(c.max_samples ?? 64, c.seed ?? 42) : await loadRecords(c.path ?? '');
  if (records.length === 0)
    throw new ConfigError(`dataset: ${c.path ?? ''} has no records`, {
      hint: 'give a file with at least one prompt',
    });
  if (c.max_samples !== undefined) records = records.slice(0, c.max_samples);
  const train = promptExamples(tok, records, contextLength, maxCompletionLength, padId(tok));
  return { train, source: dummy ? 'dummy' : (c.path ?? '') };
}
