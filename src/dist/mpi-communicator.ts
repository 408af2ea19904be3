/**
 * A {@link Communicator} over MPI's COMM_WORLD, with a watchdog: MPI has no timeouts, so a rank that
 * is alive but never joins a collective (stopped, deadlocked, stuck on I/O) would hang the job forever.
 *
 * Every collective is started non-blocking (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) and completed
 * by polling MPI_Test on the calling thread. That keeps the thread in charge while it waits, so it can
 * (1) answer the other ranks' "where are you?" queries, (2) give up after `timeoutS`, ask every other
 * rank where it is, and end the job with MPI_Abort and a message naming the ranks that did not answer
 * (a stopped or stuck rank cannot), and (3) sleep between polls once a wait gets long, which leaves
 * the cores to ranks still computing on an oversubscribed machine. No second thread calls MPI, so
 * MPI_THREAD_FUNNELED suffices. (A watchdog thread beside blocking calls would need
 * MPI_THREAD_MULTIPLE, and a rank stuck outside MPI could still not answer for itself.)
 *
 * A rank that dies (crash, kill, exit without MPI_Finalize) needs no watchdog: mpirun notices, names
 * it and kills the job within about a second (../shared/spike-mpi). An uncaught exception calls
 * MPI_Abort at once, with the error, naming the rank.
 */
import { writeSync } from 'node:fs';
import os from 'node:os';
import { type Communicator, errorLine } from './communicator.js';
import { type Handle, MpiError, MpiLibrary, MpiUnavailableError } from '../engine/mpi.js';

/** mpirun's exit code when the watchdog ends a job (as timeout(1)). */
export const TIMEOUT_EXIT_CODE = 124;

const THREAD_FUNNELED = 1;
/** Counts are C ints: longer buffers go in chunks (2^28 floats = 1 GiB). */
const CHUNK = 2 ** 28;
const TAG_QUERY = 31001;
const TAG_REPLY = 31002;
/**
 * A wait polls without pause for this long (MPI progresses only inside its calls), then sleeps a
 * little between polls: a rank that waits long should leave the cores to those still computing.
 * With more ranks than cores on this machine it gives way sooner.
 */
