/**
 * One rank of bench/dist.ts's all-reduce timing: sums a buffer of `floats` f32 values `reps` times,
 * each after a barrier (so no rank waits for a slower one), and rank 0 prints
 * {"median_ms", "min_ms"} as one JSON line.
 *
 *   mpirun -np 2 node dist/bench/dist-child.js FLOATS REPS
 */
import { connect } from '../src/dist/index.js';

const floats = Number(process.argv[2] ?? 1 << 20);
const reps = Number(process.argv[3] ?? 20);
const comm = connect({ timeoutS: 120 });
const buf = new Float32Array(floats).fill(1);
const times: number[] = [];
for (let i = 0; i < reps + 2; i++) {
  comm.barrier();
  const t = performance.now();
  comm.allReduceSum(buf);
  if (i >= 2) times.push(performance.now() - t); // the first two set up the transport
}
times.sort((a, b) => a - b);
if (comm.rank === 0)
  console.log(JSON.stringify({ median_ms: times[Math.floor(times.length / 2)], min_ms: times[0] }));
comm.finalize();
