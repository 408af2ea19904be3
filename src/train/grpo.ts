/**
 * GRPO (Group Relative Policy Optimization, DeepSeekMath; as TRL's GRPOTrainer): each step takes the
 * next micro-batches of prompts, samples `numGenerations` completions of each under the current
 * policy (the trainer's model with its adapter, with the KV cache), scores them with the reward
 * functions, normalises the rewards within each prompt's group into advantages, and runs one
 * weighted step whose per-token weights are −∂loss/∂log p of grpo-loss.ts (the clipped ratio, the k3
 * KL to the reference, TRL's `dapo` normalisation by default). One update per generation batch, so
 * the ratio is 1; its clipped form is kept for the gradient and the clip_ratio metric.
 *
 * @example
 * const t = new Trainer(prepared, { train: promptExamples(tok, records, 64, 8, padId(tok)) }, {
 *   objective: 'grpo', batchSize: 2, maxSteps: 20,
 *   grpo: { numGenerations: 8, maxCompletionLength: 8, rewardFunctions: [exactMatchReward('answer')] },
 * });
 * await t.trainAsync();
 */
import { ConfigError } from '../errors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { generate, type GenerateResult } from '../models/generate.js';
import type { LinearHook, LlamaModel } from '../models/llama.js';
import type { LoraLayers } from '../peft/lora.js';
import type { Example } from '../data/example.js';
import { isPromptExample, type PromptExample } from '../data/prompts.js';
import { chatEndOfTurn, IGNORE } from '../data/tokenize.js';
import { GRPO_LOSS_TYPES, SCALE_REWARDS, groupAdvantages, grpoLoss, sampleStd } from './grpo-loss.js';
import type { GrpoLossType, GrpoSequence, ScaleRewards } from './grpo-loss.js';
import type { StepResult } from './options.js';
import { scoreCompletions, type NamedReward } from './rewards.js';
import type { TokenLogProbOptions } from './logprobs.js';
import type { WeightedMicroBatch, WeightedStepOptions } from './objective.js';

/** GRPO's options (the YAML keys in brackets; docs/objectives.md). */
export interface GrpoOptions {
  /** Completions sampled per prompt, G (`num_generations`). Default 8, as TRL. */
  numGenerations?: number;
  /** Tokens a completion may have (`max_completion_length`, alias `max_new_tokens`). Default 64. */
  maxCompletionLength?: number;
  /** Sampling temperature (`temperature`). Default 1, as TRL. */
  temperature?: number;
  /** Nucleus sampling (`top_p`). Default 1. */
  topP?: number;
  /** Keep the k most likely tokens (`top_k`, 0 = all). Default 0. */
  topK?: number;
  /** The ratio's clip, [1 − epsilon, 1 + epsilonHigh] (`epsilon`, `epsilon_high`). Default 0.2. */
  epsilon?: number;
  epsilonHigh?: number;
  /** The KL coefficient (`beta`); 0 (TRL's default) skips the reference pass. */
  beta?: number;
  /** The loss normalisation (`loss_type`). Default `dapo`, TRL's. */
  lossType?: GrpoLossType;
  /** Advantage scaling (`scale_rewards`). Default `group`, TRL's. */
  scaleRewards?: ScaleRewards;
  /** The reward functions; their rewards are summed (`reward_functions`, `exact_match`, `format_regex`). */
  rewardFunctions: NamedReward[];
  /** Every N steps, log the first prompt's completions as `sample` rows (`log_completions`; 0: never). */
  logCompletions?: number;
}

export type GrpoSettings = Required<Omit<GrpoOptions, 'epsilonHigh'>> & { epsilonHigh: number };

