/**
 * GRPO's YAML keys and flags (objective: grpo), part of `qtune train`'s one table of options
 * (train-config.ts), and what they become: the prompt dataset and the trainer's `grpo` options,
 * with the reward modules imported. docs/objectives.md describes each.
 */
import type { Tokenizer } from '../io/tokenizer.js';
import type { TrainData } from '../data/example.js';
import { loadPromptDataset } from '../data/prompts.js';
import { SCALE_REWARDS } from '../train/grpo-loss.js';
import { resolveGrpoOptions, type GrpoOptions } from '../train/grpo.js';
import { exactMatchReward, formatReward, loadRewardFunctions } from '../train/rewards.js';
import type { OptionSpec } from './train-config.js';

export const GRPO_OPTIONS = {
  num_generations: {
    kind: 'int',
    default: 8,
    min: 2,
    help: 'grpo: completions sampled per prompt (a group); a step samples batch_size × this per micro-batch',
  },
  max_completion_length: {
    kind: 'int',
    default: 64,
    min: 1,
    help: 'grpo: tokens a sampled completion may have',
  },
  temperature: {
    kind: 'number',
    default: 1,
    min: 0,
    minExclusive: true,
    help: 'grpo: sampling temperature',
  },
  top_p: { kind: 'number', default: 1, min: 0, minExclusive: true, max: 1, help: 'grpo: nucleus sampling' },
  top_k: { kind: 'int', default: 0, min: 0, help: 'grpo: sample from the k most likely tokens (0: all)' },
  epsilon: {
    kind: 'number',
    default: 0.2,
    min: 0,
    minExclusive: true,
    max: 0.99,
    help: 'grpo: the ratio is clipped to [1 − epsilon, 1 + epsilon_high]',
  },
  epsilon_high: { kind: 'number', default: null, min: 0, minExclusive: true, help: 'grpo: default epsilon' },
  scale_rewards: {
    kind: 'string',
    default: 'group',
    choices: SCALE_REWARDS,
    help: "grpo: divide each advantage by its group's reward std (group), the batch's, or not (none)",
  },
  reward_functions: {
    kind: 'list',
    default: [],
    help: 'grpo: reward modules, FILE.mjs or FILE.mjs:EXPORT, each exporting (prompts, completions, records) => number[]',
  },
  exact_match: {
    kind: 'string',
    default: null,
    help: "grpo: reward 1 where the completion equals this record field (numbers as numbers: ' 19' is 19)",
  },
  format_regex: {
    kind: 'string',
    default: null,
    help: 'grpo: reward 1 where the completion matches this JavaScript regular expression',
  },
  log_completions: {
    kind: 'int',
    default: 0,
    min: 0,
    help: "grpo: every N steps, write the first prompt's completions into metrics.jsonl (kind: sample)",
  },
} as const satisfies Record<string, OptionSpec>;

/** The config values GRPO reads (a TrainConfig has them all). */
export interface GrpoConfig {
  dataset: string | null;
  dataset_format: string;
  seed: number;
  max_samples: number | null;
  context_length: number;
  num_generations: number;
  max_completion_length: number;
  temperature: number;
  top_p: number;
  top_k: number;
  epsilon: number;
  epsilon_high: number | null;
  scale_rewards: string;
  reward_functions: string[];
  exact_match: string | null;
  format_regex: string | null;
  log_completions: number;
  beta: number | null;
  loss_type: string | null;
}

/** The prompt dataset and the trainer's `grpo` options of a config (the reward modules imported). */
export async function grpoSetup(
  c: GrpoConfig,
  tok: Tokenizer,
): Promise<{ data: TrainData; grpo: GrpoOptions }> {
  const rewardFunctions = [
    ...(c.exact_match === null ? [] : [exactMatchReward(c.exact_match)]),
    ...(c.format_regex === null ? [] : [formatReward(c.format_regex)]),
    ...(await loadRewardFunctions(c.reward_functions)),
  ];
  const grpo: GrpoOptions = {
    numGenerations: c.num_generations,
    maxCompletionLength: c.max_completion_length,
    temperature: c.temperature,
    topP: c.top_p,
    topK: c.top_k,
    epsilon: c.epsilon,
    ...(c.epsilon_high === null ? {} : { epsilonHigh: c.epsilon_high }),
    scaleRewards: c.scale_rewards as GrpoOptions['scaleRewards'] & string,
    rewardFunctions,
    logCompletions: c.log_completions,
    ...(c.beta === null ? {} : { beta: c.beta }),
    ...(c.loss_type === null ? {} : { lossType: c.loss_type as GrpoOptions['lossType'] & string }),
  };
  resolveGrpoOptions(grpo); // a bad value fails before the prompts are read
  const data = await loadPromptDataset(
    {
      ...(c.dataset === null ? {} : { path: c.dataset }),
      format: c.dataset_format,
      seed: c.seed,
      ...(c.max_samples === null ? {} : { max_samples: c.max_samples }),
    },
    tok,
    c.context_length,
    c.max_completion_length,
  );
  return { data, grpo };
}
