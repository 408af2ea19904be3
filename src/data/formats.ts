/**
 * Dataset formats: how a record's fields become a prompt (context, no loss) and a response (loss).
 * Field names are fixed per format, as in the datasets they come from.
 */
import { FormatError } from '../errors.js';
import type { ChatMessage, Tokenizer } from '../io/tokenizer.js';
import { seededUniform } from '../util/random.js';
import type { DataRecord } from './records.js';
import { preferenceSamples } from './preference.js';
import { tokenizeChat, tokenizeParts, type Sample, type TextPart } from './tokenize.js';

export type DatasetFormat =
  | 'alpaca'
  | 'chat'
  | 'completion'
  | 'prompt_completion'
  | 'guanaco'
  | 'sql'
  | 'orca_math'
  | 'preference'
  | 'dummy';

/** Which fields each format reads (the optional ones in brackets). */
export const FORMAT_FIELDS: Readonly<Record<DatasetFormat, string>> = {
  alpaca: 'instruction, [input], output',
  chat: 'messages: [{role, content}]',
  completion: 'text',
  prompt_completion: 'prompt, completion',
  guanaco: 'text ("### Human: ... ### Assistant: ...")',
  sql: 'context, question, answer',
  orca_math: 'question, answer',
  dummy: '(none: synthetic records)',
  preference: 'prompt, chosen, rejected (strings, or message lists)',
};

export const DATASET_FORMATS = Object.keys(FORMAT_FIELDS) as DatasetFormat[];

/** The formats of supervised fine-tuning (every one but the preference objectives' `preference`). */
export const SFT_FORMATS = DATASET_FORMATS.filter((f) => f !== 'preference');

/** The Stanford Alpaca prompt (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT), with an input. */
export const ALPACA_PROMPT_INPUT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n';

/** The Stanford Alpaca prompt without an input. */
export const ALPACA_PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:\n';

/** The `sql` prompt (b-mc2/sql-create-context: the CREATE TABLE context, a question, the SQL answer). */
export const SQL_PROMPT =
  'You are a text-to-SQL model. Given the tables below, write the SQL query that answers the question.\n\n' +
  '### Context:\n{context}\n\n### Question:\n{question}\n\n### SQL:\n';

/** The `orca_math` prompt (microsoft/orca-math-word-problems-200k: question, answer). */
export const ORCA_MATH_PROMPT = '### Question:\n{question}\n\n### Answer:\n';

function fill(template: string, fields: Record<string, string>): string {
  return template.replace(/\{(\w+)\}/g, (_, k: string) => fields[k] ?? '');
}

/**
 * The Stanford Alpaca prompt of an instruction (and an input): the text an `alpaca` record's output
 * follows in training, so a model tuned on alpaca is prompted with it (`qtune generate`).
 *
 * @example
 * alpacaPrompt('Name the whale.'); // 'Below is an instruction ... ### Instruction:\nName the whale.\n\n### Response:\n'
 */
export function alpacaPrompt(instruction: string, input = ''): string {
  return fill(input.trim() === '' ? ALPACA_PROMPT_NO_INPUT : ALPACA_PROMPT_INPUT, { instruction, input });
}

function bad(r: DataRecord, format: DatasetFormat, what: string): FormatError {
  return new FormatError(r.file, `line ${r.line}: ${what}`, {
    hint: `format ${format} reads ${FORMAT_FIELDS[format]}; fix the record or choose another format`,
    details: { line: r.line, format },
  });
}

/** A string field of a record (missing optional fields are ''). */
function field(r: DataRecord, format: DatasetFormat, name: string, optional = false): string {
  const v = r.value[name];
  if (v === undefined || v === null) {
    if (optional) return '';
    throw bad(r, format, `the record has no "${name}" field`);
  }
  if (typeof v !== 'string') throw bad(r, format, `field "${name}" must be a string, got ${typeof v}`);
  return v;
}

function nonEmpty(r: DataRecord, format: DatasetFormat, name: string): string {
  const v = field(r, format, name);
  if (v.trim() === '') throw bad(r, format, `field "${name}" is empty`);
  return v;
}