/** The options with their defaults, checked (each message names the YAML key). */
export function resolveGrpoOptions(o: GrpoOptions | undefined): GrpoSettings {
  if (o === undefined || o.rewardFunctions.length === 0)
    throw new ConfigError('objective: grpo needs at least one reward function', {
      hint: 'set reward_functions: [rewards.mjs], exact_match: FIELD or format_regex: REGEX',
    });
  const s: GrpoSettings = {
    numGenerations: o.numGenerations ?? 8,
    maxCompletionLength: o.maxCompletionLength ?? 64,
    temperature: o.temperature ?? 1,
    topP: o.topP ?? 1,
    topK: o.topK ?? 0,
    epsilon: o.epsilon ?? 0.2,
    epsilonHigh: o.epsilonHigh ?? o.epsilon ?? 0.2,
    beta: o.beta ?? 0,
    lossType: o.lossType ?? 'dapo',
    scaleRewards: o.scaleRewards ?? 'group',
    rewardFunctions: o.rewardFunctions,
    logCompletions: o.logCompletions ?? 0,
  };
  const bad = (key: string, v: unknown, want: string) =>
    new ConfigError(`${key}: ${JSON.stringify(v)} is not ${want}`, { hint: `use ${want}` });
  const int = (v: number, min: number) => Number.isInteger(v) && v >= min;
  if (!int(s.numGenerations, 2)) throw bad('num_generations', s.numGenerations, 'an integer >= 2 (a group)');
  if (!int(s.maxCompletionLength, 1))
    throw bad('max_completion_length', s.maxCompletionLength, 'an integer >= 1');
  if (!(s.temperature > 0)) throw bad('temperature', s.temperature, 'a number > 0 (GRPO samples)');
  if (!(s.topP > 0 && s.topP <= 1)) throw bad('top_p', s.topP, 'a number in (0, 1]');
  if (!int(s.topK, 0)) throw bad('top_k', s.topK, 'an integer >= 0');
  if (!(s.epsilon > 0 && s.epsilon < 1)) throw bad('epsilon', s.epsilon, 'a number in (0, 1)');
  if (!(s.epsilonHigh > 0)) throw bad('epsilon_high', s.epsilonHigh, 'a number > 0');
  if (!(s.beta >= 0 && Number.isFinite(s.beta))) throw bad('beta', s.beta, 'a number >= 0');
  if (!GRPO_LOSS_TYPES.includes(s.lossType)) throw bad('loss_type', s.lossType, GRPO_LOSS_TYPES.join(', '));
  if (!SCALE_REWARDS.includes(s.scaleRewards))
    throw bad('scale_rewards', s.scaleRewards, SCALE_REWARDS.join(', '));
  if (!int(s.logCompletions, 0)) throw bad('log_completions', s.logCompletions, 'an integer >= 0 (steps)');
  return s;
}

/** What GRPO uses of the Trainer (its public members). */
export interface GrpoTrainer {
  readonly model: LlamaModel;
  readonly tokenizer: Tokenizer | null;
  readonly lora: LoraLayers | null;
  readonly globalStep: number;
  readonly settings: { readonly seed: number };
  tokenLogProbs(examples: Example[], o?: TokenLogProbOptions): Float64Array[];
  weightedStep(microBatches: WeightedMicroBatch[], o: WeightedStepOptions): StepResult;
}

/** A completion of a sample row (`kind: 'sample'` in metrics.jsonl). */
export interface CompletionSample {
  prompt: string;
  completion: string;
  reward: number;
}

/** One sampled completion: its tokens (with the EOS or stop token it ended at) and text. */
interface Completion {
  example: PromptExample;
  tokens: number[];
  text: string;
}

export class GrpoObjective {
  readonly name = 'grpo';
  readonly async = true;
  private readonly eos: number;

  constructor(
    private readonly t: GrpoTrainer,
    readonly o: GrpoSettings,
  ) {
    const tok = t.tokenizer;
    if (tok === null)
      throw new ConfigError('objective: grpo samples completions, and the model has no tokenizer');
    this.eos = tok.eosIds[0] ?? -1;
  }

  /** Completion sequences a prompt runs as (the graphs' rows per example). */
  static sequencesPerExample(o: GrpoOptions | undefined): number {
    return o?.numGenerations ?? 8;
  }

  /** One step: sample, score, weigh, update. Async: reward functions may return promises. */
  async step(microBatches: readonly (readonly Example[])[]): Promise<StepResult> {
    const G = this.o.numGenerations;
    const step = this.t.globalStep + 1;
    const groups = microBatches.map((mb, k) => mb.flatMap((e, i) => this.sample(e, step, k, i)));
    const all = groups.flat();
    const records = all.map((c) => c.example.prompt.record);
    const { total, perFunction } = await scoreCompletions(
      this.o.rewardFunctions,
      all.map((c) => c.example.prompt.text),
      all.map((c) => c.text),
      records,
    );
    const advantages = groupAdvantages(total, G, this.o.scaleRewards);
    const examples = groups.map((mb) => mb.map(completionExample));
    const seqs: GrpoSequence[] = [];
    examples.forEach((mb, k) => {
      const logp = this.t.tokenLogProbs(mb, { microBatch: k });
      const ref = this.o.beta === 0 ? null : this.t.tokenLogProbs(mb, { adapters: false });
      logp.forEach((lp, i) =>
        // one update per generation batch: the sampling policy's log-probs are these
        seqs.push({
          logp: lp,
          old: lp,
          ref: ref?.[i] ?? null,
          advantage: advantages[seqs.length]!,
          microBatch: k,
        }),
      );
    });
    const r = grpoLoss(seqs, this.o);
    let at = 0;
    const weighted = examples.map((mb) => ({
      examples: mb,
      weights: mb.map(() => Float32Array.from(r.weights[at++]!)),
    }));
    const metrics: Record<string, number> = {
      reward: mean(total),
      reward_std: sampleStd(total),
      completion_length: r.tokens / Math.max(all.length, 1),
      clip_ratio: r.clipRatio,
      'clip_ratio/low_mean': r.clipLow,
      'clip_ratio/high_mean': r.clipHigh,
      frac_reward_zero_std: zeroStdShare(total, G),
    };
    if (this.o.beta !== 0) metrics['kl'] = r.kl;
    for (const [name, v] of perFunction) {
      metrics[`rewards/${name}/mean`] = mean(v);
      metrics[`rewards/${name}/std`] = sampleStd(v);
    }
    const result = this.t.weightedStep(weighted, { count: 1, loss: r.loss, metrics });
    const every = this.o.logCompletions;
    if (every > 0 && result.step % every === 0 && all.length > 0)
      result.samples = all
        .slice(0, G)
        .map((c, i) => ({ prompt: c.example.prompt.text, completion: c.text, reward: total[i]! }));
    return result;
  }

