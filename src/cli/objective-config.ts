/**
 * The training config's objective keys (docs/objectives.md): `objective` and the preference
 * objectives' settings, as TRL names them. Spread into TRAIN_OPTIONS (train-config.ts).
 */
import { OBJECTIVES } from '../train/objective.js';
import type { TrainerOptions } from '../train/trainer.js';

export const OBJECTIVE_OPTIONS = {
  objective: {
    kind: 'string',
    default: 'sft',
    choices: OBJECTIVES,
    help: 'what the steps minimise: sft (cross-entropy of the completions), dpo, orpo, kto, simpo, grpo',
  },
} as const;

/** The trainer options of a config's objective keys. */
export function objectiveTrainerOptions(c: { objective: string }): Pick<TrainerOptions, 'objective'> {
  return c.objective === 'sft' ? {} : { objective: c.objective as TrainerOptions['objective'] & string };
}
