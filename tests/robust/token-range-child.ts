/**
 * The library API with out-of-range token ids, run by tests/robust/token-range.test.ts in a child
 * process so that a native abort would be seen as a signal. With `forward`, loads the model folder
 * and runs `model.forward` on the ids given (comma-separated); with `trainer`, gives the ids as the
 * one example of `Trainer.create` and trains a step. Prints the error's class and message on one
 * line (exit 3), or `ran` (exit 0).
 *
 * usage: node token-range-child.js forward|trainer <model folder> <ids>
 */
import { QtuneError } from '../../src/errors.js';
import { loadModel } from '../../src/models/load.js';
import { Graph } from '../../src/tensor/graph.js';
import { Trainer } from '../../src/train/trainer.js';

const [mode, dir, idsArg] = process.argv.slice(2);
const ids = Int32Array.from((idsArg ?? '').split(',').map(Number));

async function forward(): Promise<void> {
  const loaded = await loadModel(dir!, { backend: 'cpu' });
  const g = new Graph(loaded.model.backends);
  try {
    const input = g.input([1, ids.length], 'i32', 'ids');
    g.output(loaded.model.forward(g, input));
    g.compile();
    g.set(input, ids);
    g.run();
  } finally {
    g.dispose();
    loaded.dispose();
  }
}

async function trainer(): Promise<void> {
  const labels = Int32Array.from(ids, (_, i) => (i + 1 < ids.length ? 1 : -100));
  const t = await Trainer.create(
    dir!,
    { train: [{ ids, labels }] },
    { trainType: 'lora', backend: 'cpu', maxSteps: 1, batchSize: 1 },
  );
  try {
    t.train();
  } finally {
    t.dispose();
  }
}

try {
  await (mode === 'trainer' ? trainer() : forward());
  console.log('ran');
} catch (e) {
  if (!(e instanceof QtuneError)) throw e;
  console.log(`${e.name}: ${e.message}`);
  process.exitCode = 3;
}
