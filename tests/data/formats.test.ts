/**
 * Dataset formats on real tokenizers (Llama 2, Llama 3 and Qwen2.5 from the @lenml packages, written
 * by createTinyModel): the prompt text of each format, and masking exactness — the tokens with loss
 * are exactly the response's tokens (the whole text's tokens after the prompt's) and EOS, or for chat
 * exactly each assistant reply and its end-of-turn token.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dummyRecords, recordSample } from '../../src/data/formats.js';
import type { DataRecord } from '../../src/data/records.js';
import type { Sample } from '../../src/data/tokenize.js';
import { FormatError } from '../../src/errors.js';
import type { Tokenizer } from '../../src/io/tokenizer.js';
import type { TinyTokenizer } from '../../src/models/tiny.js';
import { tinyTokenizer } from './helpers.js';

const rec = (value: Record<string, unknown>, line = 1): DataRecord => ({ value, file: 'x.jsonl', line });

/** The runs of consecutive target tokens. */
function targetRuns(s: Sample): number[][] {
  const runs: number[][] = [];
  let cur: number[] | null = null;
  s.targets.forEach((t, i) => {
    if (t) (cur ??= []).push(s.tokens[i]!);
    else if (cur !== null) {
      runs.push(cur);
      cur = null;
    }
  });
  if (cur !== null) runs.push(cur);
  return runs;
}

/** Checks a prompt/response sample against the tokenizer itself: tokens, BOS, EOS and the loss mask. */
function checkPromptResponse(tok: Tokenizer, s: Sample, prompt: string, response: string): void {
  const whole = tok.encode(prompt + response);
  const promptIds = tok.encode(prompt);
  assert.deepEqual(whole.slice(0, promptIds.length), promptIds, 'the prompt tokenizes the same alone');
  const eos = tok.eosIds[0]!;
  assert.deepEqual(s.tokens, [...whole, eos], 'the whole text, then EOS');
  const trained = s.tokens.filter((_, i) => s.targets[i]);
  assert.deepEqual(trained, [...whole.slice(promptIds.length), eos], 'loss on exactly the response and EOS');
  assert.equal(tok.decode(trained.slice(0, -1)).trim(), response.trim());
  if (tok.bosId !== null && tok.encode('a')[0] === tok.bosId) assert.equal(s.tokens[0], tok.bosId);
}

const TOKENIZERS: TinyTokenizer[] = ['llama2', 'llama3', 'qwen2_5'];

