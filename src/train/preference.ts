/**
 * DPO (docs/objectives.md), as TRL's DPOTrainer computes it: each pair's chosen and rejected
 * completions run in one batch; the loss of `loss_type` sigmoid (with `label_smoothing`), ipo or
 * hinge, over the policy's and the reference's summed completion log-probs (ipo: averaged per
 * token); TRL's metrics. The losses and their per-token derivatives are computed here in float64.
 */
import { ConfigError } from '../errors.js';
import type { Example } from '../data/example.js';
import type { Objective, ObjectiveContext, ObjectiveTrainer, WeightedMicroBatch } from './objective.js';
import type { StepResult, TrainerOptions } from './options.js';
import { orpoLoss, simpoLoss } from './pair-losses.js';

export const DPO_LOSS_TYPES = ['sigmoid', 'ipo', 'hinge'] as const;
export type DpoLossType = (typeof DPO_LOSS_TYPES)[number];

/** The preference objectives' settings (TRL's names in the YAML config). */
export interface PreferenceOptions {
  /** β: the strength of the tie to the reference (TRL's default 0.1). */
  beta?: number;
  /** DPO's loss: `sigmoid` (default), `ipo`, `hinge`. */
  lossType?: DpoLossType;
  /** The sigmoid loss's label smoothing ε in [0, 0.5) (conservative DPO). Default 0. */
  labelSmoothing?: number;
  /** Compute every reference log-prob once before the first step (default: per batch). */
  precomputeRefLogProbs?: boolean;
  /** SimPO's target margin γ (TRL's `simpo_gamma`, default 0.5). */
  simpoGamma?: number;
}

/** The per-token log-probs of one pair: policy and reference, chosen and rejected. */
export interface PairLogProbs {
  chosen: Float64Array;
  rejected: Float64Array;
  refChosen: Float64Array;
  refRejected: Float64Array;
}

/** A batch of pairs' loss, metrics, and wₜ = −n·∂L/∂log pₜ per token (the weighted step's, count n). */
export interface PairLoss {
  loss: number;
  metrics: Record<string, number>;
  weights: { chosen: Float64Array; rejected: Float64Array }[];
}

const sum = (a: Float64Array) => a.reduce((s, x) => s + x, 0);
const logSigmoid = (z: number) => (z >= 0 ? -Math.log1p(Math.exp(-z)) : z - Math.log1p(Math.exp(z)));
const sigmoid = (z: number) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));

/**
 * TRL's DPO loss over pairs, L = mean ℓ. With πc, πr the policy's summed log-probs of the chosen and
 * rejected completions (ipo: their means per token), ρc, ρr the reference's, and
 * h = (πc − πr) − (ρc − ρr):
 *   sigmoid: ℓ = −(1 − ε)·log σ(βh) − ε·log σ(−βh)
 *   hinge:   ℓ = max(0, 1 − βh)
 *   ipo:     ℓ = (h − 1/(2β))²
 * Metrics: rewards/chosen = mean β(πc − ρc), rewards/rejected = mean β(πr − ρr), rewards/margins =
 * their mean difference, rewards/accuracies = the share of pairs whose chosen reward is above the
 * rejected one, logps/chosen and logps/rejected = the mean summed policy log-probs.
 */
export function dpoLoss(
  pairs: readonly PairLogProbs[],
  o: Required<Omit<PreferenceOptions, 'precomputeRefLogProbs' | 'simpoGamma'>>,
): PairLoss {
  const { beta, lossType, labelSmoothing: eps } = o;
  const n = pairs.length;
  const m = { rc: 0, rr: 0, acc: 0, lc: 0, lr: 0 };
  let loss = 0;
  const weights = pairs.map((p) => {
    const [lc, lr] = [p.chosen.length, p.rejected.length];
    const scale = lossType === 'ipo' ? [1 / Math.max(1, lc), 1 / Math.max(1, lr)] : [1, 1];
    const [pc, pr] = [sum(p.chosen) * scale[0]!, sum(p.rejected) * scale[1]!];
    const [qc, qr] = [sum(p.refChosen) * scale[0]!, sum(p.refRejected) * scale[1]!];
    const h = pc - pr - (qc - qr);
    const z = beta * h;
    let dh: number; // dℓ/dh
    if (lossType === 'sigmoid') {
      loss += -(1 - eps) * logSigmoid(z) - eps * logSigmoid(-z);
      dh = beta * (-(1 - eps) * sigmoid(-z) + eps * sigmoid(z));
    } else if (lossType === 'hinge') {
      loss += Math.max(0, 1 - z);
      dh = z < 1 ? -beta : 0;
    } else {
      const d = h - 1 / (2 * beta);
      loss += d * d;
      dh = 2 * d;
    }
    const [rc, rr] = [
      beta * (sum(p.chosen) - sum(p.refChosen)),
      beta * (sum(p.rejected) - sum(p.refRejected)),
    ];
    m.rc += rc;
    m.rr += rr;
    m.acc += rc > rr ? 1 : 0;
    m.lc += sum(p.chosen);
    m.lr += sum(p.rejected);
    // ∂h/∂log p(chosen token) = scale_c, ∂h/∂log p(rejected token) = −scale_r; w = −dℓ/dlog p
    return {
      chosen: new Float64Array(lc).fill(-dh * scale[0]!),
      rejected: new Float64Array(lr).fill(dh * scale[1]!),
    };
  });
  const metrics = {
    'rewards/chosen': m.rc / n,
    'rewards/rejected': m.rr / n,
    'rewards/accuracies': m.acc / n,
    'rewards/margins': (m.rc - m.rr) / n,
    'logps/chosen': m.lc / n,
    'logps/rejected': m.lr / n,
  };
  return { loss: loss / n, metrics, weights };
}

