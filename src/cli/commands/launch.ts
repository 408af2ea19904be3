/**
 * `qtune launch -n N [--hostfile F] [--mpirun PATH] -- train --config run.yaml`: a thin wrapper over
 * mpirun. Checks the train config first (a bad one fails here, once, not on every rank), builds the
 * mpirun command with the flags a job needs (src/dist/launch.ts), prints it, runs it, and exits with
 * its exit code.
 */
import { spawn } from 'node:child_process';
import { ensureNativeEngine } from '../../engine/auto-build.js';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildMpirunCommand, detectMpirun, planText } from '../../dist/launch.js';
import { INSTALL_HINT, MpiLibrary, MpiUnavailableError } from '../../engine/mpi.js';
import { physicalCores } from '../../engine/paths.js';
import { splitGlobalBatch } from '../../train/parallel.js';
import { UsageError, helpText, intFlag, parse, type CommandSpec } from '../args.js';
import { readConfigFile, resolveTrainConfig } from '../train-config.js';
import { signalExitCode, type StopSignal } from '../stop-on-signal.js';
import { readFlags } from './train.js';

export const spec: CommandSpec = {
  name: 'launch',
  summary: 'Train on several processes or machines over MPI (a wrapper over mpirun).',
  usage: 'qtune launch -n N [--hostfile FILE] [--mpirun PATH] [--dry-run] -- train --config run.yaml',
  flags: {
    np: { type: 'string', short: 'n', help: 'number of ranks (processes)' },
    hostfile: { type: 'string', help: "the machines and their slots (Open MPI's --hostfile, MPICH's -f)" },
    mpirun: { type: 'string', default: 'mpirun', help: 'the launcher: mpirun, mpiexec or a path' },
    'dry-run': { type: 'boolean', help: 'print the command and check the config, without running it' },
  },
};

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../../bin/qtune.js');

function onPath(name: string): boolean {
  return (process.env['PATH'] ?? '')
    .split(path.delimiter)
    .some((d) => d !== '' && existsSync(path.join(d, name)));
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const dash = argv.indexOf('--');
  const { values } = parse(spec, dash < 0 ? argv : argv.slice(0, dash));
  if (values['help'] === true) {
    out(helpText(spec));
    out(
      '\nThe global batch (batch_size × gradient_accumulation_steps) stays the same for any -n; each rank takes its share.',
    );
    return 0;
  }
  const ranks = intFlag('np', values['np']);
  if (ranks === undefined)
    throw new UsageError('launch: -n N is missing', 'e.g. qtune launch -n 2 -- train --config run.yaml');
  const command = dash < 0 ? [] : argv.slice(dash + 1);
  if (command[0] !== 'train')
    throw new UsageError(
      `launch: ${command.length === 0 ? 'no command after --' : `"${command[0]}" does not run across ranks`}`,
      'e.g. qtune launch -n 2 -- train --config run.yaml',
    );
  const hostfile = values['hostfile'] as string | undefined;
  if (hostfile !== undefined && !existsSync(hostfile))
    throw new UsageError(
      `launch: --hostfile ${hostfile} does not exist`,
      'give a file of host names and slots',
    );
  // the config is the same on every rank: check it once, here
  const flags = readFlags(command.slice(1));
  if (!flags.help) {
    const c = resolveTrainConfig(flags.config === undefined ? {} : readConfigFile(flags.config), flags.flags);
    splitGlobalBatch(c.batch_size, c.gradient_accumulation_steps, ranks);
  }
  const mpirun = values['mpirun'] as string;
  if (!mpirun.includes(path.sep) && !onPath(mpirun))
    throw new MpiUnavailableError(`${mpirun} not found`, {
      hint: `${INSTALL_HINT}; or name the launcher with --mpirun PATH`,
    });
  const { flavor } = detectMpirun(mpirun);
  const plan = buildMpirunCommand({
    mpirun,
    flavor,
    ranks,
    ...(hostfile === undefined ? {} : { hostfile }),
    cores: physicalCores(),
    root: process.getuid?.() === 0,
    ssh: onPath('ssh'),
    program: [process.execPath, BIN, ...command],
    env: process.env,
  });
  // the library the ranks will load: missing, or not the launcher's, is one line here rather than one per rank
  const lib = MpiLibrary.load(flavor === 'mpich' ? { ...process.env, PMI_SIZE: String(ranks) } : process.env);
  if (lib.impl !== flavor)
    throw new MpiUnavailableError(
      `${mpirun} is ${flavor === 'mpich' ? "MPICH's" : "Open MPI's"} launcher but the ranks would load ${lib.file} (${lib.version})`,
      { hint: 'set MPI_LIB to the library of that launcher, or name the matching one with --mpirun' },
    );
  out(planText(plan));
  if (values['dry-run'] === true) return 0;
  // the ranks never build the native engine themselves (src/engine/auto-build.ts): build it here
  ensureNativeEngine((line) => console.error(line));
  const child = spawn(plan.command, plan.args, { stdio: 'inherit', env: { ...process.env, ...plan.env } });
  // mpirun ends every rank on SIGINT or SIGTERM; the ranks keep no checkpoint of the step reached
  // (one that stopped alone would leave the others waiting), so the line says what stays
  // (and the launcher exits with 130 or 143, as `qtune train` does, whatever mpirun's own code)
  let received: StopSignal | null = null;
  const forward = (signal: StopSignal) => () => {
    if (received === null)
      console.error(
        `qtune launch: ${signal}: ending the job; a data-parallel job writes no checkpoint when stopped: resume_from_checkpoint: latest continues from its last checkpoint-N (save_steps)`,
      );
    received ??= signal;
    child.kill(signal);
  };
  const onTerm = forward('SIGTERM');
  const onInt = forward('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    return await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        if (received !== null) resolve(signalExitCode(received));
        else resolve(code ?? 128 + (signal === null ? 0 : os.constants.signals[signal]));
      });
    });
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}
