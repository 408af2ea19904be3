/**
 * Where generation stops: `stopIds` (a chat template's end-of-turn token) and `stopStrings` (a marker
 * the tokenizer writes as several plain tokens) end it, checked against the same greedy run without
 * them; `chatEndOfTurn` finds the markers of the real Llama 3, Qwen2.5 and (ChatML over) Llama 2
 * templates; `qtune generate --chat` stops at `<|eot_id|>` on a model built to say " Yes sir" and
 * then `<|eot_id|>`; training on a ChatML template whose markers are not tokens is refused in one line.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chatEndOfTurn } from '../../src/data/tokenize.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { generate } from '../../src/models/generate.js';
import { loadModel, type LoadedModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';
import { qtune } from '../helpers/cli.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-stops-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const SHAPE = { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 };

describe('generation stops', () => {
  let m: LoadedModel;
  before(async () => {
    createTinyModel(path.join(tmp, 'l2'), { ...SHAPE, seed: 5 });
    m = await loadModel(path.join(tmp, 'l2'), { backend: 'cpu' });
  });
  after(() => m.dispose());

  it('stopIds and stopStrings end the greedy run where the token or text first appears', () => {
    const prompt = m.tokenizer.encode('Call me Ishmael. Some years ago');
    const free = generate(m.model, m.tokenizer, prompt, { maxNewTokens: 10, stopAtEos: false });
    assert.equal(free.stoppedBy, 'length');
    const stop = free.ids[4]!;
    const first = free.ids.indexOf(stop);
    const r = generate(m.model, m.tokenizer, prompt, { maxNewTokens: 10, stopAtEos: false, stopIds: [stop] });
    assert.equal(r.stoppedBy, 'stop');
    assert.deepEqual(r.ids, free.ids.slice(0, first));
    assert.equal(r.stopToken, stop); // the stop token itself (GRPO trains its completions to emit it)
    assert.equal(free.stopToken, undefined);
    // the text the fifth token adds, as a stop string: the text is cut where it first begins
    const text = (n: number) => m.tokenizer.decode(free.ids.slice(0, n), { skipSpecialTokens: true });
    const piece = text(5).slice(text(4).length);
    assert.ok(piece.trim() !== '' && text(5).startsWith(text(4)), `a usable piece: ${JSON.stringify(piece)}`);
    const s = generate(m.model, m.tokenizer, prompt, {
      maxNewTokens: 10,
      stopAtEos: false,
      stopStrings: [piece],
    });
    assert.equal(s.stoppedBy, 'stop');
    assert.equal(s.text, free.text.slice(0, free.text.indexOf(piece)));
    assert.ok(s.ids.length < 5);
  });

  it("chatEndOfTurn: the template's end-of-turn token, or its text where the tokenizer lacks it", () => {
    for (const [name, marker] of [
      ['llama3', '<|eot_id|>'],
      ['qwen2_5', '<|im_end|>'],
    ] as const) {
      const dir = path.join(tmp, name);
      createTinyModel(dir, { ...SHAPE, tokenizer: name });
      const tok = Tokenizer.fromFolder(dir);
      assert.deepEqual(chatEndOfTurn(tok), { ids: [tok.tokenId(marker)!], texts: [] }, name);
    }
    // the tiny Llama 2 model carries ChatML, whose <|im_end|> the Llama 2 tokenizer lacks
    assert.deepEqual(chatEndOfTurn(m.tokenizer), { ids: [], texts: ['<|im_end|>'] });
  });

  it('generate --chat stops at <|eot_id|>, not only at EOS', () => {
    // a model that answers " Yes sir" and <|eot_id|>, then " ship": its blocks add nothing (o_proj and
    // down_proj are zero), so the next token depends on the last one alone, through one-hot
    // embeddings, the final norm's unit weights and lm_head rows
    const dir = path.join(tmp, 'aye');
    createTinyModel(dir, { ...SHAPE, tokenizer: 'llama3' });
    const tok = Tokenizer.fromFolder(dir);
    const chatIds = tok.encode(
      tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true }),
      { addSpecialTokens: false },
    );
    const [yes, sir, ship] = tok.encode(' Yes sir ship', { addSpecialTokens: false });
    assert.equal(tok.decode([yes!, sir!, ship!]), ' Yes sir ship', 'one token a word');
    const eot = tok.tokenId('<|eot_id|>')!;
    const chain = [chatIds.at(-1)!, yes!, sir!, eot, ship!];
    assert.equal(new Set(chain).size, chain.length);
    const file = path.join(dir, 'model.safetensors');
    const st = SafetensorsFile.open(file);
    const tensors = st.names().map((name) => ({
      name,
      shape: st.entry(name).shape,
      dtype: 'F32' as const,
      data: st.readF32(name),
    }));
    st.close();
    const d = SHAPE.hiddenSize;
    for (const t of tensors) {
      if (/o_proj|down_proj|embed_tokens|lm_head/.test(t.name)) t.data.fill(0);
      if (t.name === 'model.norm.weight') t.data.fill(1);
      if (t.name === 'model.embed_tokens.weight') chain.forEach((id, k) => (t.data[id * d + k] = 1));
      if (t.name === 'lm_head.weight') chain.slice(1).forEach((id, k) => (t.data[id * d + k] = 10)); // token k → token k + 1
    }
    writeSafetensors(file, tensors, { format: 'pt' });
    const run = (format: string[]) =>
      qtune([
        'generate',
        '--model',
        dir,
        '--prompt',
        'Hi',
        '--max-new-tokens',
        '8',
        '--backend',
        'cpu',
        ...format,
      ]);
    const chat = run(['--chat']);
    assert.equal(chat.code, 0, chat.stderr);
    assert.equal(chat.stdout, ' Yes sir\n');
    // the same model through the library without the stop: the turn's end is passed and " ship" follows
    const free = qtune([
      'generate',
      '--model',
      dir,
      '--prompt',
      tok.decode(chatIds),
      '--max-new-tokens',
      '4',
      '--backend',
      'cpu',
    ]);
    assert.equal(free.code, 0, free.stderr);
    assert.match(free.stdout, /^ Yes sir ship/);
  });

  it('training on ChatML markers the tokenizer lacks is refused in one line', () => {
    const data = path.join(tmp, 'chat.jsonl');
    const conversation = {
      messages: [
        { role: 'user', content: 'Where is the ship?' },
        { role: 'assistant', content: 'In the harbour.' },
      ],
    };
    writeFileSync(data, `${JSON.stringify(conversation)}\n`.repeat(8));
    const out = path.join(tmp, 'never');
    const r = qtune([
      'train',
      '--model',
      path.join(tmp, 'l2'),
      '--dataset',
      data,
      '--dataset_format',
      'chat',
      '--output_dir',
      out,
      '--max_steps',
      '1',
    ]);
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(
      lines[0]!,
      /dataset_format chat: the chat template writes <\|im_start\|> and <\|im_end\|>, which this tokenizer does not have as tokens \("<\|im_start\|>" would be \d+ plain tokens\) \(use a model whose tokenizer has them/,
    );
    assert.ok(!existsSync(out));
  });
});
