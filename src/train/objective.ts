/**
 * The training objective (docs/objectives.md): `sft` (the default: the mean cross-entropy of the
 * label tokens, the Trainer's own step), or a preference/RL objective built on the Trainer's
 * {@link ObjectiveTrainer.tokenLogProbs} and {@link ObjectiveTrainer.weightedStep}: each takes the
 * next micro-batches of examples, reads the policy's and the reference's per-token log-probs,
 * computes its loss, its per-token derivative and its metrics on the host in float64, and runs one
 * weighted step.
 */
import { ConfigError } from '../errors.js';
import { closestName } from '../util/names.js';
import type { Example, TrainData } from '../data/example.js';
import type { StepResult, TrainerOptions } from './options.js';
import type { TokenLogProbOptions } from './logprobs.js';
import { DpoObjective, preferenceSettings } from './preference.js';
import { GrpoObjective, resolveGrpoOptions, type GrpoOptions, type GrpoTrainer } from './grpo.js';

export const OBJECTIVES = ['sft', 'dpo', 'orpo', 'kto', 'simpo', 'grpo'] as const;
export type ObjectiveName = (typeof OBJECTIVES)[number];

/** One micro-batch of a weighted step: its sequences and a weight per counted label token of each. */
export interface WeightedMicroBatch {
  examples: Example[];
  weights: Float32Array[];
}

/** {@link ObjectiveTrainer.weightedStep}'s options. */
export interface WeightedStepOptions {
  /** What the gradient sum is divided by (pairs, examples, tokens: the objective's count). */
  count: number;
  /** The step's loss, as the objective defines it (logged). */
  loss: number;
  /** The step's metrics, logged with it (metrics.jsonl, TensorBoard, W&B). */
  metrics?: Record<string, number>;
}

/** What an objective uses of the Trainer (its public methods). */
export interface ObjectiveTrainer extends GrpoTrainer {
  tokenLogProbs(examples: Example[], o?: TokenLogProbOptions): Float64Array[];
  weightedStep(microBatches: WeightedMicroBatch[], o: WeightedStepOptions): StepResult;
}

/** A preference/RL objective: one optimizer step from the next micro-batches of the data. */
export interface Objective {
  readonly name: ObjectiveName;
  step(microBatches: readonly (readonly Example[])[]): StepResult | Promise<StepResult>;
  /** Its steps return promises: Trainer.trainAsync runs it, Trainer.train refuses it. */
  readonly async?: boolean;
}

/** What an objective is built from besides the trainer. */
export interface ObjectiveContext {
  /** Sequences per graph run. */
  rows: number;
  data: TrainData;
}

/**
 * Sequences each training example runs as: 2 for the paired objectives (chosen and rejected), and
 * GRPO's num_generations completions of each prompt.
 */
export function sequencesPerExample(objective: string | undefined, grpo?: GrpoOptions): number {
  if (objective === 'grpo') return GrpoObjective.sequencesPerExample(grpo);
  return objective === 'dpo' || objective === 'orpo' || objective === 'simpo' ? 2 : 1;
}

/** The objective the options name (checked): `sft` when none. */
export function checkObjective(name: unknown): ObjectiveName {
  if (name === undefined) return 'sft';
  if (typeof name === 'string' && (OBJECTIVES as readonly string[]).includes(name))
    return name as ObjectiveName;
  const near = typeof name === 'string' ? closestName(name, OBJECTIVES) : undefined;
  throw new ConfigError(`objective: ${JSON.stringify(name)} is not an objective`, {
    hint: `use one of ${OBJECTIVES.join(', ')}${near === undefined ? '' : `; did you mean ${near}?`}`,
  });
}

/** Checks the options' objective and its settings (before the trainer allocates anything). */
export function checkObjectiveOptions(o: TrainerOptions): void {
  const name = checkObjective(o.objective);
  if (name === 'dpo' || name === 'orpo' || name === 'simpo') preferenceSettings(o.preference);
  else if (name === 'grpo') resolveGrpoOptions(o.grpo);
  else if (name !== 'sft')
    throw new ConfigError(`objective: ${name} is not available yet`, {
      hint: 'use sft, dpo, orpo, simpo or grpo',
    });
}

/** The options' objective over `trainer` (checked by {@link checkObjectiveOptions}); null for `sft`. */
export function createObjective(
  o: TrainerOptions,
  t: ObjectiveTrainer,
  c: ObjectiveContext,
): Objective | null {
  checkObjectiveOptions(o);
  if (o.objective === 'dpo' || o.objective === 'orpo' || o.objective === 'simpo')
    return new DpoObjective(o, t, c);
  if (o.objective === 'grpo') return new GrpoObjective(t, resolveGrpoOptions(o.grpo));
  return null;
}

/** train() of an objective whose steps are asynchronous (GRPO: its reward functions may wait). */
export function blockingObjectiveError(): ConfigError {
  return new ConfigError(
    'this objective steps asynchronously (its reward functions may wait): train() cannot run it',
    {
      hint: 'await trainer.trainAsync() instead',
    },
  );
}
