/**
 * What `qtune train` does differently as one rank of a data-parallel job: its share of the cores,
 * its own GPU, and how a failure ends the whole job.
 */
import type { BackendManager } from '../backends/manager.js';
import type { Communicator } from '../dist/communicator.js';
import { physicalCores } from '../engine/paths.js';
import { QtuneError } from '../errors.js';
import { exitCodeOf } from './args.js';

/**
 * CPU threads of this rank: the config's `threads`, else QTUNE_THREADS (the engine's default), else
 * the physical cores divided among the ranks on this machine (at least 1). Null: the engine default.
 */
export function rankThreads(threads: number | null, comm: Communicator): number | null {
  if (threads !== null) return threads;
  if (comm.localSize <= 1 || (process.env['QTUNE_THREADS'] ?? '') !== '') return null;
  return Math.max(1, Math.floor(physicalCores() / comm.localSize));
}

const KINDS: Record<string, string> = { CUDA: 'cuda', Vulkan: 'vulkan', Metal: 'metal', MTL: 'metal' };

/**
 * The device this rank asks for: when the config names a GPU kind (or auto finds one), the local
 * rank's device of that kind (ranks on one machine share the devices round robin); a device named
 * exactly, and the CPU, stay as they are.
 */
export function rankBackend(request: string, manager: BackendManager, comm: Communicator): string {
  const req = request.trim().toLowerCase().replace(/^mps$/, 'metal');
  if (comm.localSize <= 1 || !['auto', '', 'cuda', 'vulkan', 'metal'].includes(req)) return request;
  const gpus = manager.devices().filter((d) => KINDS[d.backend] !== undefined);
  const kind =
    req === 'auto' || req === ''
      ? ['cuda', 'metal', 'vulkan'].find((k) => gpus.some((d) => KINDS[d.backend] === k && !d.software))
      : req;
  const same = gpus.filter((d) => KINDS[d.backend] === kind && (req !== 'auto' || !d.software));
  if (same.length === 0) return request;
  return same[comm.localRank % same.length]!.name;
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Ends a job of several ranks after an error on this one: prints it on one line naming the rank and
 * aborts every rank with the CLI's exit code (2: bad input, 1: failure). An error every rank meets
 * alike (a bad config) is printed once: the other ranks wait half a second, and rank 0's abort ends
 * them first.
 */
export function failJob(comm: Communicator, e: unknown): never {
  const message =
    e instanceof QtuneError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
  if (comm.rank !== 0) Atomics.wait(sleepCell, 0, 0, 500);
  comm.abort(exitCodeOf(e), message);
}
