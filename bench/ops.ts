/**
 * `npm run bench:ops`: GFLOP/s of `linear`'s forward (Y = X·Wᵀ) and of its input gradient
 * (dX = dY·W, the rule DESIGN.md §2 prescribes: mul_mat on Wᵀ, dequantized to f32 inside the graph
 * for quantized W) for a 4096→2048 weight and 512 tokens, per weight type, with the prebuilt engine
 * and the native one when `qtune engine build` has made it. PyTorch's fp32 GEMM of the same shapes
 * (Debian python3-torch, when installed) is timed in the same session as the anchor.
 *
 *   npm run bench:ops [-- --runs 7] [--json]
 */
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpuBackend, type Backend } from '../src/engine/device.js';
import type { DType } from '../src/engine/dtype.js';
import { getEngine } from '../src/engine/library.js';
import { Graph } from '../src/tensor/graph.js';
import { linear, linearInputGrad } from '../src/tensor/ops/matmul.js';
import { TensorStore } from '../src/tensor/store.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { attachTransposed } from '../src/tensor/transposed.js';
import { enginesToCompare, runChild, runPython } from './common.js';

const K = 4096; // in features
const N = 2048; // out features
const M = 512; // tokens
const FLOP = 2 * K * N * M;
const TYPES: DType[] = ['f32', 'bf16', 'f16', 'q8_0', 'q4_0'];
const REPACKED: DType[] = ['q4_0', 'q4_K', 'iq4_nl'];

interface Row {
  engine: string;
  dtype: string;
  /** forward, weight in the backend's default buffer */
  forward: number;
  /** forward, weight in the CPU_REPACK buffer (q4_0, q4_K, iq4_nl on x86) */
  forward_repack: number | null;
  /** dX, default rule: W dequantized and transposed inside the graph (exact, no extra memory) */
  dx_in_graph: number;
  /** dX with a persistent f32 Wᵀ (exact, +4 bytes/param) */
  dx_transposed_f32: number;
  /** dX with a persistent Wᵀ in W's type (same kernel as the forward; a second rounding for quantized W) */
  dx_transposed_same: number;
  /** the same, with Wᵀ in the CPU_REPACK buffer */
  dx_transposed_same_repack: number | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** GFLOP/s of a compiled graph: median of `runs` after two warm-up runs. */
function gflops(g: Graph, runs: number): number {
  g.run();
  g.run();
  const ts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    g.run();
    ts.push(performance.now() - t0);
  }
  return FLOP / (median(ts) / 1000) / 1e9;
}

function randomData(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 0.05;
  }
  return out;
}

function timeForward(backend: Backend, w: Tensor, runs: number): number {
  const g = new Graph(backend);
  try {
    const x = g.input([M, K]);
    g.output(g.build(() => linear(x, w)));
    g.compile();
    g.set(x, randomData(M * K, 2));
    return gflops(g, runs);
  } finally {
    g.dispose();
  }
}

function timeDx(backend: Backend, w: Tensor, runs: number): number {
  const g = new Graph(backend);
  try {
    const dy = g.input([M, N]);
    g.output(linearInputGrad(g, dy, w));
    g.compile();
    g.set(dy, randomData(M * N, 3));
    return gflops(g, runs);
  } finally {
    g.dispose();
  }
}

/** Runs in a child process with one engine loaded. */
function child(runs: number): Row[] {
  const backend = cpuBackend();
  const engine = getEngine().info;
  const repack = backend.extraBufferTypes().find((b) => b.name.includes('REPACK'));
  const wData = randomData(N * K, 1);
  const rows: Row[] = [];
  for (const dtype of TYPES) {
    const w = TensorStore.from(backend, wData, [N, K], { dtype, name: 'w' });
    const repackable = repack !== undefined && REPACKED.includes(dtype);
    const inRepack = (shape: number[], data: Float32Array) => {
      const s = TensorStore.create(backend, [{ name: 'r', shape, dtype }], { bufferType: repack!.ptr });
      s.write(s.get('r'), data);
      return s;
    };
    const row: Row = {
      engine: `${engine.kind} (${engine.cpuVariant})`,
      dtype,
      forward: timeForward(backend, w, runs),
      forward_repack: null,
      dx_in_graph: timeDx(backend, w, runs),
      dx_transposed_f32: 0,
      dx_transposed_same: 0,
      dx_transposed_same_repack: null,
    };
    for (const mode of ['f32', 'same'] as const) {
      const copy = attachTransposed(w, mode);
      const t = timeDx(backend, w, runs);
      if (mode === 'f32') row.dx_transposed_f32 = t;
      else row.dx_transposed_same = t;
      if (mode === 'same' && repackable) {
        const r = inRepack([K, N], w.transposed!.read());
        w.transposed = r.get('r');
        row.dx_transposed_same_repack = timeDx(backend, w, runs);
        r.dispose();
      }
      w.transposed = null;
      copy.dispose();
    }
    if (repackable) {
      const r = inRepack([N, K], wData);
      row.forward_repack = timeForward(backend, r.get('r'), runs);
      r.dispose();
    }
    w.store!.dispose();
    rows.push(row);
  }
  return rows;
}

