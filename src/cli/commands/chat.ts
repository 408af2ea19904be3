/**
 * `qtune chat`: talk to a model (and adapter) with its chat template. With --prompt, one answer (as
 * `qtune generate --chat`); without, a conversation read line by line from standard input.
 */
import { createInterface } from 'node:readline';
import { createAdapterHook, type AdapterHook } from '../../peft/apply.js';
import { adapterBaseModel, readAdapter } from '../adapter.js';
import { chatEndOfTurn } from '../../data/tokenize.js';
import type { ChatMessage } from '../../io/tokenizer.js';
import { generate } from '../../models/generate.js';
import { loadModel } from '../../models/load.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';
import * as generateCommand from './generate.js';

export const spec: CommandSpec = {
  name: 'chat',
  summary: 'Chat with a model (and a LoRA/DoRA adapter) using its chat template.',
  usage:
    'qtune chat [--model PATH|ORG/NAME] [--adapter DIR|FILE.gguf] [--prompt-format chat|alpaca|none|auto] [--system TEXT] [--prompt TEXT]',
  flags: {
    ...generateCommand.spec.flags,
    prompt: { type: 'string', help: 'one message to answer; without it, read messages from standard input' },
  },
};

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const { format, notice } = generateCommand.promptFormat('chat', values, 'chat');
  if (typeof values['prompt'] === 'string')
    return generateCommand.generateFromFlags(values, { format, notice }, out, 'chat');
  const adapterPath = values['adapter'];
  if (typeof values['model'] !== 'string' && typeof adapterPath !== 'string')
    throw new UsageError('chat: --model is required', 'a model folder, a .gguf file or a Hub id');
  const model =
    typeof values['model'] === 'string' ? values['model'] : adapterBaseModel('chat', String(adapterPath));
  const maxNewTokens = intFlag('max-new-tokens', values['max-new-tokens'])!;
  const loaded = await loadModel(model, { backend: String(values['backend']) });
  let adapter: AdapterHook | null = null;
  try {
    if (typeof adapterPath === 'string')
      adapter = createAdapterHook(loaded.model, readAdapter(adapterPath, loaded.config));
    const history: ChatMessage[] =
      typeof values['system'] === 'string' ? [{ role: 'system', content: values['system'] }] : [];
    generateCommand.printNotice(notice);
    const rl = createInterface({ input: process.stdin, terminal: false });
    if (process.stdin.isTTY) process.stdout.write('> ');
    for await (const line of rl) {
      if (line.trim() === '') continue;
      const tok = loaded.tokenizer;
      // alpaca and plain prompts have no turns: each message is answered on its own
      if (format === 'chat') history.push({ role: 'user', content: line });
      const ids =
        format === 'chat'
          ? tok.encode(tok.applyChatTemplate(history, { addGenerationPrompt: true }), {
              addSpecialTokens: false,
            })
          : generateCommand.promptIds(tok, format, line, values);
      const turn = format === 'chat' ? chatEndOfTurn(tok) : { ids: [], texts: [] };
      const r = generate(loaded.model, tok, ids, {
        maxNewTokens,
        stopIds: turn.ids,
        stopStrings: turn.texts,
        ...(adapter === null ? {} : { linear: adapter.hook }),
      });
      out(r.text);
      if (format === 'chat') history.push({ role: 'assistant', content: r.text });
      if (process.stdin.isTTY) process.stdout.write('> ');
    }
    return 0;
  } finally {
    adapter?.dispose();
    loaded.dispose();
  }
}
