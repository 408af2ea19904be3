/**
 * The op table's entries for the neural-network ops and the losses (src/tensor/ops/nn.ts and
 * loss.ts): embedding, rmsNorm, rope, softmax, softcap, silu, swiglu, gelu, dropout, crossEntropy and
 * linearCrossEntropy.
 */
import { simple, type GradCheck, type OpEntry } from './check.js';
import { crossEntropy, linearCrossEntropy } from './loss.js';
import {
  dropout,
  dropoutMask,
  embedding,
  gelu,
  llama3FreqFactors,
  rmsNorm,
  rope,
  silu,
  softcap,
  softmax,
  swiglu,
} from './nn.js';

/** An additive mask `[4, 6]` with one −∞ in each row. */
// prettier-ignore
const MASK_4X6 = [0, 0, -Infinity, 0, 0, 0, 0, 0, 0, -Infinity, 0, 0, -Infinity, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -Infinity];
const IDS = [4, 0, 3, 3, 1, 6, 2];
const POSITIONS = [0, 3, 1, 7, 2];
const LABELS = [2, -100, 0, 6, 4, -100, 1];
const FREQ_FACTORS = Array.from(
  llama3FreqFactors({
    dims: 8,
    base: 500000,
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 16,
  }),
);

export const NN_OPS: readonly OpEntry[] = [
  {
    name: 'embedding',
    forward: embedding,
    gradient: "dTable = rows of dY added into the ids' rows (get_rows_back)",
    checks: [
      {
        name: 'embedding',
        seed: 1054,
        inputs: [[7, 5]],
        build: ([t], c) => {
          const idT = c.g.constant(Int32Array.from(IDS), [IDS.length], 'ids');
          return { out: embedding(t!, idT) };
        },
        ref: (R, [t]) => R.embedding(t!, IDS, [IDS.length]),
      },
    ],
  },
  {
    name: 'rmsNorm',
    forward: rmsNorm,
    gradient: 'dX = (dY − Y·mean(dY·Y))/rms(X) over the last axis (rms_norm_back)',
    checks: [
      simple(
        'rmsNorm',
        1055,
        [[3, 2, 9]],
        ([x]) => rmsNorm(x!, 1e-5),
        (R, [x]) => R.rmsNorm(x!, 1e-5),
      ),
    ],
  },
  {
    name: 'rope',
    forward: rope,
    gradient: 'dX = dY rotated by −θ (rope_ext_back)',
    checks: [
      ...(['normal', 'neox'] as const).map((mode, i): GradCheck => ({
        name: `rope (${mode})`,
        seed: 1056 + i,
        inputs: [[2, 5, 3, 8]],
        build: ([x], c) => ({
          out: rope(x!, c.g.constant(Int32Array.from(POSITIONS), [5], 'pos'), { mode, base: 10000 }),
        }),
        ref: (R, [x]) => R.rope(x!, POSITIONS, { mode, base: 10000 }),
      })),
      {
        name: 'rope (neox, llama3 frequency factors)',
        seed: 1058,
        inputs: [[5, 3, 8]],
        build: ([x], c) => ({
          out: rope(x!, c.g.constant(Int32Array.from(POSITIONS), [5], 'pos'), {
            mode: 'neox',
            base: 500000,
            freqFactors: c.g.constant(Float32Array.from(FREQ_FACTORS), [4], 'ff'),
          }),
        }),
        ref: (R, [x]) => R.rope(x!, POSITIONS, { mode: 'neox', base: 500000, factors: FREQ_FACTORS }),
      },
    ],
  },
  {
    name: 'softmax',
    forward: softmax,
    gradient: 'dX = s·Y·(dY − Σ dY·Y) over the last axis; masked entries get none (soft_max_ext_back)',
    checks: [
      simple(
        'softmax (scaled)',
        1059,
        [[3, 7]],
        ([x]) => softmax(x!, { scale: 0.7 }),
        (R, [x]) => R.softmax(x!, { scale: 0.7 }),
      ),
      simple(
        'softmax (causal)',
        1060,
        [[2, 5, 5]],
        ([x]) => softmax(x!, { scale: 0.5, causal: true }),
        (R, [x]) => R.softmax(x!, { scale: 0.5, causal: true }),
      ),
      {
        name: 'softmax (mask)',
        seed: 1061,
        inputs: [[2, 4, 6]],
        build: ([x], c) => ({
          out: softmax(x!, { scale: 0.5, mask: c.g.constant(Float32Array.from(MASK_4X6), [4, 6], 'mask') }),
        }),
        ref: (R, [x]) => R.softmax(x!, { scale: 0.5, mask: R.arr([4, 6], MASK_4X6) }),
      },
    ],
  },
  {
    name: 'silu',
    forward: silu,
    gradient: 'dX = dY·σ(X)·(1 + X·(1 − σ(X))) (silu_back)',
    checks: [
      simple(
        'silu',
        1062,
        [[3, 7]],
        ([x]) => silu(x!),
        (R, [x]) => R.silu(x!),
      ),
    ],
  },
  {
    name: 'softcap',
    forward: softcap,
    gradient: 'dX = dY·(1 − (Y/cap)²), the tanh derivative from the forward',
    checks: [
      // inputs N(0, 1) against caps of 0.7 and 3: tanh well away from linear, and near it
      simple(
        'softcap (cap 0.7)',
        1080,
        [[3, 7]],
        ([x]) => softcap(x!, 0.7),
        (R, [x]) => R.map(x!, (v) => 0.7 * Math.tanh(v / 0.7)),
      ),
      simple(
        'softcap (cap 3)',
        1081,
        [[2, 3, 5]],
        ([x]) => softcap(x!, 3),
        (R, [x]) => R.map(x!, (v) => 3 * Math.tanh(v / 3)),
      ),
    ],
  },
  {
    name: 'swiglu',
    forward: swiglu,
    gradient: "dGate = silu'(Gate)·dY·Up, dUp = dY·silu(Gate)",
    checks: [
      simple(
        'swiglu',
        1063,
        [
          [3, 7],
          [3, 7],
        ],
        ([a, b]) => swiglu(a!, b!),
        (R, [a, b]) => R.swiglu(a!, b!),
      ),
    ],
  },
  {
    name: 'gelu',
    forward: gelu,
    gradient: "dX = dY·gelu'(X) of the tanh approximation, composed from forward ops (exact)",
    checks: [
      // ggml's CPU GELU reads a float16 table: forward to ~1e-3; the gradient rule is exact
      {
        ...simple(
          'gelu (tanh)',
          1064,
          [[3, 7]],
          ([x]) => gelu(x!),
          (R, [x]) => R.gelu(x!),
        ),
        fwdTol: 3e-3,
      },
    ],
  },
  {
    name: 'dropout',
    forward: dropout,
    gradient: 'dX = dY·mask (a mul by the per-run mask input)',
    checks: [
      {
        name: 'dropout (p=0.3, seeded)',
        seed: 1065,
        inputs: [[4, 9]],
        build: ([x]) => {
          const mask = dropoutMask(1234, 0, 0, 36, 0.3);
          return { out: dropout(x!, 0.3, 1234), ref: (R, [xr]) => R.mul(xr!, R.arr([4, 9], mask)) };
        },
      },
    ],
  },
  {
    name: 'crossEntropy',
    forward: crossEntropy,
    gradient:
      'dLogits = (softmax(logits) − onehot(label))·w·dY, w = 1/count for counted tokens, 0 for ignored',
    checks: [
      {
        name: 'crossEntropy (ignore -100)',
        seed: 1066,
        inputs: [[7, 9]],
        build: ([x], c) => {
          const lab = c.g.input([7], 'i32', 'labels');
          return { out: crossEntropy(x!, lab), feed: (g) => g.set(lab, Int32Array.from(LABELS)) };
        },
        ref: (R, [x]) => R.crossEntropy(x!, LABELS),
      },
      {
        name: 'crossEntropy (3-D logits)',
        seed: 1067,
        inputs: [[1, 7, 9]],
        build: ([x], c) => {
          const lab = c.g.input([1, 7], 'i32', 'labels');
          return { out: crossEntropy(x!, lab), feed: (g) => g.set(lab, Int32Array.from(LABELS)) };
        },
        ref: (R, [x]) => R.crossEntropy(R.reshape(x!, [7, 9]), LABELS),
      },
    ],
  },
  {
    name: 'linearCrossEntropy',
    forward: linearCrossEntropy,
    gradient:
      "per chunk of tokens, dLogits as crossEntropy's, then dH = dLogits·W and dW += dLogitsᵀ·H, all scaled by dY",
    checks: [1, 3, 7]
      .map((chunkTokens, i): GradCheck => ({
        name: `linearCrossEntropy (chunks of ${chunkTokens}, ignore -100)`,
        seed: 1068 + i,
        inputs: [
          [1, 7, 5],
          [9, 5],
        ],
        build: ([x, w], c) => {
          const lab = c.g.input([1, 7], 'i32', 'labels');
          return {
            out: linearCrossEntropy(x!, w!, lab, { chunkTokens }),
            feed: (g) => g.set(lab, Int32Array.from(LABELS)),
          };
        },
        ref: (R, [x, w]) => R.crossEntropy(R.reshape(R.linear(x!, w!), [7, 9]), LABELS),
      }))
      .concat(
        // Gemma 2's final soft-capping inside the fused loss: cap 0.8 on logits of about ±2
        [1, 3].map((chunkTokens, i): GradCheck => ({
          name: `linearCrossEntropy (chunks of ${chunkTokens}, logits soft-capped at 0.8)`,
          seed: 1082 + i,
          inputs: [
            [1, 7, 5],
            [9, 5],
          ],
          build: ([x, w], c) => {
            const lab = c.g.input([1, 7], 'i32', 'labels');
            return {
              out: linearCrossEntropy(x!, w!, lab, { chunkTokens, softcap: 0.8 }),
              feed: (g) => g.set(lab, Int32Array.from(LABELS)),
            };
          },
          ref: (R, [x, w]) =>
            R.crossEntropy(
              R.reshape(
                R.map(R.linear(x!, w!), (v) => 0.8 * Math.tanh(v / 0.8)),
                [7, 9],
              ),
              LABELS,
            ),
        })),
      ),
  },
];
