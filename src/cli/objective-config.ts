/**
 * The training config's objective keys (docs/objectives.md): `objective` and the preference
 * objectives' settings, as TRL names them. Spread into TRAIN_OPTIONS (train-config.ts).
 */
import { OBJECTIVES } from '../train/objective.js';
import type { DpoLossType } from '../train/preference.js';
import type { TrainerOptions } from '../train/trainer.js';

export const OBJECTIVE_OPTIONS = {
  objective: {
    kind: 'string',
    default: 'sft',
    choices: OBJECTIVES,
    help: 'what the steps minimise: sft (cross-entropy of the completions), dpo, orpo, kto, simpo, grpo',
  },
  beta: {
    kind: 'number',
    default: null,
    min: 0,
    help: "the objective's beta, as TRL's: dpo's tie to the reference, orpo's odds-ratio weight, simpo's reward scale (default 0.1); grpo's KL coefficient (default 0)",
  },
  loss_type: {
    kind: 'string',
    default: null,
    help: "the objective's loss variant, as TRL's: dpo sigmoid (default), ipo, hinge; grpo dapo (default), grpo, bnpo, dr_grpo",
  },
  label_smoothing: {
    kind: 'number',
    default: 0,
    min: 0,
    max: 0.49,
    help: 'dpo sigmoid: the chance a preference label is flipped (conservative DPO)',
  },
  simpo_gamma: {
    kind: 'number',
    default: 0.5,
    help: "simpo: the target reward margin γ (TRL's simpo_gamma)",
  },
  precompute_ref_log_probs: {
    kind: 'boolean',
    default: false,
    help: 'dpo: compute the reference log-probs once before training instead of per batch',
  },
} as const;

/** The trainer options of a config's objective keys. */
export function objectiveTrainerOptions(c: {
  objective: string;
  beta: number | null;
  loss_type: string | null;
  label_smoothing: number;
  precompute_ref_log_probs: boolean;
  simpo_gamma: number;
}): Pick<TrainerOptions, 'objective' | 'preference'> {
  if (c.objective === 'sft') return {};
  const objective = c.objective as TrainerOptions['objective'] & string;
  if (objective !== 'dpo' && objective !== 'orpo' && objective !== 'simpo') return { objective }; // grpo's: grpo-config.ts
  const preference = {
    ...(c.beta === null ? {} : { beta: c.beta }),
    ...(c.loss_type === null ? {} : { lossType: c.loss_type as DpoLossType }),
    labelSmoothing: c.label_smoothing,
    precomputeRefLogProbs: c.precompute_ref_log_probs,
    simpoGamma: c.simpo_gamma,
  };
  return { objective, preference };
}