/** The preference settings with their defaults, checked. */
export function preferenceSettings(o: PreferenceOptions = {}): Required<PreferenceOptions> {
  const s = {
    beta: 0.1,
    lossType: 'sigmoid' as DpoLossType,
    labelSmoothing: 0,
    precomputeRefLogProbs: false,
    simpoGamma: 0.5,
    ...o,
  };
  if (!Number.isFinite(s.simpoGamma))
    throw new ConfigError(`simpo_gamma: ${s.simpoGamma} must be a number`, { hint: 'TRL uses 0.5' });
  if (!(s.beta > 0 && Number.isFinite(s.beta)))
    throw new ConfigError(`beta: ${s.beta} must be a positive number`, { hint: 'TRL uses 0.1' });
  if (!(DPO_LOSS_TYPES as readonly string[]).includes(s.lossType))
    throw new ConfigError(`loss_type: ${JSON.stringify(s.lossType)} is not a DPO loss`, {
      hint: `use one of ${DPO_LOSS_TYPES.join(', ')}`,
    });
  if (!(s.labelSmoothing >= 0 && s.labelSmoothing < 0.5))
    throw new ConfigError(`label_smoothing: ${s.labelSmoothing} must be in [0, 0.5)`, {
      hint: 'use 0 (plain DPO)',
    });
  return s;
}

/** The rejected sequence of a pair's chosen example, or the error naming what is missing. */
function rejectedOf(e: Example, objective = 'dpo'): Example {
  if (e.rejected === undefined)
    throw new ConfigError(`objective ${objective}: a training example has no rejected completion`, {
      hint: 'give a preference dataset: {prompt, chosen, rejected} records',
    });
  return e.rejected;
}

/** The pair objectives: each chosen example carries its rejected one, run in one batch. */
export type PairObjectiveName = 'dpo' | 'orpo' | 'simpo';

/**
 * DPO, ORPO or SimPO over the trainer's paired examples; only DPO has a reference model (ORPO and
 * SimPO: pair-losses.ts).
 */
export class DpoObjective implements Objective {
  readonly name: PairObjectiveName;
  private readonly s: Required<PreferenceOptions>;
  private readonly refCache = new WeakMap<Example, Float64Array>();
  private precomputed = false;

  constructor(
    o: TrainerOptions,
    private readonly t: ObjectiveTrainer,
    private readonly c: ObjectiveContext,
  ) {
    this.name = (o.objective ?? 'dpo') as PairObjectiveName;
    this.s = preferenceSettings(o.preference);
    for (const e of c.data.train) rejectedOf(e, this.name);
  }

  step(microBatches: readonly (readonly Example[])[]): StepResult {
    const dpo = this.name === 'dpo';
    if (dpo && this.s.precomputeRefLogProbs && !this.precomputed) this.precompute();
    const pairs: PairLogProbs[] = [];
    const seqs = microBatches.map((mb) => [...mb, ...mb.map((e) => rejectedOf(e, this.name))]);
    seqs.forEach((s, k) => {
      const lp = this.t.tokenLogProbs(s, { microBatch: k });
      const ref = dpo ? this.reference(s) : s.map(() => new Float64Array(0)); // ORPO, SimPO: none
      const m = s.length / 2;
      for (let i = 0; i < m; i++)
        pairs.push({ chosen: lp[i]!, rejected: lp[m + i]!, refChosen: ref[i]!, refRejected: ref[m + i]! });
    });
    const { beta, simpoGamma: gamma, labelSmoothing } = this.s;
    const r =
      this.name === 'orpo'
        ? orpoLoss(pairs, { beta })
        : this.name === 'simpo'
          ? simpoLoss(pairs, { beta, gamma, labelSmoothing })
          : dpoLoss(pairs, this.s);
    let p = 0;
    const micro: WeightedMicroBatch[] = seqs.map((s) => {
      const m = s.length / 2;
      const w = r.weights.slice(p, p + m);
      p += m;
      return {
        examples: s,
        weights: [
          ...w.map((x) => Float32Array.from(x.chosen)),
          ...w.map((x) => Float32Array.from(x.rejected)),
        ],
      };
    });
    return this.t.weightedStep(micro, { count: pairs.length, loss: r.loss, metrics: r.metrics });
  }

  /** The reference's log-probs of `seqs`: cached (precomputed), or computed now. */
  private reference(seqs: readonly Example[]): Float64Array[] {
    const cached = seqs.map((e) => this.refCache.get(e));
    if (cached.every((x) => x !== undefined)) return cached;
    return this.t.tokenLogProbs([...seqs], { adapters: false });
  }

  /** Every training pair's reference log-probs, once (`precompute_ref_log_probs`). */
  private precompute(): void {
    const all = this.c.data.train.flatMap((e) => [e, rejectedOf(e)]);
    for (let i = 0; i < all.length; i += this.c.rows) {
      const part = all.slice(i, i + this.c.rows);
      this.t.tokenLogProbs(part, { adapters: false }).forEach((lp, j) => this.refCache.set(part[j]!, lp));
    }
    this.precomputed = true;
  }
}
