/**
 * One training run in a process of its own, so that its peak resident memory is its own (spawned by
 * memory.test.ts): loads `<model dir>` for `<train type>` on the CPU, trains two steps of batch 2 on
 * Moby Dick text and prints one JSON line, the Trainer's memory report.
 * Usage: node memory-run.js <model dir> <train type>
 */
import { Tokenizer } from '../../src/io/tokenizer.js';
import { Trainer } from '../../src/train/trainer.js';
import { mobyDickChapters, windows } from '../helpers/finetune.js';

const [dir, trainType] = process.argv.slice(2) as [string, string];
// one chapter is enough text, and keeps the tokenizer's garbage small beside the weights
const text = Tokenizer.fromFolder(dir).encode(mobyDickChapters(40, 41)[0]!);
const trainer = await Trainer.create(
  dir,
  { train: windows(text, 64, 4) },
  {
    trainType,
    backend: 'cpu',
    batchSize: 2,
    maxSteps: 2,
    lora: { rank: 8, alpha: 16 },
    optimizer: { name: 'adamw', lr: 1e-4 },
  },
);
try {
  console.log(JSON.stringify(trainer.train().memory));
} finally {
  trainer.dispose();
}