  /** G completions of prompt example `e` (the `i`-th of micro-batch `k`), sampled under the policy. */
  private sample(e: Example, step: number, k: number, i: number): Completion[] {
    if (!isPromptExample(e))
      throw new ConfigError('objective: grpo trains on a prompt dataset', {
        hint: 'give records with a "prompt" field (prompt examples: data/prompts.ts promptExamples)',
      });
    const tok = this.t.tokenizer!;
    const stops = e.prompt.chat ? chatEndOfTurn(tok) : { ids: [], texts: [] };
    const out: Completion[] = [];
    for (let g = 0; g < this.o.numGenerations; g++) {
      // a seed per (run seed, step, prompt slot, generation): a run samples the same completions again
      const seed = mixSeed(this.t.settings.seed, step, k, i, g);
      const res = generate(this.t.model, tok, e.prompt.ids, {
        maxNewTokens: Math.min(this.o.maxCompletionLength, e.ids.length + 1 - e.prompt.ids.length),
        temperature: this.o.temperature,
        topP: this.o.topP,
        topK: this.o.topK,
        seed,
        stopIds: stops.ids,
        stopStrings: stops.texts,
        ...(this.hook() === undefined ? {} : { linear: this.hook()! }),
      });
      out.push({ example: e, tokens: [...res.ids, ...endToken(res, this.eos)], text: res.text });
    }
    return out;
  }

  /** The adapter's product without dropout (sampling runs the policy as it is). */
  private hook(): LinearHook | undefined {
    const lora = this.t.lora;
    if (lora === null) return undefined;
    return (module, x, w) => lora.modules.get(module)?.apply(x, w) ?? null;
  }
}

/** The token a completion ended at, which it is trained to emit: EOS or a stop token; none at the length limit. */
function endToken(r: GenerateResult, eos: number): number[] {
  if (r.stopToken !== undefined) return [r.stopToken];
  return r.stoppedBy === 'eos' && eos >= 0 ? [eos] : [];
}

/** A completion as a training example: the prompt (no loss), then the completion's tokens (counted). */
function completionExample(c: Completion): Example {
  const T = c.example.ids.length; // every example of the run has the same positions
  const { ids: P, pad } = c.example.prompt;
  const tokens = [...P, ...c.tokens].slice(0, T + 1);
  const ids = new Int32Array(T).fill(pad);
  const labels = new Int32Array(T).fill(IGNORE);
  for (let t = 0; t + 1 < tokens.length; t++) {
    ids[t] = tokens[t]!;
    if (t + 1 >= P.length) labels[t] = tokens[t + 1]!;
  }
  return { ids, labels, length: tokens.length - 1 };
}

function mean(x: readonly number[]): number {
  return x.length === 0 ? 0 : x.reduce((a, b) => a + b, 0) / x.length;
}

/** Share of groups whose rewards are all equal (no signal: advantages 0). */
function zeroStdShare(rewards: readonly number[], G: number): number {
  let n = 0;
  for (let g = 0; g < rewards.length; g += G) if (sampleStd(rewards.slice(g, g + G)) === 0) n++;
  return rewards.length === 0 ? 0 : n / (rewards.length / G);
}

function mixSeed(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const p of parts) {
    h = Math.imul(h ^ (p >>> 0), 0x01000193) >>> 0;
    h = Math.imul(h ^ (h >>> 13), 0x5bd1e995) >>> 0;
  }
  return h;
}
