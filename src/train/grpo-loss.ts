/**
 * GRPO's loss on the host, in float64, for given per-token log-probs: the group-normalised
 * advantages, the clipped ratio, the k3 estimate of the KL to the reference, TRL's loss
 * normalisations, and the loss's derivative with respect to each token's log-prob — the weight the
 * trainer's weighted step puts on that token's −log p gradient. As TRL's GRPOTrainer
 * (trl/trainer/grpo_trainer.py, `_compute_loss`); docs/objectives.md has the formulas.
 *
 * @example
 * const adv = groupAdvantages([1, 0, 0, 1], 2);          // [0.707, -0.707, -0.707, 0.707]
 * const r = grpoLoss(
 *   [{ logp, old: logp, ref, advantage: adv[0]! }],
 *   { epsilon: 0.2, beta: 0.04, lossType: 'dapo', maxCompletionLength: 16 },
 * );
 * r.loss; r.weights[0]; // −∂loss/∂logp_t, per token
 */
import { ConfigError } from '../errors.js';

/** How the per-token losses are summed into one (TRL's `loss_type`; `dapo` is TRL's default). */
export type GrpoLossType = 'dapo' | 'grpo' | 'bnpo' | 'dr_grpo';
export const GRPO_LOSS_TYPES: readonly GrpoLossType[] = ['dapo', 'grpo', 'bnpo', 'dr_grpo'];

/** How rewards are scaled into advantages (TRL's `scale_rewards`; `group` is TRL's default). */
export type ScaleRewards = 'group' | 'batch' | 'none';
export const SCALE_REWARDS: readonly ScaleRewards[] = ['group', 'batch', 'none'];

/** TRL's guard against a zero standard deviation. */
const STD_EPS = 1e-4;

function mean(x: readonly number[]): number {
  return x.reduce((a, b) => a + b, 0) / x.length;
}

/** The sample standard deviation (Bessel-corrected, as torch.std and TRL's nanstd); 0 for one value. */
export function sampleStd(x: readonly number[]): number {
  if (x.length < 2) return 0;
  const m = mean(x);
  return Math.sqrt(x.reduce((a, v) => a + (v - m) ** 2, 0) / (x.length - 1));
}

/**
 * Advantages of rewards laid out as consecutive groups of `groupSize` completions of one prompt:
 * A = (r − mean of its group) / (std + 1e-4), the std of its group (`group`), of the whole batch
 * (`batch`), or no division (`none`).
 */
export function groupAdvantages(
  rewards: readonly number[],
  groupSize: number,
  scale: ScaleRewards = 'group',
): Float64Array {
  if (!Number.isInteger(groupSize) || groupSize < 1 || rewards.length % groupSize !== 0)
    throw new ConfigError(`num_generations: ${groupSize} does not divide ${rewards.length} rewards`, {
      hint: 'give each prompt num_generations completions',
    });
  const out = new Float64Array(rewards.length);
  const batchStd = sampleStd(rewards);
  for (let g = 0; g < rewards.length; g += groupSize) {
    const group = rewards.slice(g, g + groupSize);
    const m = mean(group);
    const std = scale === 'group' ? sampleStd(group) : batchStd;
    for (let i = 0; i < groupSize; i++) {
      const a = group[i]! - m;
      out[g + i] = scale === 'none' ? a : a / (std + STD_EPS);
    }
  }
  return out;
}

/** One completion's tokens: log-probs under the policy now, when sampled (`old`), and the reference. */
export interface GrpoSequence {
  logp: ArrayLike<number>;
  /** The log-probs the completion was sampled with (one update per generation: equal to `logp`). */
  old: ArrayLike<number>;
  /** The reference model's log-probs; null when beta is 0. */
  ref: ArrayLike<number> | null;
  advantage: number;
  /** `bnpo`: the micro-batch the sequence is in (default 0). */
  microBatch?: number;
}

export interface GrpoLossOptions {
  /** The ratio is clipped to [1 − epsilon, 1 + epsilonHigh]. */
  epsilon: number;
  /** Default: epsilon. */
  epsilonHigh?: number;
  /** The KL coefficient; 0 leaves the KL out. */
  beta: number;
  lossType: GrpoLossType;
  /** `dr_grpo` divides by (completions × this). */
  maxCompletionLength: number;
}

