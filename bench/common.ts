/** What the benchmarks share; the code lives in src/bench/ so that `qtune bench` can use it too. */
export { enginesToCompare, runChild, runPython } from '../src/bench/common.js';
