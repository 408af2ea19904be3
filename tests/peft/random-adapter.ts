/**
 * Random adapters for the adapter tests: every linear layer of a config (Llama's q, k, v, o, gate, up,
 * down; Phi-3's fused qkv and gate_up), with B far from zero (a freshly initialized LoRA has B = 0, which would hide every bug), a
 * smaller rank on down_proj and a larger alpha on v_proj (so rank_pattern, alpha_pattern and GGUF
 * scale folding are exercised).
 */
import path from 'node:path';
import type { LoraAdapterData, LoraModule } from '../../src/peft/lora-weights.js';
import type { LlamaConfig } from '../../src/models/config.js';
import { llamaWeights, type LlamaModel } from '../../src/models/llama.js';
import { gaussian, seededUniform } from '../../src/util/random.js';
import { ROOT } from '../helpers/cli.js';

export const GQA_FIXTURE = path.join(ROOT, 'tests', 'fixtures', 'parity', 'llama_gqa');
export const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

export type Variant = 'lora' | 'rslora' | 'dora';

/**
 * An adapter on every linear layer. DoRA magnitudes start from the row norms of the model's W (as
 * PEFT initializes them; 1 without a model) and are perturbed by up to ±20%.
 */
export function randomAdapter(
  c: LlamaConfig,
  variant: Variant,
  seed: number,
  model?: LlamaModel,
  bStd = 0.05,
): LoraAdapterData {
  const uniform = seededUniform(seed);
  const modules = new Map<string, LoraModule>();
  for (const w of llamaWeights(c)) {
    if (w.role !== 'linear') continue;
    const name = w.name.slice(0, -'.weight'.length);
    const short = name.slice(name.lastIndexOf('.') + 1);
    const [out, inF] = w.shape as [number, number];
    const rank = short === 'down_proj' ? 4 : 8;
    const alpha = short === 'v_proj' ? 32 : 16;
    const m: LoraModule = {
      rank,
      alpha,
      inFeatures: inF,
      outFeatures: out,
      A: gaussian(uniform, rank * inF, 1 / Math.sqrt(inF)), // (r, in)
      B: gaussian(uniform, out * rank, bStd), // (out, r)
    };
    if (variant === 'dora') {
      const wv = model?.weight(`${name}.weight`).read();
      m.magnitude = new Float32Array(out);
      for (let o = 0; o < out; o++) {
        let ss = 0;
        for (let i = 0; i < inF; i++) ss += wv === undefined ? 1 / inF : wv[o * inF + i]! ** 2;
        m.magnitude[o] = Math.sqrt(ss) * (0.8 + 0.4 * uniform());
      }
    }
    modules.set(name, m);
  }
  return {
    baseModel: 'tests/fixtures/parity/llama_gqa',
    rsLora: variant === 'rslora',
    dora: variant === 'dora',
    dropout: 0.05,
    targetModules: [...new Set([...modules.keys()].map((n) => n.slice(n.lastIndexOf('.') + 1)))],
    modules,
  };
}
