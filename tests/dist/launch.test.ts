/**
 * `qtune launch`: the mpirun command it builds for Open MPI and MPICH (the flags measured in
 * ../shared/spike-mpi), and the checks it makes before starting anything.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import { buildMpirunCommand, planText, type LaunchOptions } from '../../src/dist/launch.js';
import { ROOT, qtune } from '../helpers/cli.js';
import { mpiSkipReason } from '../helpers/mpi.js';

const base: LaunchOptions = {
  mpirun: 'mpirun',
  flavor: 'openmpi',
  ranks: 2,
  cores: 2,
  root: false,
  ssh: true,
  program: ['/usr/bin/node', '/opt/qtune/bin/qtune.js', 'train', '--config', 'run.yaml'],
  env: { PATH: '/usr/bin', HOME: '/root' },
};

describe('the mpirun command', () => {
  it('Open MPI: no binding, NO_COLOR to every host, the program last', () => {
    const plan = buildMpirunCommand(base);
    assert.equal(plan.command, 'mpirun');
    assert.deepEqual(plan.args, ['-np', '2', '--bind-to', 'none', '-x', 'NO_COLOR', ...base.program]);
    assert.deepEqual(plan.env, { NO_COLOR: '1' });
    assert.equal(
      planText(plan),
      'NO_COLOR=1 mpirun -np 2 --bind-to none -x NO_COLOR /usr/bin/node /opt/qtune/bin/qtune.js train --config run.yaml',
    );
  });

  it('Open MPI as root, without ssh, more ranks than cores, qtune settings in the environment', () => {
    const plan = buildMpirunCommand({
      ...base,
      ranks: 4,
      root: true,
      ssh: false,
      env: { ...base.env, QTUNE_THREADS: '1', MPI_LIB: '/opt/lib/libmpi.so.40' },
    });
    assert.deepEqual(plan.args.slice(0, 12), [
      '-np',
      '4',
      '--bind-to',
      'none',
      '--oversubscribe',
      '--allow-run-as-root',
      '-x',
      'NO_COLOR',
      '-x',
      'MPI_LIB',
      '-x',
      'QTUNE_THREADS',
    ]);
    assert.deepEqual(plan.env, { NO_COLOR: '1', OMPI_MCA_plm_rsh_agent: '' });
    assert.match(planText(plan), /^NO_COLOR=1 OMPI_MCA_plm_rsh_agent= mpirun -np 4 /);
  });

  it('a hostfile sets the slots: no --oversubscribe', () => {
    const plan = buildMpirunCommand({ ...base, ranks: 8, hostfile: 'hosts.txt' });
    assert.deepEqual(plan.args.slice(0, 6), ['-np', '8', '--hostfile', 'hosts.txt', '--bind-to', 'none']);
    assert.ok(!plan.args.includes('--oversubscribe'));
  });

  it("MPICH's mpiexec: -n and -f; it passes the environment on itself", () => {
    const plan = buildMpirunCommand({
      ...base,
      mpirun: 'mpiexec',
      flavor: 'mpich',
      ranks: 4,
      root: true,
      ssh: false,
      hostfile: 'hosts',
    });
    assert.deepEqual(plan.args, ['-n', '4', '-f', 'hosts', ...base.program]);
    assert.deepEqual(plan.env, { NO_COLOR: '1' });
  });

  it('quotes what the shell would split', () => {
    const plan = buildMpirunCommand({
      ...base,
      program: ['node', 'qtune.js', 'train', '--output_dir', "my run's"],
    });
    assert.match(planText(plan), / --output_dir 'my run'\\''s'$/);
  });
});

describe('qtune launch', () => {
  const train = ['train', '--model', 'nowhere', '--dataset', path.join(ROOT, 'data', 'style.jsonl')];

  it('a global batch that does not split across the ranks is one line, exit 2, before mpirun', () => {
    const r = qtune([
      'launch',
      '-n',
      '3',
      '--',
      ...train,
      '--batch_size',
      '4',
      '--gradient_accumulation_steps',
      '1',
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.equal(r.stdout, '');
    assert.deepEqual(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(
      r.stderr,
      /batch_size × gradient_accumulation_steps = 4 × 1 = 4 examples per step, which do not split across 3 ranks/,
    );
  });

  it('refuses a missing -n, a missing command and commands that do not run across ranks', () => {
    for (const [args, pattern] of [
      [['launch', '--', ...train], /-n N is missing/],
      [['launch', '-n', '2'], /no command after --/],
      [['launch', '-n', '2', '--', 'eval'], /"eval" does not run across ranks/],
      [['launch', '-n', 'two', '--', ...train], /--np=two is not a positive integer/],
    ] as const) {
      const r = qtune([...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, pattern);
    }
  });

  it('--dry-run prints the command and starts nothing', { skip: mpiSkipReason() }, () => {
    const r = qtune(['launch', '-n', '2', '--dry-run', '--', ...train, '--batch_size', '2']);
    assert.equal(r.code, 0, r.stderr);
    const line = r.stdout.trim();
    assert.match(line, /\bmpi(run|exec)\S* -n/);
    assert.ok(line.endsWith(`${path.join(ROOT, 'bin', 'qtune.js')} ${train.join(' ')} --batch_size 2`), line);
  });
});
