/**
 * One rank of the MPI binding's test job (tests/dist/mpi.test.ts): `collectives` checks every
 * collective against its closed form and prints one JSON line per rank; `throw` makes rank 1 throw
 * an uncaught error after a collective.
 */
import { connect } from '../../src/dist/index.js';

const mode = process.argv[2] ?? 'collectives';
const comm = connect({ timeoutS: 60 });
const { rank, size } = comm;

if (mode === 'throw') {
  comm.barrier();
  if (rank === 1) throw new Error('simulated failure in the data loader');
  comm.barrier(); // the others wait here until rank 1's abort ends them
  comm.finalize();
} else {
  const failures: string[] = [];
  // f32: rank r contributes (r + 1) · i; the sum is i · size (size + 1) / 2, exact in f32 below 2^24
  const n = 100_003;
  const f32 = Float32Array.from({ length: n }, (_, i) => (rank + 1) * i);
  comm.allReduceSum(f32);
  const tri = (size * (size + 1)) / 2;
  for (let i = 0; i < n; i++) if (f32[i] !== i * tri) failures.push(`f32[${i}] = ${f32[i]}, not ${i * tri}`);
  // f64: 0.1 · (r + 1) + i; compared with the same sum taken in float64 here
  const f64 = Float64Array.from({ length: 1000 }, (_, i) => 0.1 * (rank + 1) + i);
  comm.allReduceSum(f64);
  for (let i = 0; i < f64.length; i++) {
    let want = 0;
    for (let r = 0; r < size; r++) want += 0.1 * (r + 1) + i;
    if (Math.abs(f64[i]! - want) > 1e-9) failures.push(`f64[${i}] = ${f64[i]}, not ${want}`);
  }
  // broadcast from the last rank
  const root = size - 1;
  const b =
    rank === root ? Float32Array.from({ length: 5000 }, (_, i) => Math.sin(i)) : new Float32Array(5000);
  comm.broadcast(b, root);
  for (let i = 0; i < b.length; i++)
    if (b[i] !== Math.fround(Math.sin(i))) failures.push(`broadcast[${i}] = ${b[i]}`);
  comm.barrier();
  console.log(
    JSON.stringify({
      kind: comm.kind,
      rank,
      size,
      localRank: comm.localRank,
      localSize: comm.localSize,
      failures: failures.slice(0, 5),
    }),
  );
  comm.finalize();
}
