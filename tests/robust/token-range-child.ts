/**
 * The library API with out-of-range token ids, run by tests/robust/token-range.test.ts in a child
 * process so that a native abort would be seen as a signal: loads the model folder given, runs
 * `model.forward` with the ids given (comma-separated) and prints the error's class and message on
 * one line (exit 3), or `ran` (exit 0).
 *
 * usage: node token-range-child.js <model folder> <ids>
 */
import { QtuneError } from '../../src/errors.js';
import { loadModel } from '../../src/models/load.js';
import { Graph } from '../../src/tensor/graph.js';

const [dir, idsArg] = process.argv.slice(2);
const ids = Int32Array.from((idsArg ?? '').split(',').map(Number));
const loaded = await loadModel(dir!, { backend: 'cpu' });
const model = loaded.model;
const g = new Graph(model.backends);
try {
  const input = g.input([1, ids.length], 'i32', 'ids');
  g.output(model.forward(g, input));
  g.compile();
  g.set(input, ids);
  g.run();
  console.log('ran');
} catch (e) {
  if (!(e instanceof QtuneError)) throw e;
  console.log(`${e.name}: ${e.message}`);
  process.exitCode = 3;
} finally {
  g.dispose();
  loaded.dispose();
}
