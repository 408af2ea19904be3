/**
 * `qtune train`'s samples during training: the `eval_*` options (a part of TRAIN_OPTIONS) and the
 * trainer options they give. `eval_prompts` is a list of prompts, or the path of a `.txt` file (one
 * prompt a line, blank lines skipped) or a `.jsonl` file (one `{"prompt": "..."}` or
 * `{"messages": [{"role": "user", "content": "..."}]}` a line). The prompts are put to the model in
 * the run's prompt format: `dataset_format` alpaca → the Alpaca prompt, chat → the chat template,
 * the others → the text as it is (as `qtune generate --prompt-format auto` prompts the adapter).
 *
 * @example
 * trainerEvalOptions({ eval_prompts: ['prompts.txt'], dataset_format: 'chat', ... }); // { evalPrompts: [...], ... }
 */
import { existsSync, readFileSync } from 'node:fs';
import { ConfigError, FormatError, fileSystemError } from '../errors.js';
import type { ChatMessage } from '../io/tokenizer.js';
import type { EvalPrompt, EvalPromptFormat } from '../train/samples.js';
import type { TrainerOptions } from '../train/trainer.js';

/** The options' specs (train-config.ts checks their shape and values). */
export const EVAL_PROMPT_OPTIONS = {
  eval_prompts: {
    kind: 'list',
    default: [] as string[],
    help: 'prompts generated at each evaluation and at the end (printed, in metrics.jsonl as kind sample): a list, or a .txt (one a line) or .jsonl (prompt or messages) file',
  },
  eval_max_new_tokens: { kind: 'int', default: 64, min: 1, help: 'eval_prompts: tokens to generate at most' },
  eval_temperature: {
    kind: 'number',
    default: 0,
    min: 0,
    help: 'eval_prompts: sampling temperature (0: greedy)',
  },
  eval_top_k: {
    kind: 'int',
    default: 0,
    min: 0,
    help: 'eval_prompts: sample among the k most likely (0: all)',
  },
  eval_top_p: {
    kind: 'number',
    default: 1,
    min: 0,
    minExclusive: true,
    max: 1,
    help: 'eval_prompts: sample within this probability mass',
  },
} as const;

/** What trainerEvalOptions reads of a config. */
export interface EvalConfig {
  eval_prompts: string[];
  eval_max_new_tokens: number;
  eval_temperature: number;
  eval_top_k: number;
  eval_top_p: number;
  dataset_format: string;
  seed: number;
}

/** The trainer's evalPrompts, evalPromptFormat and evalGeneration for a config (none without prompts). */
export function trainerEvalOptions(c: EvalConfig): Partial<TrainerOptions> {
  if (c.eval_prompts.length === 0) return {};
  const format: EvalPromptFormat =
    c.dataset_format === 'alpaca' || c.dataset_format === 'chat' ? c.dataset_format : 'none';
  return {
    evalPrompts: readEvalPrompts(c.eval_prompts),
    evalPromptFormat: format,
    evalGeneration: {
      maxNewTokens: c.eval_max_new_tokens,
      temperature: c.eval_temperature,
      topK: c.eval_top_k,
      topP: c.eval_top_p,
      seed: c.seed,
    },
  };
}

/** The prompts of `eval_prompts`: the list itself, or the prompts of the one file it names. */
export function readEvalPrompts(list: readonly string[]): EvalPrompt[] {
  const only = list.length === 1 ? list[0]! : null;
  if (only === null || !/\.(txt|jsonl)$/i.test(only)) return [...list];
  if (!existsSync(only))
    throw new ConfigError(`eval_prompts: ${only} does not exist`, {
      hint: 'give the path of a .txt or .jsonl file of prompts, or the prompts themselves as a list',
      details: { field: 'eval_prompts', value: only },
    });
  let text: string;
  try {
    text = readFileSync(only, 'utf8');
  } catch (e) {
    throw fileSystemError(e, 'eval_prompts', only);
  }
  const lines = text.split(/\r?\n/);
  const prompts: EvalPrompt[] = [];
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    prompts.push(/\.txt$/i.test(only) ? line : jsonlPrompt(only, i + 1, line));
  });
  if (prompts.length === 0)
    throw new FormatError(only, 'holds no prompt', { hint: 'write one prompt a line' });
  return prompts;
}

function jsonlPrompt(file: string, line: number, text: string): EvalPrompt {
  const bad = (why: string): FormatError =>
    new FormatError(file, `line ${line}: ${why}`, {
      hint: 'write one {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]} a line',
    });
  let row: unknown;
  try {
    row = JSON.parse(text);
  } catch {
    throw bad('is not JSON');
  }
  if (typeof row !== 'object' || row === null || Array.isArray(row)) throw bad('is not a JSON object');
  const { prompt, messages } = row as { prompt?: unknown; messages?: unknown };
  if (typeof prompt === 'string' && prompt !== '') return prompt;
  const isMessage = (m: unknown): m is ChatMessage =>
    typeof m === 'object' &&
    m !== null &&
    typeof (m as ChatMessage).role === 'string' &&
    typeof (m as ChatMessage).content === 'string';
  if (Array.isArray(messages) && messages.length > 0 && messages.every(isMessage)) return { messages };
  throw bad('has no "prompt" text nor a "messages" list of { role, content }');
}
