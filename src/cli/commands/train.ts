/**
 * `qtune train --config run.yaml [--key value ...]`: data file to fine-tuned adapter in one command.
 * Every option of the config (see `qtune train --help`) can also be given as a flag, which wins.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { BackendManager } from '../../backends/manager.js';
import { loadDataset } from '../../data/dataset.js';
import { connect, type Communicator } from '../../dist/index.js';
import { formatBytes, setMemoryLimit } from '../../engine/memory.js';
import { describeDeviceMap } from '../../models/device-map.js';
import type { DeviceRequest } from '../../models/load.js';
import type { DeviceMemory } from '../../train/memory.js';
import { ConfigError, FileSystemError, fileSystemError } from '../../errors.js';
import { checkFile, checkModelPath, checkOutputFolder, makeFolder } from '../../io/folders.js';
import type { OptimizerConfig } from '../../optim/optimizer.js';
import type { AdapterDType } from '../../peft/lora-weights.js';
import type { ScheduleConfig } from '../../optim/schedule.js';
import { ConsoleProgress } from '../../report/console.js';
import { createRunLoggers } from '../../report/logger.js';
import type { FrozenCopies } from '../../train/frozen.js';
import type { ComputeDTypeChoice } from '../../train/kernel-choice.js';
import { formatProfile, writeProfileTrace } from '../../train/profile.js';
import { defaultGradientCheckpointing } from '../../train/train-type.js';
import { cleanCheckpointLeftovers } from '../../train/checkpoint.js';
import type { TrainerOptions } from '../../train/options.js';
import { checkStepMemory, prepareModel } from '../../train/prepare.js';
import { Trainer } from '../../train/trainer.js';
import { UsageError, type CommandSpec } from '../args.js';
import { failJob, rankBackend, rankThreads } from '../distributed.js';
import { checkEarlierRun, latestCheckpoint, lockOutputFolder } from '../run-folder.js';
import { BestCheckpoint, writeRunFiles } from '../run-outputs.js';
import { startTrainDashboard } from '../train-dashboard.js';
import type { DashboardHandle } from '../../report/dashboard/start.js';
import { TrainLog } from '../train-log.js';
import { objectiveTrainerOptions } from '../objective-config.js';
import { grpoSetup } from '../grpo-config.js';
import { resumeCommand, signalExitCode, stopOnSignal } from '../stop-on-signal.js';
import { trainerEvalOptions } from '../eval-prompts.js';
import { readConfigFile, resolveTrainConfig, trainOptionsHelp, type TrainConfig } from '../train-config.js';

export const spec: CommandSpec = {
  name: 'train',
  summary: 'Fine-tune a model from a YAML config (lora, qlora, dora, full, llama_pro, ...).',
  usage: 'qtune train --config run.yaml [--option value ...]',
  flags: {},
};

function help(): string {
  return [
    spec.summary,
    '',
    `usage: ${spec.usage}`,
    '',
    'Every option can be set in the YAML file (option: value) or as a flag (--option value); flags win.',
    'Flag names take - or _ alike (--context-length, --context_length); the Axolotl and Hugging Face',
    'names after "also" are the same option (docs/cli.md lists them).',
    '',
    'options:',
    `  --${'config'.padEnd(28)} the YAML config file`,
    ...trainOptionsHelp(),
    `  --${'help'.padEnd(28)} show this help`,
  ].join('\n');
}

/**
 * Splits argv into --config, --help and the option flags: `--name value`, `--name=value`, or a bare
 * `--name` (true) before another flag or at the end. A flag keeps the name as typed (for messages);
 * resolveTrainConfig takes `-` for `_`. Of one flag given twice, in either spelling, the last wins.
 */
