/**
 * The MPI binding under a real mpirun: the collectives give their closed-form results on 3 ranks
 * (oversubscribed on a small machine), the ranks know their place on the machine, an uncaught error
 * on one rank ends the job at once naming it, and a missing MPI library or launcher is one line with
 * exit code 2. Outside MPI, connect() is a job of one.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect, launchedUnderMpi, MpiLibrary } from '../../src/dist/index.js';
import { ROOT, qtune } from '../helpers/cli.js';
import { mpiSkipReason } from '../helpers/mpi.js';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'mpi-child.js');
const skip = mpiSkipReason();

function mpirun(np: number, args: string[]) {
  return spawnSync(
    'mpirun',
    [
      '-np',
      String(np),
      '--oversubscribe',
      '--bind-to',
      'none',
      ...(process.getuid?.() === 0 ? ['--allow-run-as-root'] : []),
      process.execPath,
      CHILD,
      ...args,
    ],
    // a local job needs no ssh (Open MPI looks for it unless plm_rsh_agent is empty)
    {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, NO_COLOR: '1', OMPI_MCA_plm_rsh_agent: '' },
    },
  );
}

describe('MPI outside a launcher', () => {
  it('connect() is a job of one, and MPI is detected from the launcher environment', () => {
    const env = { PATH: process.env['PATH'] };
    assert.equal(launchedUnderMpi(env), false);
    assert.equal(launchedUnderMpi({ ...env, OMPI_COMM_WORLD_SIZE: '2' }), true);
    assert.equal(launchedUnderMpi({ ...env, PMI_SIZE: '2' }), true);
    assert.equal(launchedUnderMpi({ ...env, PMIX_RANK: '0' }), true);
    assert.equal(launchedUnderMpi({ ...env, QTUNE_MPI: '1' }), true);
    assert.equal(launchedUnderMpi({ ...env, OMPI_COMM_WORLD_SIZE: '2', QTUNE_MPI: '0' }), false);
    const comm = connect({ timeoutS: 1, env });
    assert.equal(comm.kind, 'single');
    const buf = Float32Array.of(1, 2);
    comm.allReduceSum(buf);
    comm.broadcast(buf, 0);
    comm.barrier();
    assert.deepEqual([...buf], [1, 2]);
    comm.finalize();
  });

  it('a missing MPI library is one line naming the package, exit code 2', () => {
    const config = [
      '--model',
      'org/never-loaded', // a Hub id: the MPI library is loaded before any model
      '--dataset',
      path.join(ROOT, 'data', 'style.jsonl'),
      '--batch_size',
      '2',
    ];
    const r = qtune(['train', ...config], { QTUNE_MPI: '1', MPI_LIB: '/nonexistent/libmpi.so.40' });
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(
      r.stderr,
      /^qtune: error: MPI_LIB=\/nonexistent\/libmpi\.so\.40 cannot be loaded.*openmpi-bin/,
    );
    const l = qtune(['launch', '-n', '2', '--mpirun', '/nonexistent/mpirun', '--', 'train', ...config]);
    assert.equal(l.code, 2, l.stderr);
    assert.equal(l.stderr.trim().split('\n').length, 1, l.stderr);
    assert.match(l.stderr, /^qtune: error: \/nonexistent\/mpirun not found.*openmpi-bin/);
  });
});

describe('MPI collectives', { skip }, () => {
  it('loads the library and names it', () => {
    const lib = MpiLibrary.load();
    assert.ok(['openmpi', 'mpich'].includes(lib.impl));
    assert.match(lib.version, lib.impl === 'openmpi' ? /Open MPI/ : /MPICH|Intel|MVAPICH/);
  });

  it('allreduce, broadcast and barrier give their closed forms on 3 ranks', () => {
    const r = mpirun(3, ['collectives']);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const lines = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map(
        (l) =>
          JSON.parse(l) as {
            kind: string;
            rank: number;
            size: number;
            localRank: number;
            localSize: number;
            failures: string[];
          },
      )
      .sort((a, b) => a.rank - b.rank);
    assert.deepEqual(
      lines.map((l) => l.rank),
      [0, 1, 2],
    );
    for (const l of lines) {
      assert.equal(l.kind, 'mpi');
      assert.equal(l.size, 3);
      assert.deepEqual(l.failures, []);
      // one machine: every rank is local
      assert.equal(l.localSize, 3);
      assert.equal(l.localRank, l.rank);
    }
  });

  it('an uncaught error on one rank ends the job naming it', () => {
    const t0 = Date.now();
    const r = mpirun(2, ['throw']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /qtune: error: rank 1: Error: simulated failure in the data loader/);
    // MPI_Abort ends the job at once; without it mpirun would wait for the survivor forever
    assert.ok(Date.now() - t0 < 60_000);
  });
});
