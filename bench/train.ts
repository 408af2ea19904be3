/**
 * `npm run bench`: the training benchmark (tokens/s and peak RSS per train type at the baseline's
 * shapes, beside PyTorch's bench_lora.py in the same session). The code is src/bench/train.ts, shared
 * with `qtune bench`; this entry point takes the same flags.
 *
 *   npm run bench [-- --shapes tiny,small,1.1b] [--train-types lora,qlora,qlora-int8,full] [--json]
 */
import { main } from '../src/cli/main.js';

process.exitCode = await main(['bench', ...process.argv.slice(2)]);
