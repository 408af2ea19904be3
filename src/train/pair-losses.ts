/**
 * The reference-free pair losses beside DPO (docs/objectives.md): SimPO, as TRL's CPOTrainer with
 * `loss_type: simpo` computes it, and ORPO, as TRL's ORPOTrainer. Both work on the completions'
 * log-probs averaged per token; the losses, their per-token derivatives and TRL's metrics are
 * computed here in float64.
 */
import type { PairLogProbs, PairLoss } from './preference.js';

const sum = (a: Float64Array) => a.reduce((s, x) => s + x, 0);
const mean = (a: Float64Array) => sum(a) / Math.max(1, a.length);
const logSigmoid = (z: number) => (z >= 0 ? -Math.log1p(Math.exp(-z)) : z - Math.log1p(Math.exp(z)));
const sigmoid = (z: number) => (z >= 0 ? 1 / (1 + Math.exp(-z)) : Math.exp(z) / (1 + Math.exp(z)));
const fill = (n: number, v: number) => new Float64Array(n).fill(v);

/** The metrics both losses log, as TRL's CPO and ORPO trainers: rewards are β × mean log-probs. */
function rewardMetrics(pairs: readonly PairLogProbs[], beta: number): Record<string, number> {
  const n = pairs.length;
  let [rc, rr, acc, lc, lr] = [0, 0, 0, 0, 0];
  for (const p of pairs) {
    const [ac, ar] = [mean(p.chosen), mean(p.rejected)];
    [rc, rr, lc, lr] = [rc + beta * ac, rr + beta * ar, lc + ac, lr + ar];
    acc += ac > ar ? 1 : 0;
  }
  return {
    'rewards/chosen': rc / n,
    'rewards/rejected': rr / n,
    'rewards/accuracies': acc / n,
    'rewards/margins': (rc - rr) / n,
    'logps/chosen': lc / n,
    'logps/rejected': lr / n,
  };
}

/**
 * SimPO over pairs, L = mean ℓ, with āc, ār the policy's mean log-probs of the chosen and rejected
 * completion (no reference model) and z = β(āc − ār) − γ:
 *   ℓ = −(1 − ε)·log σ(z) − ε·log σ(−z)
 * (TRL: logits = (āc − ār) − γ/β, losses = −log σ(β·logits), with label smoothing ε).
 */
export function simpoLoss(
  pairs: readonly PairLogProbs[],
  o: { beta: number; gamma: number; labelSmoothing: number },
): PairLoss {
  const { beta, gamma, labelSmoothing: eps } = o;
  let loss = 0;
  const weights = pairs.map((p) => {
    const z = beta * (mean(p.chosen) - mean(p.rejected)) - gamma;
    loss += -(1 - eps) * logSigmoid(z) - eps * logSigmoid(-z);
    const dz = -(1 - eps) * sigmoid(-z) + eps * sigmoid(z); // dℓ/dz
    // ∂z/∂log p(chosen token) = β/|c|, ∂z/∂log p(rejected token) = −β/|r|; w = −dℓ/dlog p
    return {
      chosen: fill(p.chosen.length, (-dz * beta) / Math.max(1, p.chosen.length)),
      rejected: fill(p.rejected.length, (dz * beta) / Math.max(1, p.rejected.length)),
    };
  });
  return { loss: loss / pairs.length, metrics: rewardMetrics(pairs, beta), weights };
}

/**
 * ORPO over pairs: the chosen completions' negative log-likelihood (per token, over all the step's
 * chosen tokens, as TRL's cross-entropy over the batch) plus the odds-ratio term, mean over pairs of
 * −β·log σ(lo), lo = log(odds(āc)) − log(odds(ār)), odds(a) = eᵃ / (1 − eᵃ), with āc, ār the
 * policy's mean log-probs (no reference model). Metrics: TRL's rewards (β·ā), `nll_loss`,
 * `log_odds_ratio` (mean log σ(lo)) and `log_odds_chosen` (mean lo).
 */
export function orpoLoss(pairs: readonly PairLogProbs[], o: { beta: number }): PairLoss {
  const { beta } = o;
  const n = pairs.length;
  const chosenTokens = pairs.reduce((s, p) => s + p.chosen.length, 0);
  const nll = -pairs.reduce((s, p) => s + sum(p.chosen), 0) / Math.max(1, chosenTokens);
  // log(1 − eᵃ) for a < 0, and d lo/d a = 1/(1 − eᵃ)
  const log1mExp = (a: number) => Math.log(-Math.expm1(a));
  let [orTerm, ratioSum, loSum] = [0, 0, 0];
  const weights = pairs.map((p) => {
    const [ac, ar] = [mean(p.chosen), mean(p.rejected)];
    const lo = ac - ar - (log1mExp(ac) - log1mExp(ar));
    const ratio = logSigmoid(lo);
    [orTerm, ratioSum, loSum] = [orTerm - beta * ratio, ratioSum + ratio, loSum + lo];
    const dlo = -beta * sigmoid(-lo); // dℓ/d lo of ℓ = −β·log σ(lo)
    const [dc, dr] = [1 / -Math.expm1(ac), -1 / -Math.expm1(ar)]; // d lo/d āc, d lo/d ār
    // the NLL's share: L holds −Σ log p / chosenTokens, so w = n/chosenTokens on each chosen token
    return {
      chosen: fill(p.chosen.length, n / chosenTokens - (dlo * dc) / Math.max(1, p.chosen.length)),
      rejected: fill(p.rejected.length, -(dlo * dr) / Math.max(1, p.rejected.length)),
    };
  });
  const metrics = {
    ...rewardMetrics(pairs, beta),
    nll_loss: nll,
    log_odds_ratio: ratioSum / n,
    log_odds_chosen: loSum / n,
  };
  return { loss: nll + orTerm / n, metrics, weights };
}
