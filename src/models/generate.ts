/**
 * Text generation with a KV cache: the prompt is run once (prefill), then one token per step.
 * Greedy when temperature is 0; otherwise sampling with temperature, top-k and top-p from a seeded
 * generator, so a run is reproducible.
 */
import { QtuneError, TokenRangeError } from '../errors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { Graph } from '../tensor/graph.js';
import { seededUniform } from '../util/random.js';
import { KVCache, type LinearHook, type LlamaModel } from './llama.js';

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 = greedy (default). */
  temperature?: number;
  /** Keep the k most likely tokens (0 = all). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = all). */
  topP?: number;
  seed?: number;
  /** Stop at an end-of-sequence token (default true). */
  stopAtEos?: boolean;
  /** More tokens to stop at, not included in the result: a chat template's end of turn (`<|eot_id|>`). */
  stopIds?: readonly number[];
  /**
   * Texts to stop at: generation ends once the text holds one, and the result is cut before it (an
   * end-of-turn marker the tokenizer writes as several plain tokens).
   */
  stopStrings?: readonly string[];
  onToken?: (id: number) => void;
  /** Applies an adapter (LoRA/DoRA) to the linear layers, as in training. */
  linear?: LinearHook;
}

export interface GenerateResult {
  /** The new token ids (without the prompt). */
  ids: number[];
  text: string;
  /** eos: an EOS token; stop: a `stopIds` token or a `stopStrings` text; length: maxNewTokens. */
  stoppedBy: 'eos' | 'stop' | 'length';
  /** The EOS or `stopIds` token generation stopped at (not in `ids`), if any. */
  stopToken?: number;
}

function validate(
  o: GenerateOptions,
): Required<Omit<GenerateOptions, 'onToken' | 'linear' | 'stopIds' | 'stopStrings'>> {
  const r = {
    maxNewTokens: o.maxNewTokens ?? 64,
    temperature: o.temperature ?? 0,
    topK: o.topK ?? 0,
    topP: o.topP ?? 1,
    seed: o.seed ?? 0,
    stopAtEos: o.stopAtEos ?? true,
  };
  const bad = (field: string, v: number, want: string) =>
    new QtuneError('INVALID_ARGUMENT', `generate: ${field} = ${v} is not ${want}`, { hint: `use ${want}` });
  if (!Number.isInteger(r.maxNewTokens) || r.maxNewTokens < 1)
    throw bad('maxNewTokens', r.maxNewTokens, 'an integer >= 1');
  if (!(r.temperature >= 0)) throw bad('temperature', r.temperature, 'a number >= 0');
  if (!Number.isInteger(r.topK) || r.topK < 0) throw bad('topK', r.topK, 'an integer >= 0');
  if (!(r.topP > 0 && r.topP <= 1)) throw bad('topP', r.topP, 'a number in (0, 1]');
  return r;
}

/** Picks the next token from logits. */
export function sampleToken(
  logits: Float32Array,
  o: { temperature: number; topK: number; topP: number },
  rand: () => number,
): number {
  if (o.temperature === 0) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  let order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]!);
  if (o.topK > 0) order = order.slice(0, o.topK);
  const max = logits[order[0]!]!;
  const weights = order.map((i) => Math.exp((logits[i]! - max) / o.temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  let keep = order.length;
  if (o.topP < 1) {
    let cum = 0;
    for (let k = 0; k < order.length; k++) {
      cum += weights[k]! / total;
      if (cum >= o.topP) {
        keep = k + 1;
        break;
      }
    }
  }
  const kept = weights.slice(0, keep);
  let r = rand() * kept.reduce((a, b) => a + b, 0);
  for (let k = 0; k < keep; k++) {
    r -= kept[k]!;
    if (r <= 0) return order[k]!;
  }
  return order[keep - 1]!;
}

/** Logits of the last position after feeding `ids` at the cache's current length. */
function step(
  model: LlamaModel,
  cache: KVCache,
  ids: readonly number[],
  hook: LinearHook | undefined,
): Float32Array {
  const g = new Graph(model.backends);
  try {
    const input = g.input([1, ids.length], 'i32', 'ids');
    const logits = g.output(
      model.forward(g, input, { cache, lastOnly: true, ...(hook === undefined ? {} : { linear: hook }) }),
    );
    g.compile();
    g.set(input, Int32Array.from(ids));
    g.run();
    cache.length += ids.length;
    return g.read(logits);
  } finally {
    g.dispose();
  }
}

export function generate(
  model: LlamaModel,
  tokenizer: Tokenizer,
  prompt: readonly number[],
  options: GenerateOptions = {},
): GenerateResult {
  const o = validate(options);
  if (prompt.length === 0) throw new QtuneError('INVALID_ARGUMENT', 'generate: the prompt has no tokens');
  const vocab = model.config.vocab_size;
  const bad = prompt.findIndex((t) => !Number.isInteger(t) || t < 0 || t >= vocab);
  if (bad >= 0)
    throw new TokenRangeError(
      'generate: the prompt',
      { id: prompt[bad]!, position: bad, vocabSize: vocab },
      {
        hint: `${tokenizer.describeToken(prompt[bad]!)} has no embedding row: remove it from the prompt, or resize the embeddings to the tokenizer`,
      },
    );
  const map = model.deviceMap;
  const cache = new KVCache((layer) => map.blocks[layer]!, model.config, prompt.length + o.maxNewTokens);
  const rand = seededUniform(o.seed);
  const eos = new Set(tokenizer.eosIds);
  const stopIds = new Set(options.stopIds ?? []);
  const stopStrings = (options.stopStrings ?? []).filter((t) => t !== '');
  const out: number[] = [];
  let stoppedBy: GenerateResult['stoppedBy'] = 'length';
  let cut: number | null = null; // where a stop string begins in the decoded text
  let stopToken: number | undefined;
  try {
    let logits = step(model, cache, prompt, options.linear);
    for (let i = 0; i < o.maxNewTokens; i++) {
      const next = sampleToken(logits, o, rand);
      if (o.stopAtEos && eos.has(next)) {
        [stoppedBy, stopToken] = ['eos', next];
        break;
      }
      if (stopIds.has(next)) {
        [stoppedBy, stopToken] = ['stop', next];
        break;
      }
      out.push(next);
      options.onToken?.(next);
      if (stopStrings.length > 0) {
        const text = tokenizer.decode(out, { skipSpecialTokens: true });
        const at = Math.min(...stopStrings.map((t) => text.indexOf(t)).filter((k) => k >= 0));
        if (Number.isFinite(at)) {
          cut = at;
          stoppedBy = 'stop';
          break;
        }
      }
      if (i + 1 < o.maxNewTokens) logits = step(model, cache, [next], options.linear);
    }
  } finally {
    cache.dispose();
  }
  if (cut !== null) {
    // the tokens before the stop string, the text cut where it begins
    const text = tokenizer.decode(out, { skipSpecialTokens: true }).slice(0, cut);
    while (out.length > 0 && tokenizer.decode(out, { skipSpecialTokens: true }).length > cut) out.pop();
    return { ids: out, text, stoppedBy };
  }
  const text = tokenizer.decode(out, { skipSpecialTokens: true });
  return stopToken === undefined ? { ids: out, text, stoppedBy } : { ids: out, text, stoppedBy, stopToken };
}