const TORCH = `
import json, time, torch
torch.set_num_threads(THREADS)
K, N, M = ${K}, ${N}, ${M}
x = torch.randn(M, K); w = torch.randn(N, K) * 0.02; dy = torch.randn(M, N)
def best(f, runs):
    f(); f()
    ts = []
    for _ in range(runs):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort(); return ts[len(ts) // 2]
flop = 2 * K * N * M
print(json.dumps({"torch": torch.__version__, "forward_gflops": flop / best(lambda: x @ w.t(), RUNS) / 1e9,
                  "dx_gflops": flop / best(lambda: dy @ w, RUNS) / 1e9}))
`;

function torchAnchor(
  runs: number,
  threads: number,
): { torch: string; forward_gflops: number; dx_gflops: number } | string {
  return runPython(['-c', TORCH.replaceAll('THREADS', String(threads)).replaceAll('RUNS', String(runs))]);
}

function main(): void {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '7' },
      json: { type: 'boolean', default: false },
      child: { type: 'boolean', default: false },
    },
  });
  const runs = Number(values.runs);
  if (values.child) {
    console.log(JSON.stringify(child(runs)));
    return;
  }
  const rows: Row[] = [];
  for (const engine of enginesToCompare())
    rows.push(...runChild<Row[]>(fileURLToPath(import.meta.url), engine, ['--runs', String(runs)]));
  const threads = getEngine().info.threads;
  const anchor = torchAnchor(runs, threads);
  const cpu = `${getEngine().info.cpuModel}; ${os.cpus().length} vCPU; flags: ${Object.keys(getEngine().info.cpuFeatures).join(' ')}`;
  if (values.json) {
    console.log(JSON.stringify({ cpu, threads, shape: { in: K, out: N, tokens: M }, rows, anchor }, null, 2));
    return;
  }
  console.log(`CPU: ${cpu}; ${threads} threads; W ${N}x${K} (out x in), ${M} tokens; median of ${runs} runs`);
  if (typeof anchor === 'string') console.log(anchor);
  else
    console.log(
      `PyTorch ${anchor.torch} fp32 anchor: forward ${anchor.forward_gflops.toFixed(0)} GFLOP/s, dX ${anchor.dx_gflops.toFixed(0)} GFLOP/s`,
    );
  const f = (x: number | null) => (x === null ? '-' : x.toFixed(0));
  const vs = (x: number) =>
    typeof anchor === 'string' ? 'n/a' : `${(x / anchor.forward_gflops).toFixed(2)}x`;
  console.log('');
  console.log('GFLOP/s. dX in-graph: W dequantized and transposed inside the step (the default, exact).');
  console.log(
    "dX Wᵀ f32 / Wᵀ same: a persistent transposed copy in f32 (exact) or in W's type (the forward's kernel).",
  );
  console.log('');
  console.log(
    '| engine | W | forward | forward, repack | dX in-graph | dX Wᵀ f32 | dX Wᵀ same | dX Wᵀ same, repack | in-graph dX / forward | best dX / best forward | forward / torch fp32 |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const bestDx = Math.max(
      r.dx_in_graph,
      r.dx_transposed_f32,
      r.dx_transposed_same,
      r.dx_transposed_same_repack ?? 0,
    );
    const bestFwd = Math.max(r.forward, r.forward_repack ?? 0);
    console.log(
      `| ${r.engine} | ${r.dtype} | ${f(r.forward)} | ${f(r.forward_repack)} | ${f(r.dx_in_graph)} | ${f(r.dx_transposed_f32)} | ${f(r.dx_transposed_same)} | ${f(r.dx_transposed_same_repack)} | ${(r.dx_in_graph / r.forward).toFixed(2)} | ${(bestDx / bestFwd).toFixed(2)} | ${vs(r.forward)} |`,
    );
  }
}

main();