describe('dataset formats', () => {
  for (const name of TOKENIZERS) {
    describe(name, () => {
      const tok = tinyTokenizer(name);

      it('alpaca: the Stanford Alpaca prompt with and without input; loss on the output', () => {
        const withInput = recordSample(
          tok,
          'alpaca',
          rec({
            instruction: 'Translate to French.',
            input: 'The ship sails at dawn.',
            output: 'Le navire part à l’aube.',
          }),
        );
        const promptIn =
          'Below is an instruction that describes a task, paired with an input that provides further context. ' +
          'Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n' +
          '### Input:\nThe ship sails at dawn.\n\n### Response:\n';
        checkPromptResponse(tok, withInput, promptIn, 'Le navire part à l’aube.');
        const noInput = recordSample(
          tok,
          'alpaca',
          rec({ instruction: 'Name a whale.', input: '', output: 'Moby Dick.' }),
        );
        const promptNo =
          'Below is an instruction that describes a task. Write a response that appropriately completes the request.' +
          '\n\n### Instruction:\nName a whale.\n\n### Response:\n';
        checkPromptResponse(tok, noInput, promptNo, 'Moby Dick.');
      });

      it('prompt_completion, sql and orca_math: loss on the completion / answer', () => {
        checkPromptResponse(
          tok,
          recordSample(tok, 'prompt_completion', rec({ prompt: 'Call me', completion: ' Ishmael.' })),
          'Call me',
          ' Ishmael.',
        );
        const sql = recordSample(
          tok,
          'sql',
          rec({
            context: 'CREATE TABLE head (age INTEGER)',
            question: 'How many heads of the departments are older than 56 ?',
            answer: 'SELECT COUNT(*) FROM head WHERE age > 56',
          }),
        );
        checkPromptResponse(
          tok,
          sql,
          'You are a text-to-SQL model. Given the tables below, write the SQL query that answers the question.\n\n' +
            '### Context:\nCREATE TABLE head (age INTEGER)\n\n### Question:\nHow many heads of the departments are older than 56 ?\n\n### SQL:\n',
          'SELECT COUNT(*) FROM head WHERE age > 56',
        );
        const math = recordSample(
          tok,
          'orca_math',
          rec({
            question: 'A ship sails 12 miles an hour for 3 hours. How far does it go?',
            answer: '12 × 3 = 36 miles.',
          }),
        );
        checkPromptResponse(
          tok,
          math,
          '### Question:\nA ship sails 12 miles an hour for 3 hours. How far does it go?\n\n### Answer:\n',
          '12 × 3 = 36 miles.',
        );
      });

      it('completion: loss on every token after the first, and EOS', () => {
        const text = 'Call me Ishmael. Some years ago—never mind how long precisely—';
        const s = recordSample(tok, 'completion', rec({ text }));
        assert.deepEqual(s.tokens, [...tok.encode(text), tok.eosIds[0]!]);
        assert.ok(s.targets.every((t, i) => t === !(i === 0 && s.tokens[0] === tok.bosId)));
      });

      it('guanaco: loss on the assistant turns only', () => {
        const text =
          '### Human: What is a harpoon?### Assistant: A spear for whales.### Human: Who throws it?### Assistant: The harpooneer.';
        const s = recordSample(tok, 'guanaco', rec({ text }));
        const runs = targetRuns(s).map((r) => tok.decode(r).trim());
        assert.deepEqual(runs, ['A spear for whales.', `The harpooneer.${tok.eosToken}`]);
      });

      it('dummy: deterministic synthetic records', () => {
        assert.deepEqual(dummyRecords(5, 1), dummyRecords(5, 1));
        assert.notDeepEqual(dummyRecords(5, 1), dummyRecords(5, 2));
        const r = dummyRecords(1, 3)[0]!;
        const [a, b] = (r.value['prompt'] as string).split(' + ').map((x) => parseInt(x, 10));
        assert.equal(r.value['completion'], ` ${a! + b!}`);
        checkPromptResponse(
          tok,
          recordSample(tok, 'dummy', r),
          r.value['prompt'] as string,
          r.value['completion'],
        );
      });
    });
  }

  const conversation = [
    { role: 'system', content: 'You are a sailor.' },
    { role: 'user', content: 'Where is the ship?' },
    { role: 'assistant', content: 'Aye, in the harbour.' },
    { role: 'user', content: 'When do we sail?' },
    { role: 'assistant', content: 'At dawn, sir.' },
  ];

  it('chat on the Llama 3 template: loss on each assistant reply and its <|eot_id|>', () => {
    const tok = tinyTokenizer('llama3');
    const s = recordSample(tok, 'chat', rec({ messages: conversation }));
    assert.deepEqual(
      targetRuns(s),
      [tok.encode('Aye, in the harbour.<|eot_id|>'), tok.encode('At dawn, sir.<|eot_id|>')],
      'exactly the replies and their end-of-turn tokens',
    );
    assert.equal(s.tokens[0], tok.bosId, 'the template writes <|begin_of_text|> once');
    assert.equal(s.tokens.filter((t) => t === tok.bosId).length, 1);
    assert.deepEqual(s.tokens, tok.encode(tok.applyChatTemplate(conversation), { addSpecialTokens: false }));
  });

  it('chat on the Qwen2.5 template: loss on each assistant reply and its <|im_end|>', () => {
    const tok = tinyTokenizer('qwen2_5');
    const s = recordSample(tok, 'chat', rec({ messages: conversation }));
    assert.deepEqual(targetRuns(s), [
      tok.encode('Aye, in the harbour.<|im_end|>'),
      tok.encode('At dawn, sir.<|im_end|>'),
    ]);
    const text = tok.decode(s.tokens);
    assert.ok(text.startsWith('<|im_start|>system\nYou are a sailor.<|im_end|>\n'));
    // a conversation without a system prompt gets Qwen's default one, never trained
    const s2 = recordSample(tok, 'chat', rec({ messages: conversation.slice(1, 3) }));
    assert.ok(tok.decode(s2.tokens).includes('You are Qwen'));
    assert.deepEqual(targetRuns(s2), [tok.encode('Aye, in the harbour.<|im_end|>')]);
  });

  it('a bad record names its file, line, field and the fix', () => {
    const tok = tinyTokenizer('qwen2_5');
    const cases: [Parameters<typeof recordSample>[1], Record<string, unknown>, RegExp][] = [
      [
        'alpaca',
        { instruction: 'x' },
        /x\.jsonl: line 7: the record has no "output" field.*alpaca reads instruction, \[input\], output/,
      ],
      ['alpaca', { instruction: 'x', output: 3 }, /line 7: field "output" must be a string, got number/],
      ['chat', { messages: [{ role: 'user', content: 'hi' }] }, /line 7: no message has role "assistant"/],
      ['chat', { messages: [{ role: 'user' }] }, /line 7: messages\[0\] must be/],
      [
        'guanaco',
        { text: '### Human: only a question' },
        /line 7: field "text" has no "### Assistant:" turn/,
      ],
      ['completion', { text: '  ' }, /line 7: field "text" is empty/],
    ];
    for (const [format, value, re] of cases)
      assert.throws(
        () => recordSample(tok, format, rec(value, 7)),
        (e: unknown) => e instanceof FormatError && re.test(e.message) && !e.message.includes('\n'),
        `${format} ${JSON.stringify(value)}`,
      );
  });
});
