/**
 * `npm run bench:quant`: per quantization method on the CPU — bytes per parameter (measured from
 * the engine's buffer of a quantized 2048×4096 weight), the time to quantize it, and GFLOP/s of
 * `linear` forward and of its input gradient (dX, the QLoRA backward path) with 512 tokens, for the
 * prebuilt engine and the native one when built. PyTorch's fp32 GEMM of the same shape is the anchor.
 *
 *   npm run bench:quant [-- --runs 5] [--json]
 */
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { cpuBackend } from '../src/engine/device.js';
import { getEngine } from '../src/engine/library.js';
import { quantizeValues } from '../src/quant/linear.js';
import { METHODS, type QuantMethod } from '../src/quant/methods.js';
import { Graph } from '../src/tensor/graph.js';
import { linear, linearInputGrad } from '../src/tensor/ops/matmul.js';
import { TensorStore } from '../src/tensor/store.js';
import { enginesToCompare, runChild, runPython } from './common.js';

const K = 4096;
const N = 2048;
const M = 512;
const FLOP = 2 * K * N * M;

interface Row {
  engine: string;
  method: string;
  dtype: string;
  bits_per_param: number;
  quantize_s: number;
  forward_gflops: number;
  dx_gflops: number;
}

function gflops(g: Graph, runs: number): number {
  g.run();
  const ts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    g.run();
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  return FLOP / (ts[Math.floor(ts.length / 2)]! / 1000) / 1e9;
}

function child(runs: number): Row[] {
  const backend = cpuBackend();
  const info = getEngine().info;
  let s = 1;
  const rand = (n: number) =>
    Float32Array.from({ length: n }, () => {
      s = (s * 1664525 + 1013904223) >>> 0;
      return (s / 2 ** 32 - 0.5) * 0.05;
    });
  const w = rand(N * K);
  const x = rand(M * K);
  const dy = rand(M * N);
  const rows: Row[] = [];
  const cases: [QuantMethod, number][] = [
    ['none', 16],
    ['none', 32],
    ...(Object.keys(METHODS) as QuantMethod[])
      .filter((m) => m !== 'none')
      .map((m): [QuantMethod, number] => [m, METHODS[m].defaultBits]),
    ['hqq', 5],
  ];
  for (const [method, bits] of cases) {
    const dtype = METHODS[method].dtypes[bits]!;
    const t0 = performance.now();
    const bytes = method === 'none' ? null : quantizeValues(w, [N, K], method, dtype);
    const quantizeS = (performance.now() - t0) / 1000;
    const store = TensorStore.create(backend, [{ name: 'w', shape: [N, K], dtype }]);
    const wt = store.get('w');
    store.write(wt, bytes ?? w);
    const fwd = new Graph(backend);
    const xi = fwd.input([M, K]);
    fwd.output(fwd.build(() => linear(xi, wt)));
    fwd.compile();
    fwd.set(xi, x);
    const bwd = new Graph(backend);
    const dyi = bwd.input([M, N]);
    bwd.output(linearInputGrad(bwd, dyi, wt));
    bwd.compile();
    bwd.set(dyi, dy);
    rows.push({
      engine: `${info.kind} (${info.cpuVariant})`,
      method: method === 'none' || method === 'hqq' ? `${method}:${bits}` : method,
      dtype,
      bits_per_param: (store.bytes * 8) / (N * K),
      quantize_s: quantizeS,
      forward_gflops: gflops(fwd, runs),
      dx_gflops: gflops(bwd, runs),
    });
    fwd.dispose();
    bwd.dispose();
    store.dispose();
  }
  return rows;
}

const TORCH = `
import json, time, torch
torch.set_num_threads(${getEngine().info.threads})
x = torch.randn(${M}, ${K}); w = torch.randn(${N}, ${K}) * 0.02
def med(f, n):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    ts.sort(); return ts[len(ts) // 2]
print(json.dumps({"forward_gflops": ${FLOP} / med(lambda: x @ w.t(), RUNS) / 1e9}))
`;

function main(): void {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '5' },
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
  const anchor = runPython<{ forward_gflops: number }>(['-c', TORCH.replaceAll('RUNS', String(runs))]);
  const torch = typeof anchor === 'string' ? null : anchor.forward_gflops;
  if (values.json) {
    console.log(
      JSON.stringify({ cpu: getEngine().info.cpuModel, rows, torch_fp32_forward_gflops: torch }, null, 2),
    );
    return;
  }
  console.log(
    `CPU: ${getEngine().info.cpuModel}; ${getEngine().info.threads} threads; W ${N}x${K}, ${M} tokens; median of ${runs}`,
  );
  console.log(
    typeof anchor === 'string' ? anchor : `PyTorch fp32 forward: ${anchor.forward_gflops.toFixed(0)} GFLOP/s`,
  );
  console.log('');
  console.log(
    '| engine | method | ggml type | bits/param | quantize s | forward GFLOP/s | dX GFLOP/s | forward / torch fp32 |',
  );
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(
      `| ${r.engine} | ${r.method} | ${r.dtype} | ${r.bits_per_param.toFixed(2)} | ${r.quantize_s.toFixed(2)} | ${r.forward_gflops.toFixed(0)} | ${r.dx_gflops.toFixed(0)} | ${torch === null ? 'n/a' : `${(r.forward_gflops / torch).toFixed(2)}x`} |`,
    );
  }
}

main();
