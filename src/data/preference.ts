/**
 * TRL's preference format (docs/objectives.md): records `{prompt, chosen, rejected}`, each a plain
 * string, or message lists (`prompt` the conversation so far, `chosen`/`rejected` the assistant's
 * answers) rendered with the model's chat template. The loss falls on the completions only.
 */
import { FormatError } from '../errors.js';
import type { ChatMessage, Tokenizer } from '../io/tokenizer.js';
import type { DataRecord } from './records.js';
import { tokenizeChat, tokenizeParts, type Sample } from './tokenize.js';

function bad(r: DataRecord, what: string): FormatError {
  return new FormatError(r.file, `line ${r.line}: ${what}`, {
    hint: 'format preference reads prompt, chosen, rejected (strings, or lists of {role, content}); fix the record',
    details: { line: r.line, format: 'preference' },
  });
}

/** A field as text or as messages. */
function part(r: DataRecord, name: string): string | ChatMessage[] {
  const v = r.value[name];
  if (v === undefined || v === null) throw bad(r, `the record has no "${name}" field`);
  if (typeof v === 'string') {
    if (name !== 'prompt' && v.trim() === '') throw bad(r, `field "${name}" is empty`);
    return v;
  }
  if (!Array.isArray(v))
    throw bad(r, `field "${name}" must be a string or a list of messages, got ${typeof v}`);
  return v.map((m: unknown, i) => {
    const o = m as Record<string, unknown> | null;
    if (
      o === null ||
      typeof o !== 'object' ||
      typeof o['role'] !== 'string' ||
      typeof o['content'] !== 'string'
    )
      throw bad(r, `${name}[${i}] must be {"role": string, "content": string}`);
    return { role: o['role'], content: o['content'] };
  });
}

/** The chosen and rejected samples of a preference record, the loss on the completions alone. */
export function preferenceSamples(tok: Tokenizer, r: DataRecord): { chosen: Sample; rejected: Sample } {
  const prompt = part(r, 'prompt');
  const sample = (name: 'chosen' | 'rejected'): Sample => {
    const completion = part(r, name);
    if (typeof prompt === 'string' && typeof completion === 'string')
      return tokenizeParts(tok, [
        { text: prompt, train: false },
        { text: completion, train: true },
      ]);
    const p: ChatMessage[] = typeof prompt === 'string' ? [{ role: 'user', content: prompt }] : prompt;
    const c: ChatMessage[] =
      typeof completion === 'string' ? [{ role: 'assistant', content: completion }] : completion;
    if (!c.some((m) => m.role === 'assistant')) throw bad(r, `field "${name}" has no assistant message`);
    const s = tokenizeChat(tok, [...p, ...c]);
    // the prompt's own assistant turns (a multi-turn prompt) are context, not completion
    const promptTokens = tokenizeChat(tok, p).tokens.length;
    return { tokens: s.tokens, targets: s.targets.map((t, i) => t && i >= promptTokens) };
  };
  return { chosen: sample('chosen'), rejected: sample('rejected') };
}
