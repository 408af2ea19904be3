/**
 * The ranks of a job and the collectives between them. Two implementations: {@link SingleProcess}
 * (a job of one, every collective a no-op) and the MPI one (src/dist/mpi-communicator.ts).
 *
 * Every collective must be called by every rank, in the same order. The Trainer needs only
 * `rank`, `size`, `allReduceSum` and `broadcast` (its `Collectives` interface, src/train/parallel.ts),
 * which any Communicator provides.
 *
 * @example
 * const comm = connect({ timeoutS: 600 }); // MPI when launched by mpirun, else a job of one
 * const grads = Float32Array.of(comm.rank, 1);
 * comm.allReduceSum(grads); // [0 + 1 + ... + (size - 1), size] on every rank
 * comm.finalize();
 */
import { writeSync } from 'node:fs';

export interface Communicator {
  readonly kind: 'single' | 'mpi';
  /** This process's rank, 0 to size - 1. */
  readonly rank: number;
  readonly size: number;
  /** The rank among the ranks on this machine (a GPU index), and how many run on it. */
  readonly localRank: number;
  readonly localSize: number;
  /** Sums `buf` elementwise over every rank, in place. */
  allReduceSum(buf: Float32Array | Float64Array): void;
  /** Copies `root`'s `buf` into every rank's. */
  broadcast(buf: Float32Array | Float64Array | Int32Array, root: number): void;
  /** Returns when every rank has called it. */
  barrier(): void;
  /** Prints `qtune: error: rank R: message` on stderr and ends the whole job with `code`. */
  abort(code: number, message: string): never;
  /** Ends the communicator (after the last collective; an MPI rank that exits without it fails the job). */
  finalize(): void;
}

/** The line a failing rank prints. */
export function errorLine(rank: number, size: number, message: string): string {
  return `qtune: error: ${size > 1 ? `rank ${rank}: ` : ''}${message}\n`;
}

/** A job of one process: the collectives leave every buffer as it is. */
export class SingleProcess implements Communicator {
  readonly kind = 'single';
  readonly rank = 0;
  readonly size = 1;
  readonly localRank = 0;
  readonly localSize = 1;

  allReduceSum(_buf: Float32Array | Float64Array): void {
    // one rank: the sum is the buffer itself
  }

  broadcast(_buf: Float32Array | Float64Array | Int32Array, _root: number): void {
    // one rank: it is the root
  }

  barrier(): void {
    // nothing to wait for
  }

  abort(code: number, message: string): never {
    writeSync(2, errorLine(0, 1, message));
    process.exit(code);
  }

  finalize(): void {
    // nothing to end
  }
}
