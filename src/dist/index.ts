/**
 * Data-parallel jobs over MPI. `connect()` returns the job this process belongs to: MPI's when an MPI
 * launcher started it (or QTUNE_MPI=1 asks for MPI), else a job of one. libmpi is loaded only then.
 *
 * @example
 * // mpirun -np 2 node train.js
 * const comm = connect({ timeoutS: 600 });
 * const trainer = await Trainer.create('tiny-model', data, { trainType: 'lora', comm });
 * trainer.train();
 * comm.finalize();
 */
import { type Communicator, SingleProcess } from './communicator.js';
import { MpiCommunicator } from './mpi-communicator.js';

export { type Communicator, SingleProcess, errorLine } from './communicator.js';
export { MpiCommunicator, TIMEOUT_EXIT_CODE } from './mpi-communicator.js';
export { INSTALL_HINT, MpiError, MpiLibrary, MpiUnavailableError } from '../engine/mpi.js';
export { buildMpirunCommand, detectMpirun, planText, type LaunchPlan, type MpirunFlavor } from './launch.js';

/**
 * Whether an MPI launcher started this process: Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE, MPICH's
 * Hydra PMI_SIZE, PMIx launchers (Open MPI 5, Slurm's srun --mpi=pmix) PMIX_RANK. QTUNE_MPI=1 forces
 * MPI (a job of one when no launcher started it); QTUNE_MPI=0 turns it off.
 */
export function launchedUnderMpi(env: NodeJS.ProcessEnv = process.env): boolean {
  const force = env['QTUNE_MPI'];
  if (force === '1') return true;
  if (force === '0') return false;
  return (
    env['OMPI_COMM_WORLD_SIZE'] !== undefined ||
    env['PMI_SIZE'] !== undefined ||
    env['PMIX_RANK'] !== undefined
  );
}

/** The job this process belongs to (see {@link launchedUnderMpi}). */
export function connect(o: { timeoutS: number; env?: NodeJS.ProcessEnv }): Communicator {
  const env = o.env ?? process.env;
  return launchedUnderMpi(env) ? MpiCommunicator.init({ timeoutS: o.timeoutS, env }) : new SingleProcess();
}
