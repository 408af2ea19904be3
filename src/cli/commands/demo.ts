/** `qtune demo`: QLoRA on a tiny MLP (frozen q4_0 base + LoRA + AdamW), no download needed. */
import { BackendManager } from '../../backends/manager.js';
import { trainQloraMlp } from '../../demo/qlora-mlp.js';
import { helpText, intFlag, parse, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'demo',
  summary: 'Fine-tune a tiny MLP with QLoRA (frozen q4_0 weight + LoRA adapter + AdamW); no download.',
  usage: 'qtune demo [--backend auto|cpu|vulkan|cuda|metal|NAME] [--steps N] [--threads N]',
  flags: {
    backend: { type: 'string', default: 'auto', help: 'device to train on (QTUNE_BACKEND also works)' },
    steps: { type: 'string', default: '150', help: 'training steps' },
    threads: { type: 'string', help: 'CPU threads (default: physical cores)' },
  },
};

export function run(argv: string[], out: (s: string) => void): number {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const steps = intFlag('steps', values['steps'])!;
  const manager = new BackendManager();
  const threads = intFlag('threads', values['threads']);
  if (threads !== undefined) manager.setThreads(threads);
  const backend = manager.select(String(values['backend']));
  out(
    `qtune demo: QLoRA on a 2-layer MLP (64→96 frozen q4_0 + rank-4 LoRA, 96→10 f32) on ${backend.toString()}`,
  );
  const every = Math.max(1, Math.floor(steps / 10));
  const r = trainQloraMlp(backend, {
    steps,
    onStep: (step, loss) => {
      if (step === 1 || step % every === 0 || step === steps)
        out(`step ${String(step).padStart(4)}  loss ${loss.toFixed(4)}`);
    },
  });
  const first = r.losses[0]!;
  const last = r.losses[r.losses.length - 1]!;
  out(
    `loss ${first.toFixed(4)} → ${last.toFixed(4)} (${((1 - last / first) * 100).toFixed(1)}% lower), ${r.msPerStep.toFixed(2)} ms/step; frozen base weight ${r.baseHashAfter === r.baseHashBefore ? 'unchanged' : 'CHANGED'}`,
  );
  return r.baseHashAfter === r.baseHashBefore ? 0 : 1;
}