export interface GrpoLoss {
  loss: number;
  /** Per sequence and token: −∂loss/∂logp_t, so the loss's gradient is Σ_t weight_t·∇(−logp_t). */
  weights: Float64Array[];
  /** Mean k3 KL over the completion tokens (0 when beta is 0). */
  kl: number;
  /** Share of tokens whose ratio was clipped (TRL's clip_ratio/region_mean), and each side's. */
  clipRatio: number;
  clipLow: number;
  clipHigh: number;
  /** Completion tokens counted. */
  tokens: number;
}

/**
 * The GRPO loss over completions, and its derivative with respect to each token's log-prob:
 *   ℓ_t = −min(ρ_t·A, clip(ρ_t, 1−ε, 1+ε_high)·A) + β·(exp(ref_t − logp_t) − (ref_t − logp_t) − 1),
 *   ρ_t = exp(logp_t − old_t),
 * summed per `lossType`: dapo Σℓ / (all tokens); grpo mean over sequences of Σℓ / |o_i|;
 * bnpo per micro-batch Σℓ / (its tokens), averaged over the micro-batches; dr_grpo Σℓ / (B · L_max).
 * ∂ℓ_t/∂logp_t = −A·ρ_t where the unclipped term is the minimum (0 where the clip binds) + β·(1 − exp(ref_t − logp_t)).
 */
export function grpoLoss(seqs: readonly GrpoSequence[], o: GrpoLossOptions): GrpoLoss {
  const lo = 1 - o.epsilon;
  const hi = 1 + (o.epsilonHigh ?? o.epsilon);
  const tokens = seqs.reduce((n, s) => n + s.logp.length, 0);
  const perBatch = new Map<number, { tokens: number; count: number }>();
  for (const s of seqs) {
    const b = perBatch.get(s.microBatch ?? 0) ?? { tokens: 0, count: 0 };
    perBatch.set(s.microBatch ?? 0, { tokens: b.tokens + s.logp.length, count: b.count + 1 });
  }
  /** The factor each of a sequence's token losses is summed with. */
  const factor = (s: GrpoSequence): number => {
    const n = s.logp.length;
    switch (o.lossType) {
      case 'dapo':
        return 1 / Math.max(tokens, 1);
      case 'grpo':
        return 1 / (Math.max(n, 1) * seqs.length);
      case 'bnpo':
        return 1 / (Math.max(perBatch.get(s.microBatch ?? 0)!.tokens, 1) * perBatch.size);
      case 'dr_grpo':
        return 1 / (seqs.length * o.maxCompletionLength);
    }
  };
  let [loss, klSum, low, high] = [0, 0, 0, 0];
  const weights = seqs.map((s) => {
    const c = factor(s);
    const A = s.advantage;
    const w = new Float64Array(s.logp.length);
    for (let t = 0; t < s.logp.length; t++) {
      const lp = s.logp[t]!;
      const ratio = Math.exp(lp - s.old[t]!);
      const clipped = Math.min(Math.max(ratio, lo), hi);
      // the minimum of ρA and clip(ρ)A: the clip binds (no gradient) where it lowers the product
      const binds = clipped * A < ratio * A;
      let l = -(binds ? clipped : ratio) * A;
      let d = binds ? 0 : -A * ratio; // ∂ℓ/∂logp
      if (o.beta !== 0) {
        const diff = s.ref![t]! - lp;
        const k3 = Math.exp(diff) - diff - 1;
        l += o.beta * k3;
        d += o.beta * (1 - Math.exp(diff));
        klSum += k3;
      }
      if (ratio < lo && A < 0) low++;
      if (ratio > hi && A > 0) high++;
      loss += c * l;
      w[t] = -c * d;
    }
    return w;
  });
  const n = Math.max(tokens, 1);
  return {
    loss,
    weights,
    kl: klSum / n,
    clipRatio: (low + high) / n,
    clipLow: low / n,
    clipHigh: high / n,
    tokens,
  };
}