export function readFlags(argv: string[]): {
  config?: string;
  help: boolean;
  flags: Record<string, string | boolean>;
} {
  const flags: Record<string, string | boolean> = {};
  let config: string | undefined;
  let helpWanted = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-h') {
      helpWanted = true; // as every command takes it
      continue;
    }
    if (!arg.startsWith('--') || arg === '--')
      throw new UsageError(`train: unexpected argument "${arg}"`, 'options are --name value');
    const eq = arg.indexOf('=');
    const typed = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const name = typed.replace(/-/g, '_');
    let value: string | boolean;
    if (eq >= 0) value = arg.slice(eq + 1);
    else if (i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) value = argv[++i]!;
    else value = true;
    if (name === 'help') helpWanted = true;
    else if (name === 'config') {
      if (typeof value !== 'string')
        throw new UsageError('train: --config needs a file', 'e.g. --config run.yaml');
      config = value;
    } else {
      for (const k of Object.keys(flags)) if (k.replace(/-/g, '_') === name) Reflect.deleteProperty(flags, k);
      flags[typed] = value;
    }
  }
  return { ...(config === undefined ? {} : { config }), help: helpWanted, flags };
}

/** The trainer options a config asks for. */
export function trainerOptions(c: TrainConfig): TrainerOptions {
  const optimizer = { name: c.optimizer, lr: c.lr, weight_decay: c.weight_decay } as OptimizerConfig;
  const schedule: Record<string, unknown> = { name: c.lr_scheduler };
  if (c.warmup_steps !== null) schedule['warmup_steps'] = c.warmup_steps;
  if (c.warmup_ratio !== null) schedule['warmup_ratio'] = c.warmup_ratio;
  if (c.min_lr_ratio !== null) schedule['min_lr_ratio'] = c.min_lr_ratio;
  if (c.num_cycles !== null) schedule['num_cycles'] = c.num_cycles;
  return {
    trainType: c.train_type,
    ...objectiveTrainerOptions(c),
    ...(c.quantization === null ? {} : { quantization: c.quantization }),
    lora: {
      rank: c.lora_rank,
      alpha: c.lora_alpha,
      dropout: c.lora_dropout,
      ...(c.lora_target_modules.length === 0 ? {} : { targetModules: c.lora_target_modules }),
      rsLora: c.use_rslora,
      ...(c.lora_rank_pattern === null ? {} : { rankPattern: c.lora_rank_pattern }),
      ...(c.lora_alpha_pattern === null ? {} : { alphaPattern: c.lora_alpha_pattern }),
    },
    precision: c.precision as TrainerOptions['precision'] & string,
    batchSize: c.batch_size,
    gradientAccumulationSteps: c.gradient_accumulation_steps,
    epochs: c.num_epochs,
    ...(c.max_steps === null ? {} : { maxSteps: c.max_steps }),
    ...(c.gradient_checkpointing === null ? {} : { gradientCheckpointing: c.gradient_checkpointing }),
    frozenWeightCopies: c.frozen_weight_copies as FrozenCopies,
    quantComputeDType: c.quant_compute_dtype as ComputeDTypeChoice,
    crossEntropyChunk: c.cross_entropy_chunk,
    padding: c.pad_to_sequence_len ? 'max_length' : 'longest',
    groupByLength: c.group_by_length,
    ...(c.profile ? { profile: c.profile_step === null ? true : { step: c.profile_step } } : {}),
    maxGradNorm: c.max_grad_norm,
    lossScale: { growthInterval: c.loss_scale_growth_interval },
    optimizer,
    schedule: schedule as Omit<ScheduleConfig, 'lr' | 'total_steps'>,
    evalEvery: c.eval_steps,
    saveEvery: c.save_steps,
    outputDir: c.output_dir,
    seed: c.seed,
    resumeIgnoreDataChange: c.resume_ignore_data_change,
    ...trainerEvalOptions(c),
  };
}

