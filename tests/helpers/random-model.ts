/**
 * Llama-family model folders with seeded random weights and no tokenizer (config.json and
 * model.safetensors only), for tests that need a shape rather than a vocabulary: a byte-sized
 * vocabulary keeps the output layer cheap on software Vulkan. Load them with `loadWeights`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { configToJson, type LlamaConfig } from '../../src/models/config.js';
import { llamaWeights } from '../../src/models/llama.js';
import { readConfig } from '../../src/models/load.js';
import { ROOT } from './cli.js';
import { rng } from './ref.js';

/** The parity fixture's Llama (vocabulary 256, hidden 64, grouped-query attention, 2 blocks). */
export const FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');

/**
 * Writes the fixture's configuration with `changes` into `dir`, with weights uniform in ±`scale`
 * (norms 1) from `seed`. Returns `dir`.
 */
export function writeRandomLlama(
  dir: string,
  changes: Partial<LlamaConfig>,
  seed: number,
  scale = 0.05,
): string {
  const config = { ...readConfig(FIXTURE), ...changes };
  const rand = rng(seed);
  mkdirSync(dir, { recursive: true });
  writeSafetensors(
    path.join(dir, 'model.safetensors'),
    llamaWeights(config).map((w) => {
      const n = w.shape.reduce((x, y) => x * y, 1);
      const data =
        w.role === 'norm'
          ? new Float32Array(n).fill(1)
          : Float32Array.from({ length: n }, () => scale * (2 * rand() - 1));
      return { name: w.name, shape: w.shape, data, dtype: 'F32' as const };
    }),
  );
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(configToJson(config)));
  return dir;
}
