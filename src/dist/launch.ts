/**
 * The mpirun command line of `qtune launch`: which launcher is installed, and the flags a job needs
 * (measured in ../shared/spike-mpi on a 2-core machine):
 * - Open MPI binds each rank to one core by default, so every thread of a rank shares it:
 *   `--bind-to none`;
 * - more ranks than cores need `--oversubscribe`; root needs `--allow-run-as-root`;
 * - without ssh even a local mpirun fails unless OMPI_MCA_plm_rsh_agent is empty;
 * - the ranks' stdout is a pseudo-terminal, so NO_COLOR=1 (and `-x` it to other hosts).
 * MPICH's Hydra (mpiexec) needs none of these; its flags are `-n` and `-f hostfile`, and it passes
 * the whole environment on.
 */
import { spawnSync } from 'node:child_process';
import { INSTALL_HINT, MpiUnavailableError } from '../engine/mpi.js';

export type MpirunFlavor = 'openmpi' | 'mpich';

/** Environment variables passed on to the ranks on other hosts (Open MPI's `-x`) when they are set. */
const FORWARDED_ENV = /^(QTUNE_|MPI_LIB$|HF_|WANDB_|UCX_|GGML_)/;

/** Runs `mpirun --version` and tells Open MPI's from MPICH's Hydra. */
export function detectMpirun(mpirun: string): { flavor: MpirunFlavor; version: string } {
  const r = spawnSync(mpirun, ['--version'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error !== undefined) {
    const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new MpiUnavailableError(
      missing ? `${mpirun} not found` : `${mpirun} --version failed: ${r.error.message}`,
      { hint: missing ? `${INSTALL_HINT}; or name the launcher with --mpirun PATH` : INSTALL_HINT },
    );
  }
  const text = `${r.stdout}\n${r.stderr}`;
  const first = text.trim().split('\n')[0] ?? '';
  if (/Open MPI|OpenRTE/i.test(text)) return { flavor: 'openmpi', version: first };
  if (/HYDRA|MPICH|Intel\(R\) MPI/i.test(text)) return { flavor: 'mpich', version: first };
  throw new MpiUnavailableError(`${mpirun} is neither Open MPI's mpirun nor MPICH's mpiexec: "${first}"`, {
    hint: INSTALL_HINT,
  });
}

export interface LaunchOptions {
  mpirun: string;
  flavor: MpirunFlavor;
  ranks: number;
  hostfile?: string;
  /** Cores of this machine (Open MPI's slots without a hostfile). */
  cores: number;
  /** Running as root (Open MPI refuses without --allow-run-as-root). */
  root: boolean;
  /** ssh is installed (Open MPI's launcher needs it, or an empty plm_rsh_agent). */
  ssh: boolean;
  /** What each rank runs: node and the script with its arguments. */
  program: string[];
  /** The launcher's environment (for the variables forwarded to other hosts). */
  env: NodeJS.ProcessEnv;
}

export interface LaunchPlan {
  command: string;
  args: string[];
  /** Variables added to the launcher's environment. */
  env: Record<string, string>;
}

/** The mpirun (or mpiexec) invocation that starts `ranks` copies of `program`. */
export function buildMpirunCommand(o: LaunchOptions): LaunchPlan {
  const env: Record<string, string> = { NO_COLOR: '1' };
  if (o.flavor === 'mpich') {
    const args = ['-n', String(o.ranks), ...(o.hostfile === undefined ? [] : ['-f', o.hostfile])];
    return { command: o.mpirun, args: [...args, ...o.program], env };
  }
  if (!o.ssh) env['OMPI_MCA_plm_rsh_agent'] = '';
  const forwarded = Object.keys(o.env)
    .filter((k) => FORWARDED_ENV.test(k))
    .sort();
  const args = [
    '-np',
    String(o.ranks),
    ...(o.hostfile === undefined ? [] : ['--hostfile', o.hostfile]),
    '--bind-to',
    'none',
    ...(o.hostfile === undefined && o.ranks > o.cores ? ['--oversubscribe'] : []),
    ...(o.root ? ['--allow-run-as-root'] : []),
    ...['NO_COLOR', ...forwarded].flatMap((k) => ['-x', k]),
  ];
  return { command: o.mpirun, args: [...args, ...o.program], env };
}

/** A plan as one shell line (for printing). */
export function planText(plan: LaunchPlan): string {
  const quote = (s: string): string => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);
  return [
    ...Object.entries(plan.env).map(([k, v]) => `${k}=${quote(v)}`.replace(/=''$/, '=')),
    quote(plan.command),
    ...plan.args.map(quote),
  ].join(' ');
}
