/**
 * `qtune chat`: talk to a model (and adapter) with its chat template. With --prompt, one answer (as
 * `qtune generate --chat`); without, a conversation read line by line from standard input.
 */
import { createInterface } from 'node:readline';
import { createAdapterHook, type AdapterHook } from '../../peft/apply.js';
import { readAdapter } from '../adapter.js';
import type { ChatMessage } from '../../io/tokenizer.js';
import { generate } from '../../models/generate.js';
import { loadModel } from '../../models/load.js';
import { helpText, intFlag, parse, UsageError, type CommandSpec } from '../args.js';
import * as generateCommand from './generate.js';

export const spec: CommandSpec = {
  name: 'chat',
  summary: 'Chat with a model (and a LoRA/DoRA adapter) using its chat template.',
  usage: 'qtune chat --model PATH|ORG/NAME [--adapter DIR|FILE.gguf] [--system TEXT] [--prompt TEXT]',
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
  if (typeof values['prompt'] === 'string')
    return generateCommand.run([...argv.filter((a) => a !== '--chat'), '--chat'], out);
  const model = values['model'];
  if (typeof model !== 'string')
    throw new UsageError('chat: --model is required', 'a model folder, a .gguf file or a Hub id');
  const maxNewTokens = intFlag('max-new-tokens', values['max-new-tokens'])!;
  const loaded = await loadModel(model, { backend: String(values['backend']) });
  let adapter: AdapterHook | null = null;
  try {
    if (typeof values['adapter'] === 'string')
      adapter = createAdapterHook(loaded.model, readAdapter(values['adapter'], loaded.config));
    const history: ChatMessage[] =
      typeof values['system'] === 'string' ? [{ role: 'system', content: values['system'] }] : [];
    const rl = createInterface({ input: process.stdin, terminal: false });
    if (process.stdin.isTTY) process.stdout.write('> ');
    for await (const line of rl) {
      if (line.trim() === '') continue;
      history.push({ role: 'user', content: line });
      const tok = loaded.tokenizer;
      const ids = tok.encode(tok.applyChatTemplate(history, { addGenerationPrompt: true }), {
        addSpecialTokens: false,
      });
      const r = generate(loaded.model, tok, ids, {
        maxNewTokens,
        ...(adapter === null ? {} : { linear: adapter.hook }),
      });
      out(r.text);
      history.push({ role: 'assistant', content: r.text });
      if (process.stdin.isTTY) process.stdout.write('> ');
    }
    return 0;
  } finally {
    adapter?.dispose();
    loaded.dispose();
  }
}