const SPIN_MS = 50;
const SPIN_MS_OVERSUBSCRIBED = 2;
/** How often a waiting rank answers queries and checks its timeout. */
const POLL_MS = 50;
/** How long a rank that timed out collects the others' answers. */
const ANSWER_MS = 1500;

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleep(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

export interface MpiCommunicatorOptions {
  /** Seconds one collective may wait for the other ranks before the job is ended (0: forever). */
  timeoutS: number;
  /** Abort the job on an uncaught exception or unhandled rejection (default true). */
  hooks?: boolean;
  env?: NodeJS.ProcessEnv;
}

export class MpiCommunicator implements Communicator {
  readonly kind = 'mpi';
  readonly rank: number;
  readonly size: number;
  readonly localRank: number;
  readonly localSize: number;
  readonly lib: MpiLibrary;
  readonly timeoutS: number;
  /** Collectives started so far: the same on every rank that keeps up. */
  private index = 0;
  /** What the current collective is (for the messages), and since when it waits. */
  private current = '';
  private waitStart = 0;
  private readonly spinMs: number;
  private readonly flag = new Int32Array(1);
  private readonly request: Buffer;
  private readonly status = Buffer.alloc(64);
  /** Buffers of sends still in flight (MPI reads them after the call returns). */
  private readonly inFlight: Float64Array[] = [];
  private hooks: { exception: (e: unknown) => void } | null = null;
  private finalized = false;

  private constructor(lib: MpiLibrary, o: MpiCommunicatorOptions) {
    this.lib = lib;
    this.timeoutS = o.timeoutS;
    this.request = lib.handleBuffer();
    const { api, abi } = lib;
    const env = o.env ?? process.env;
    const flag = new Int32Array(1);
    lib.check('Initialized', api.Initialized(flag));
    if (flag[0] !== 0) throw new MpiError('MPI is already initialised in this process');
    const provided = new Int32Array(1);
    lib.check('Init_thread', api.Init_thread(null, null, THREAD_FUNNELED, provided));
    lib.check('Comm_set_errhandler', api.Comm_set_errhandler(abi.COMM_WORLD, abi.ERRORS_RETURN));
    const out = new Int32Array(1);
    lib.check('Comm_rank', api.Comm_rank(abi.COMM_WORLD, out));
    this.rank = out[0]!;
    lib.check('Comm_size', api.Comm_size(abi.COMM_WORLD, out));
    this.size = out[0]!;
    const launched = Number(env['OMPI_COMM_WORLD_SIZE'] ?? env['PMI_SIZE'] ?? NaN);
    if (Number.isInteger(launched) && launched !== this.size) {
      api.Finalize();
      throw new MpiUnavailableError(
        `the launcher started ${launched} ranks but ${lib.file} (${lib.version}) sees ${this.size}: the MPI library is not the launcher's`,
        {
          hint: 'use the mpirun of the library qtune loads, or set MPI_LIB (Open MPI: libmpi.so.40, MPICH: libmpich.so.12)',
        },
      );
    }
    // the ranks on this machine: a communicator of the ranks that share memory with this one
    const local = lib.handleBuffer();
    lib.check(
      'Comm_split_type',
      api.Comm_split_type(abi.COMM_WORLD, abi.COMM_TYPE_SHARED, this.rank, abi.INFO_NULL, local),
    );
    const localComm = lib.readHandle(local);
    lib.check('Comm_rank', api.Comm_rank(localComm, out));
    this.localRank = out[0]!;
    lib.check('Comm_size', api.Comm_size(localComm, out));
    this.localSize = out[0]!;
    lib.check('Comm_free', api.Comm_free(local));
    this.spinMs = this.localSize > os.availableParallelism() ? SPIN_MS_OVERSUBSCRIBED : SPIN_MS;
    if (o.hooks !== false) this.installHooks();
  }

  /** Loads libmpi (see {@link MpiLibrary.load}) and initialises MPI. */
  static init(o: MpiCommunicatorOptions): MpiCommunicator {
    return new MpiCommunicator(MpiLibrary.load(o.env ?? process.env), o);
  }

  private installHooks(): void {
    const exception = (e: unknown): void => {
      this.abort(1, e instanceof Error ? (e.stack ?? e.message) : String(e));
    };
    process.on('uncaughtException', exception);
    process.on('unhandledRejection', exception);
    this.hooks = { exception };
  }

  private dtype(buf: Float32Array | Float64Array | Int32Array): Handle {
    const { abi } = this.lib;
    return buf instanceof Float32Array ? abi.FLOAT : buf instanceof Float64Array ? abi.DOUBLE : abi.INT;
  }

  allReduceSum(buf: Float32Array | Float64Array): void {
    const { api, abi } = this.lib;
    for (let off = 0; off < buf.length; off += CHUNK) {
      const part = buf.subarray(off, Math.min(off + CHUNK, buf.length));
      this.start('allreduce');
      this.lib.check(
        'Iallreduce',
        api.Iallreduce(
          abi.IN_PLACE,
          part,
          part.length,
          this.dtype(buf),
          abi.SUM,
          abi.COMM_WORLD,
          this.request,
        ),
      );
      this.complete();
    }
  }

  broadcast(buf: Float32Array | Float64Array | Int32Array, root: number): void {
    const { api, abi } = this.lib;
    for (let off = 0; off < buf.length; off += CHUNK) {
      const part = buf.subarray(off, Math.min(off + CHUNK, buf.length));
      this.start('broadcast');
      this.lib.check(
        'Ibcast',
        api.Ibcast(part, part.length, this.dtype(buf), root, abi.COMM_WORLD, this.request),
      );
      this.complete();
    }
  }

  barrier(): void {
    this.start('barrier');
    this.lib.check('Ibarrier', this.lib.api.Ibarrier(this.lib.abi.COMM_WORLD, this.request));
    this.complete();
  }

  private start(what: string): void {
    this.index++;
    this.current = what;
  }

  /** Polls the current collective's request to completion (see the file's comment). */
  private complete(): void {
    const { api, abi } = this.lib;
    const t0 = performance.now();
    this.waitStart = t0;
    let nextPoll = t0 + POLL_MS;
    for (;;) {
      this.lib.check('Test', api.Test(this.request, this.flag, abi.STATUS_IGNORE));
      if (this.flag[0] !== 0) break;
      const now = performance.now();
      const waited = now - t0;
      if (waited > this.spinMs) sleep(Math.min(1, waited / 50));
      if (now >= nextPoll) {
        nextPoll = now + POLL_MS;
        this.answerQueries();
        if (this.timeoutS > 0 && waited > this.timeoutS * 1000) this.timedOut(waited);
      }
    }
    this.waitStart = 0;
  }

  /** Replies to every pending "where are you?" with [rank, collective index, seconds waited]. */
  private answerQueries(): void {
    const { api, abi } = this.lib;
    const query = new Float64Array(2);
    for (;;) {
      this.lib.check('Iprobe', api.Iprobe(abi.ANY_SOURCE, TAG_QUERY, abi.COMM_WORLD, this.flag, this.status));
      if (this.flag[0] === 0) return;
      const from = this.status.readInt32LE(abi.statusSource);
      this.lib.check(
        'Recv',
        api.Recv(query, 2, abi.DOUBLE, from, TAG_QUERY, abi.COMM_WORLD, abi.STATUS_IGNORE),
      );
      const waited = this.waitStart > 0 ? (performance.now() - this.waitStart) / 1000 : 0;
      this.send(Float64Array.of(this.rank, this.index, waited), from, TAG_REPLY);
    }
  }

  private send(data: Float64Array, to: number, tag: number): void {
    const { api, abi } = this.lib;
    const req = this.lib.handleBuffer();
    this.inFlight.push(data);
    this.lib.check('Isend', api.Isend(data, data.length, abi.DOUBLE, to, tag, abi.COMM_WORLD, req));
    this.lib.check('Request_free', api.Request_free(req));
  }

  /**
   * This rank waited longer than the timeout: asks the others where they are, then ends the job
   * with a message naming the ranks that did not answer. The lowest waiting rank speaks; the others
   * give it a moment to do so (its MPI_Abort ends them), then speak themselves.
   */
  private timedOut(waitedMs: number): never {
    const { api, abi } = this.lib;
    for (let r = 0; r < this.size; r++)
      if (r !== this.rank) this.send(Float64Array.of(this.rank, this.index), r, TAG_QUERY);
    const answers = new Map<number, { index: number; waited: number }>();
    const reply = new Float64Array(3);
    const until = performance.now() + ANSWER_MS;
    while (answers.size < this.size - 1 && performance.now() < until) {
      this.answerQueries();
      this.lib.check('Iprobe', api.Iprobe(abi.ANY_SOURCE, TAG_REPLY, abi.COMM_WORLD, this.flag, this.status));
      if (this.flag[0] === 0) {
        sleep(5);
        continue;
      }
      const from = this.status.readInt32LE(abi.statusSource);
      this.lib.check(
        'Recv',
        api.Recv(reply, 3, abi.DOUBLE, from, TAG_REPLY, abi.COMM_WORLD, abi.STATUS_IGNORE),
      );
      answers.set(from, { index: reply[1]!, waited: reply[2]! });
    }
    const silent: number[] = [];
    const elsewhere: string[] = [];
    for (let r = 0; r < this.size; r++) {
      if (r === this.rank) continue;
      const a = answers.get(r);
      if (a === undefined) silent.push(r);
      else if (a.index !== this.index) elsewhere.push(`rank ${r} waits in collective #${a.index}`);
    }
    const plural = (rs: number[]) => `rank${rs.length > 1 ? 's' : ''} ${rs.join(', ')}`;
    const why = [
      ...(silent.length > 0 ? [`${plural(silent)} did not answer (stopped, hung or far behind)`] : []),
      ...elsewhere,
    ];
    const message =
      `waited ${(waitedMs / 1000).toFixed(1)} s in ${/^[aeiou]/.test(this.current) ? 'an' : 'a'} ${this.current} (collective #${this.index}) for the other ranks` +
      (why.length > 0 ? `; ${why.join('; ')}` : '') +
      `; ending the job (dist_timeout ${this.timeoutS} s)`;
    const lowest = Math.min(this.rank, ...answers.keys());
    if (lowest !== this.rank) {
      const end = performance.now() + 3000;
      while (performance.now() < end) {
        this.answerQueries();
        sleep(20);
      }
    }
    this.abort(TIMEOUT_EXIT_CODE, message);
  }

  abort(code: number, message: string): never {
    writeSync(2, errorLine(this.rank, this.size, message));
    if (!this.finalized) this.lib.api.Abort(this.lib.abi.COMM_WORLD, code);
    process.exit(code);
  }

  finalize(): void {
    if (this.hooks !== null) {
      process.off('uncaughtException', this.hooks.exception);
      process.off('unhandledRejection', this.hooks.exception);
      this.hooks = null;
    }
    if (this.finalized) return;
    const flag = new Int32Array(1);
    this.lib.check('Finalized', this.lib.api.Finalized(flag));
    if (flag[0] === 0) this.lib.check('Finalize', this.lib.api.Finalize());
    this.finalized = true;
  }
}