/** guanaco: "### Human: … ### Assistant: …" turns; the assistant's words are trained. */
function guanacoParts(r: DataRecord, text: string): TextPart[] {
  const marker = /### (Human|Assistant):/g;
  const parts: TextPart[] = [];
  let last = 0;
  let inAssistant = false;
  for (const m of text.matchAll(marker)) {
    const at = m.index;
    if (at > last) parts.push({ text: text.slice(last, at), train: inAssistant });
    parts.push({ text: m[0], train: false });
    inAssistant = m[1] === 'Assistant';
    last = at + m[0].length;
  }
  if (last < text.length) parts.push({ text: text.slice(last), train: inAssistant });
  if (!parts.some((p) => p.train && p.text.trim() !== ''))
    throw bad(r, 'guanaco', 'field "text" has no "### Assistant:" turn with words after it');
  return parts;
}

function chatMessages(r: DataRecord): ChatMessage[] {
  const v = r.value['messages'];
  if (!Array.isArray(v)) throw bad(r, 'chat', 'the record has no "messages" array');
  const messages = v.map((m: unknown, i) => {
    const o = m as Record<string, unknown> | null;
    if (
      o === null ||
      typeof o !== 'object' ||
      typeof o['role'] !== 'string' ||
      typeof o['content'] !== 'string'
    )
      throw bad(r, 'chat', `messages[${i}] must be {"role": string, "content": string}`);
    return { role: o['role'], content: o['content'] };
  });
  if (!messages.some((m) => m.role === 'assistant'))
    throw bad(r, 'chat', 'no message has role "assistant", so nothing would be trained');
  return messages;
}

/**
 * The tokenized sample of a record in a format, with loss on:
 * - `alpaca` (instruction, [input], output): the output and EOS, after the Stanford Alpaca prompt
 *   (its with-input form when `input` is non-empty)
 * - `chat` (messages: [{role, content}]): the assistant turns with their end-of-turn tokens, rendered
 *   with the model's chat template
 * - `completion` (text): every token and EOS
 * - `prompt_completion` (prompt, completion): the completion and EOS
 * - `guanaco` (text with "### Human: " / "### Assistant: " turns): the assistant turns' words (and
 *   EOS when the text ends with one)
 * - `sql` (context, question, answer) and `orca_math` (question, answer): the answer and EOS, after
 *   {@link SQL_PROMPT} / {@link ORCA_MATH_PROMPT}
 * - `dummy` records are prompt_completion records ({@link dummyRecords}).
 */
export function recordSample(tok: Tokenizer, format: DatasetFormat, r: DataRecord): Sample {
  const pc = (prompt: string, completion: string): Sample =>
    tokenizeParts(tok, [
      { text: prompt, train: false },
      { text: completion, train: true },
    ]);
  switch (format) {
    case 'alpaca': {
      const instruction = nonEmpty(r, format, 'instruction');
      const input = field(r, format, 'input', true);
      const output = nonEmpty(r, format, 'output');
      return pc(alpacaPrompt(instruction, input), output);
    }
    case 'chat':
      return tokenizeChat(tok, chatMessages(r));
    case 'completion':
      return tokenizeParts(tok, [{ text: nonEmpty(r, format, 'text'), train: true }]);
    case 'prompt_completion':
    case 'dummy':
      return pc(field(r, format, 'prompt'), nonEmpty(r, format, 'completion'));
    case 'guanaco':
      return tokenizeParts(tok, guanacoParts(r, nonEmpty(r, format, 'text')));
    case 'sql':
      return pc(
        fill(SQL_PROMPT, { context: field(r, format, 'context'), question: nonEmpty(r, format, 'question') }),
        nonEmpty(r, format, 'answer'),
      );
    case 'preference': // (the chosen sample; recordsToExamples pairs it with the rejected one)
      return preferenceSamples(tok, r).chosen;
    case 'orca_math':
      return pc(
        fill(ORCA_MATH_PROMPT, { question: nonEmpty(r, format, 'question') }),
        nonEmpty(r, format, 'answer'),
      );
  }
}

/**
 * `count` synthetic prompt_completion records for smoke runs, the same for the same seed: sums of two
 * numbers ("12 + 7 =" → " 19").
 */
export function dummyRecords(count: number, seed: number): DataRecord[] {
  const rand = seededUniform(seed);
  return Array.from({ length: count }, (_, i) => {
    const a = Math.floor(rand() * 100);
    const b = Math.floor(rand() * 100);
    return { value: { prompt: `${a} + ${b} =`, completion: ` ${a + b}` }, file: 'dummy', line: i + 1 };
  });
}