/** The split a config asks for (devices, layer_split, device_map), or null for one device. */
export function deviceRequest(c: TrainConfig): DeviceRequest | null {
  if (c.devices.length === 0 && c.device_map.length === 0) return null;
  return {
    ...(c.devices.length === 0 ? {} : { devices: c.devices[0] === 'auto' ? ('auto' as const) : c.devices }),
    ...(c.layer_split.length === 0 ? {} : { layerSplit: c.layer_split }),
    ...(c.device_map.length === 0 ? {} : { deviceMap: c.device_map }),
  };
}

/** `memory on Vulkan0: weights 2.9 MiB, adapters 0.3 MiB, ... (total 12.1 MiB)`. */
function deviceMemoryLine(d: DeviceMemory): string {
  const parts = [
    ['weights', d.weights],
    ['adapters', d.adapters],
    ['gradients', d.gradients],
    ['optimizer state', d.optimizerState],
    ['compute buffers', d.compute],
  ] as const;
  return `memory on ${d.device}: ${parts
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${formatBytes(n)}`)
    .join(', ')} (total ${formatBytes(d.total)})`;
}

/**
 * The trained adapter or model, written into `dir`. A failure (a full disk) is one line that says the
 * last checkpoint holds the trained weights and how to write them from it.
 */
function saveOutputs(
  trainer: Trainer,
  dir: string,
  o: { adapterDType: AdapterDType; mlx: boolean },
): string[] {
  try {
    return trainer.saveOutputs(dir, o);
  } catch (e) {
    const last = path.join(dir, `checkpoint-${trainer.globalStep}`);
    if (!(e instanceof FileSystemError) || !existsSync(last)) throw e;
    const what = trainer.lora === null ? 'model' : 'adapter';
    throw new FileSystemError(e.path, e.sysCode, `the trained ${what} could not be written: ${e.problem}`, {
      hint: `${e.hint ?? 'check the path'}; ${last} holds the trained weights: then run again with resume_from_checkpoint: latest to write the ${what} from it`,
    });
  }
}

/** What `qtune train` prints on stderr at a first and at a second SIGINT or SIGTERM. */
function signalLines(trainer: Trainer, dir: string): Parameters<typeof stopOnSignal>[0] {
  return {
    notice: (s) =>
      `qtune: ${s}: stopping after step ${trainer.globalStep + (trainer.stepInProgress ? 1 : 0)} with a checkpoint; ${s === 'SIGINT' ? 'press Ctrl-C' : 'send it'} again to quit at once`,
    early: (s) => {
      const last = existsSync(dir) ? readdirSync(dir).filter((d) => /^checkpoint-\d+$/.test(d)) : [];
      const n = last.map((d) => Number(d.slice(11))).sort((a, b) => b - a)[0];
      return `qtune: ${s} again: quit at once; ${n === undefined ? 'no checkpoint was written' : `the last checkpoint is ${path.join(dir, `checkpoint-${n}`)}`}`;
    },
  };
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { config: file, help: wantsHelp, flags } = readFlags(argv);
  if (wantsHelp) {
    out(help());
    return 0;
  }
  const c = resolveTrainConfig(file === undefined ? {} : readConfigFile(file), flags);
  checkModelPath(c.model!, file); // a missing local path is one line, not a Hub download
  // one rank of a data-parallel job when an MPI launcher started this process (src/dist)
  const comm = connect({ timeoutS: c.dist_timeout });
  let code: number;
  try {
    code = await train(c, comm, comm.rank === 0 ? out : () => undefined, argv);
  } catch (e) {
    if (comm.size > 1) failJob(comm, e);
    comm.finalize();
    throw e;
  }
  comm.finalize();
  return code;
}

async function train(
  c: TrainConfig,
  comm: Communicator,
  out: (s: string) => void,
  argv: readonly string[],
): Promise<number> {
  const manager = new BackendManager();
  const threads = rankThreads(c.threads, comm);
  if (threads !== null) manager.setThreads(threads);
  const capped = Object.entries(c.max_memory ?? {}).map(([name, bytes]) => {
    const device = manager.select(name).name;
    setMemoryLimit(device, bytes);
    return device;
  });
  try {
    return await trainOn(c, comm, manager, out, argv);
  } finally {
    for (const device of capped) setMemoryLimit(device, null);
  }
}

async function trainOn(
  c: TrainConfig,
  comm: Communicator,
  manager: BackendManager,
  out: (s: string) => void,
  argv: readonly string[],
): Promise<number> {
  // rank 0 writes every file of the run; the others only train
  const writer = comm.rank === 0;
  // a path that cannot be written is found before the model is loaded and hours are trained
  if (writer) checkOutputFolder('output_dir', c.output_dir);
  // one run per folder: the lock is taken, and an earlier run refused, before anything is loaded
  const unlock = writer ? lockOutputFolder(c.output_dir) : () => undefined;
  try {
    return await trainLocked(c, comm, manager, out, argv);
  } finally {
    unlock();
  }
}

async function trainLocked(
  c: TrainConfig,
  comm: Communicator,
  manager: BackendManager,
  print: (s: string) => void,
  argv: readonly string[],
): Promise<number> {
  const writer = comm.rank === 0;
  // train.log: what the run prints, written once output_dir is made (train-log.ts)
  const log = writer ? new TrainLog(c.output_dir, { append: c.resume_from_checkpoint !== null }) : null;
  const out = (s: string): void => {
    print(s);
    log?.line(s);
  };
  try {
    return await trainLogged(c, comm, manager, out, log, argv);
  } catch (e) {
    log?.line(`qtune: error: ${errorLine(e)}`);
    try {
      log?.flush();
    } catch {
      // the error being reported (a full disk, say) may be why the log cannot be written either
    }
    throw e;
  }
}

function errorLine(e: unknown): string {
  const f = fileSystemError(e);
  return f instanceof Error ? f.message : String(f);
}

async function trainLogged(
  c: TrainConfig,
  comm: Communicator,
  manager: BackendManager,
  out: (s: string) => void,
  log: TrainLog | null,
  argv: readonly string[],
): Promise<number> {
  const writer = comm.rank === 0;
  if (writer)
    checkEarlierRun(c.output_dir, {
      overwrite: c.overwrite_output_dir,
      resume: c.resume_from_checkpoint !== null,
    });
  // the live page (report/dashboard) on a worker thread: it answers while a step holds this one
  const dash = writer && c.dashboard ? await startTrainDashboard(c, log) : null;
  try {
    return await trainWatched(c, comm, manager, out, log, argv, dash);
  } finally {
    await dash?.close();
  }
}

async function trainWatched(
  c: TrainConfig,
  comm: Communicator,
  manager: BackendManager,
  out: (s: string) => void,
  log: TrainLog | null,
  argv: readonly string[],
  dash: DashboardHandle | null,
): Promise<number> {
  const devices = deviceRequest(c);
  const writer = comm.rank === 0;
  // "latest" with no checkpoint fails here, before a logger starts metrics.jsonl
  const resumeDir =
    c.resume_from_checkpoint === 'latest' ? latestCheckpoint(c.output_dir) : c.resume_from_checkpoint;
  for (const [field, file] of [
    ['dataset', c.dataset],
    ['val_dataset', c.val_dataset],
  ] as const)
    if (file !== null && c.dataset_format !== 'dummy' && existsSync(file)) checkFile(field, file);
  const options: TrainerOptions = { ...trainerOptions(c), ...(comm.kind === 'mpi' ? { comm } : {}) };
  const prepared = await prepareModel(c.model!, {
    trainType: c.train_type,
    ...(c.quantization === null ? {} : { quantization: c.quantization }),
    ...(options.precision === undefined ? {} : { precision: options.precision }),
    ...(devices === null ? { backend: manager.select(rankBackend(c.backend, manager, comm)) } : { devices }),
  });
  const where = prepared.model.backends.map((b) => b.name).join('+');
  if (prepared.model.isSplit)
    for (const line of describeDeviceMap(prepared.model.deviceMap)) out(`placement: ${line}`);
  dash?.setOverride({
    placement: prepared.model.isSplit
      ? describeDeviceMap(prepared.model.deviceMap)
      : [`${where}: the whole model`],
  });
  let trainer: Trainer;
  try {
    if (prepared.tokenizer === null) throw new ConfigError(`model: ${c.model!} has no tokenizer`);
    // an impossible batch shape fails here, before the data is tokenized into examples of that length
    checkStepMemory(prepared.model, {
      batchSize: c.batch_size,
      seqLen: c.context_length,
      gradientAccumulationSteps: c.gradient_accumulation_steps,
      gradientCheckpointing: c.gradient_checkpointing ?? defaultGradientCheckpointing(prepared.trainType),
      quantized: prepared.trainType.quantization !== null,
      crossEntropyChunk: c.cross_entropy_chunk,
    });
    // (after the memory check, which names the batch shape) positions past the model's trained length have no meaning to it (HF's config already counts any rope scaling)
    const limit = prepared.model.config.max_position_embeddings;
    if (c.context_length > limit)
      throw new ConfigError(
        `context_length: ${c.context_length} is more than the ${limit} positions of ${c.model!} (max_position_embeddings)`,
        { hint: `use context_length ${limit} or less` },
      );
    // GRPO: a prompt dataset, and the reward functions imported (cli/grpo-config.ts)
    const grpo = c.objective === 'grpo' ? await grpoSetup(c, prepared.tokenizer) : null;
    const data =
      grpo?.data ??
      (await loadDataset(
        {
          path: c.dataset ?? '',
          format: c.dataset_format,
          ...(c.val_dataset === null ? { val_size: c.val_size } : { val_path: c.val_dataset }),
          packing: c.packing,
          seed: c.seed,
          ...(c.max_samples === null ? {} : { max_samples: c.max_samples }),
        },
        prepared.tokenizer,
        c.context_length,
      ));
    trainer = new Trainer(prepared, data, grpo === null ? options : { ...options, grpo: grpo.grpo });
  } catch (e) {
    prepared.dispose();
    throw e;
  }
  try {
    out(trainer.gradientCheckpointingLine());
    trainer.allocate(); // a step the device cannot hold fails before anything is written
    for (const line of trainer.kernelChoiceLines()) out(line);
    if (writer) makeFolder(c.output_dir, 'output_dir');
    log?.start();
    const logger = writer
      ? await createRunLoggers({
          outputDir: c.output_dir,
          logTo: c.log_to as ('tensorboard' | 'wandb')[],
          totalSteps: trainer.totalSteps,
          everySteps: c.logging_steps,
          runConfig: { ...c, gradient_checkpointing: trainer.gradientCheckpointing, world_size: comm.size },
          // a rank's stderr is a pseudo-terminal even when mpirun's output goes to a file
          ...(comm.kind === 'mpi' ? { tty: false } : {}),
        })
      : { log: () => undefined, close: () => undefined };
    if (writer) cleanCheckpointLeftovers(c.output_dir); // what a killed run left half-written
    const best = new BestCheckpoint();
    // the log's progress: plain lines, as a run without a terminal prints them
    const progress =
      log === null
        ? null
        : new ConsoleProgress({
            totalSteps: trainer.totalSteps,
            stream: log.sink,
            tty: false,
            everySteps: c.logging_steps,
          });
    trainer.onLog = (r) => {
      logger.log(r);
      progress?.log(r);
      best.observe(r);
      if (r.kind === 'checkpoint') log?.flush();
    };
    let result;
    // one process: SIGINT/SIGTERM stop at the step boundary with a checkpoint (cli/stop-on-signal.ts);
    // a data-parallel job's ranks keep the default action (`qtune launch` says what stays)
    const stop = comm.size === 1 ? stopOnSignal(signalLines(trainer, c.output_dir)) : null;
    try {
      if (resumeDir !== null) {
        trainer.loadCheckpoint(resumeDir); // a changed setting: a `resume:` line and a metrics.jsonl row
        out(`resumed from ${resumeDir} at step ${trainer.globalStep}`);
        if (writer) best.seed(c.output_dir, trainer.globalStep);
      }
      // graphs on this thread (offThread false): the worker hops' cost is not paid; the dashboard has its own worker
      result = await trainer.trainAsync({
        offThread: false,
        ...(stop === null ? {} : { signal: stop.signal }),
      });
    } catch (e) {
      await logger.close();
      throw e;
    } finally {
      stop?.dispose();
    }
    if (result.aborted && stop?.received != null) {
      progress?.close(result);
      await logger.close(result);
      const kept = path.join(c.output_dir, `checkpoint-${trainer.globalStep}`);
      out(
        `stopped by ${stop.received} at step ${trainer.globalStep} of ${trainer.totalSteps}; ${kept} holds it`,
      );
      out(`resume with: ${resumeCommand(argv, kept)}`);
      log?.flush();
      return signalExitCode(stop.received);
    }
    progress?.close(result);
    if (prepared.model.isSplit) for (const d of result.memory.devices) out(deviceMemoryLine(d));
    const chosen = c.load_best_model_at_end ? best.best : null;
    if (c.load_best_model_at_end)
      out(
        chosen === null
          ? 'load_best_model_at_end: no evaluated checkpoint; the outputs are the last step’s'
          : `load_best_model_at_end: the outputs are ${chosen.path}'s (step ${chosen.step}, validation loss ${chosen.loss.toFixed(4)}, the lowest of ${best.evaluations} evaluations)`,
      );
    // the best checkpoint's weights into the model, then saved as the run's outputs (as HF's Trainer)
    if (writer && chosen !== null && chosen.step !== trainer.globalStep) trainer.loadCheckpoint(chosen.path);
    const written = writer
      ? saveOutputs(trainer, c.output_dir, {
          adapterDType: c.adapter_dtype as AdapterDType,
          mlx: c.mlx_adapter,
        })
      : [];
    if (writer)
      written.push(
        ...writeRunFiles(c.output_dir, {
          config: c,
          result,
          totalSteps: trainer.totalSteps,
          best: chosen,
          adapter: trainer.lora === null ? null : trainer.lora.options.dora ? 'dora' : 'lora',
          quantization: prepared.trainType.quantization,
          tokenizer: prepared.tokenizer,
        }),
      );
    await logger.close(result);
    const first = result.losses.find(Number.isFinite);
    const last = result.losses.filter(Number.isFinite).at(-1);
    const val = result.evals.at(-1);
    out(
      `trained ${result.steps} steps (${c.train_type} on ${where}${comm.size > 1 ? ` × ${comm.size} ranks` : ''}): loss ${first?.toFixed(4) ?? '-'} → ${last?.toFixed(4) ?? '-'}` +
        (val === undefined
          ? ''
          : `, validation loss ${val.loss.toFixed(4)} (perplexity ${val.perplexity.toFixed(2)})`) +
        `, ${result.tokensPerS.toFixed(0)} tokens/s, peak RSS ${(result.memory.peakRssBytes / 2 ** 20).toFixed(0)} MiB`,
    );
    const profile = trainer.profile();
    if (profile !== null && writer) {
      const file = path.join(c.output_dir, 'profile.json');
      writeProfileTrace(file, profile, result.memory);
      written.push(file);
      for (const line of formatProfile(profile)) out(line);
    }
    const logged = log === null ? [] : [log.file];
    out(
      `wrote ${[...written, path.join(c.output_dir, 'metrics.jsonl'), path.join(c.output_dir, 'loss.png'), ...logged].join(', ')}`,
    );
    log?.flush();
    return 0;
  } finally {
    trainer.dispose();
  }
}
