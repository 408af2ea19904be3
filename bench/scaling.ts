/**
 * The paper figures behind docs/scaling.md: parameter counts, bytes all-reduced per step, the
 * communication fraction on 10 and 100 Gbit/s links, and memory per train type, for Llama 3 8B and
 * 70B shapes. Closed forms only; every assumption is a named constant below.
 *
 *   npm run bench:scaling
 */

interface Shape {
  name: string;
  vocab: number;
  dim: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
}

// Llama 3.1 8B and 70B (config.json of meta-llama/Llama-3.1-8B and -70B)
const SHAPES: Shape[] = [
  { name: 'Llama 3 8B', vocab: 128256, dim: 4096, layers: 32, heads: 32, kvHeads: 8, ffn: 14336 },
  { name: 'Llama 3 70B', vocab: 128256, dim: 8192, layers: 80, heads: 64, kvHeads: 8, ffn: 28672 },
];

const LORA_RANK = 16; // on all seven linear layers of every block (q, k, v, o, gate, up, down)
const SEQ = 2048; // tokens per sequence
const TOKENS_PER_RANK = 16 * SEQ; // tokens each rank processes per optimizer step (batch × accumulation)
const DEVICE_FLOPS = 400e12; // sustained bf16 matmul FLOP/s of one H100-class GPU (≈ 40 % of 989 TFLOP/s)
const RANKS = 8;
const LINKS = [
  { name: '10 Gbit/s', bytesPerS: 10e9 / 8 },
  { name: '100 Gbit/s', bytesPerS: 100e9 / 8 },
];
const NF4_BITS = 4.5; // iq4_nl: 32 weights in 18 bytes
const GB = 1e9;

function linears(s: Shape): [number, number][] {
  const kv = (s.dim / s.heads) * s.kvHeads;
  return [
    [s.dim, s.dim], // q
    [s.dim, kv], // k
    [s.dim, kv], // v
    [s.dim, s.dim], // o
    [s.dim, s.ffn], // gate
    [s.dim, s.ffn], // up
    [s.ffn, s.dim], // down
  ];
}

function counts(s: Shape): { linear: number; other: number; total: number; lora: number } {
  const perLayerLinear = linears(s).reduce((a, [i, o]) => a + i * o, 0);
  const linear = perLayerLinear * s.layers;
  const other = 2 * s.vocab * s.dim + (2 * s.layers + 1) * s.dim; // embeddings, LM head, norms
  const lora = linears(s).reduce((a, [i, o]) => a + LORA_RANK * (i + o), 0) * s.layers;
  return { linear, other, total: linear + other, lora };
}

/** Activation bytes kept for the backward pass with gradient checkpointing: each block's input (bf16), one block recomputed. */
function activationBytes(s: Shape, tokens: number): number {
  const blockInputs = s.layers * tokens * s.dim * 2;
  // one block's saved tensors while it is recomputed (Korthikanti et al. 2022: 34·h + 5·a·s bytes per token, 16-bit)
  const oneBlock = tokens * (34 * s.dim + 5 * s.heads * SEQ);
  return blockInputs + oneBlock;
}

const fmt = (x: number, d = 1): string => x.toFixed(d);
const rows: string[] = [];
const line = (cells: (string | number)[]): void => void rows.push(`| ${cells.join(' | ')} |`);

console.log(
  `Assumptions: LoRA rank ${LORA_RANK} on q,k,v,o,gate,up,down; ${TOKENS_PER_RANK} tokens per rank per step (${TOKENS_PER_RANK / SEQ} × ${SEQ}); ` +
    `${DEVICE_FLOPS / 1e12} TFLOP/s per device; ring all-reduce over ${RANKS} ranks; fp32 gradients; no overlap of communication with compute.\n`,
);

line(['model', 'parameters', 'LoRA parameters', 'all-reduced per step (fp32)', 'full FT all-reduced']);
line(['---', '---:', '---:', '---:', '---:']);
for (const s of SHAPES) {
  const c = counts(s);
  line([
    s.name,
    `${fmt(c.total / 1e9, 2)} B`,
    `${fmt(c.lora / 1e6)} M`,
    `${fmt((c.lora * 4) / 1e6)} MB`,
    `${fmt((c.total * 4) / GB)} GB`,
  ]);
}
console.log(rows.splice(0).join('\n') + '\n');

line(['model', 'train type', 'compute / step', 'link', 'all-reduce / step', 'communication fraction']);
line(['---', '---', '---:', '---', '---:', '---:']);
for (const s of SHAPES) {
  const c = counts(s);
  // forward 2N, backward input gradients 2N (frozen weights need no weight gradient), recompute 2N
  const flops = 6 * c.total * TOKENS_PER_RANK;
  const compute = flops / DEVICE_FLOPS;
  for (const type of ['lora', 'qlora']) {
    for (const link of LINKS) {
      const comm = ((2 * (RANKS - 1)) / RANKS) * ((c.lora * 4) / link.bytesPerS);
      line([
        s.name,
        type,
        `${fmt(compute, 2)} s`,
        link.name,
        `${fmt(comm * 1000, 0)} ms`,
        `${fmt((100 * comm) / (compute + comm))} %`,
      ]);
    }
  }
}
console.log(rows.splice(0).join('\n') + '\n');

const DEVICES = [24, 40, 80, 141];
line([
  'model',
  'train type',
  'weights',
  'trainable state',
  'activations',
  'total',
  ...DEVICES.map((d) => `${d} GB`),
]);
line(['---', '---', '---:', '---:', '---:', '---:', ...DEVICES.map(() => ':---:')]);
for (const s of SHAPES) {
  const c = counts(s);
  const act = activationBytes(s, SEQ); // one sequence per micro-batch
  const types = [
    // full: f32 master weights, f32 gradients, AdamW m and v
    { name: 'full', weights: c.total * 4, state: c.total * 12 },
    // lora: bf16 frozen base; adapter f32 weights + gradients + AdamW
    { name: 'lora', weights: c.total * 2, state: c.lora * 16 },
    // qlora: linear layers nf4, embeddings / LM head / norms bf16
    { name: 'qlora (nf4)', weights: (c.linear * NF4_BITS) / 8 + c.other * 2, state: c.lora * 16 },
  ];
  for (const t of types) {
    const total = t.weights + t.state + act;
    line([
      s.name,
      t.name,
      `${fmt(t.weights / GB)} GB`,
      `${fmt(t.state / GB)} GB`,
      `${fmt(act / GB)} GB`,
      `${fmt(total / GB)} GB`,
      ...DEVICES.map((d) =>
        total <= d * GB * 0.9 ? 'fits' : `${Math.ceil(total / (d * GB * 0.9))} devices`,
      ),
    ]);
  }
}
console.log(rows.splice(0).join('\n'));
console.log('\n("fits" leaves 10 % of the device for the compute buffers and the runtime.)');
