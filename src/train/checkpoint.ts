/**
 * Checkpoints: one folder per saved step, `checkpoint-N`, holding the trainable weights
 * (`trainable.safetensors`), the optimizer's state tensors (`optimizer.safetensors`) and
 * `trainer_state.json`: everything else a run needs to go on exactly where it stopped, against one
 * typed schema ({@link CheckpointState}). A checkpoint is written into `checkpoint-N.tmp-PID` and
 * renamed into place, so a crash leaves the last one whole; {@link cleanCheckpointLeftovers} tidies
 * what killed runs leave behind. A resumed run is compared with what the checkpoint recorded
 * (resume.ts): impossible resumes are refused, changed settings reported, other data refused.
 *
 * @example
 * saveCheckpoint('out/checkpoint-10', run, progress);
 * const progress = loadCheckpoint('out/checkpoint-10', run); // the same run setup, or an error
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { validateAdapter, type LoraAdapterData, type LoraModule } from '../peft/lora-weights.js';
import {
  ConfigError,
  FileSystemError,
  FormatError,
  QtuneError,
  errorText,
  isSystemError,
  shownValue,
} from '../errors.js';
import type { Batches } from '../data/batches.js';
import type { DataFingerprint } from '../data/fingerprint.js';
import { writeFileAtomic } from '../io/atomic.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { configToJson, type LlamaConfig } from '../models/config.js';
import type { GradScaler } from '../optim/grad-scaler.js';
import type { Optimizer, OptimizerState } from '../optim/optimizer.js';
import type { Schedule, ScheduleName } from '../optim/schedule.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LoraLayers } from '../peft/lora.js';
import type { Precision } from './prepare.js';
import { compareWithCheckpoint, type SettingChange } from './resume.js';
import type { ResolvedTrainType } from './train-type.js';

const STATE_FILE = 'trainer_state.json';
export const CHECKPOINT_FORMAT = 1;

/** What identifies a run, stored in checkpoints so one from another model or setup is refused. */
export interface RunIdentity {
  model: string;
  trainType: string;
  adapter: string;
  quantization: string | null;
  params: { name: string; shape: number[] }[];
}

/** A hash of the model's config, to recognise checkpoints of the same base. */
export function modelId(config: LlamaConfig): string {
  return createHash('sha256')
    .update(JSON.stringify(configToJson(config)))
    .digest('hex')
    .slice(0, 16);
}

/** A LoRA/DoRA run's adapter settings, so that `qtune export` can write the adapter of a checkpoint. */
export interface CheckpointAdapter {
  base_model: string;
  rs_lora: boolean;
  dora: boolean;
  dropout: number;
  modules: { module: string; rank: number; alpha: number; in_features: number; out_features: number }[];
}

/** `trainer_state.json`: the run's progress and settings (the tensors are in the safetensors files). */
export interface CheckpointState {
  format: number;
  identity: RunIdentity;
  /** Optimizer steps taken. */
  step: number;
  /** The data order's position. */
  epoch: number;
  cursor: number;
  /** Micro-batches run (dropout masks derive from it). */
  micro_step: number;
  seed: number;
  /** fp16: the GradScaler's scale and good steps (1 and 0 otherwise). */
  loss_scale: number;
  good_steps: number;
  optimizer: OptimizerState;
  schedule: { name: ScheduleName; lr: number; total_steps: number; warmup_steps: number };
  batch_size: number;
  gradient_accumulation_steps: number;
  precision: Precision;
  adapter: CheckpointAdapter | null;
  /** More settings a resumed run is compared with (absent in checkpoints of earlier versions). */
  settings?: Record<string, string | number | boolean>;
  /** The training data's fingerprint (data/fingerprint.ts; absent in checkpoints of earlier versions). */
  data?: DataFingerprint;
}

/** Where a run stands: what a checkpoint restores, and rank 0 broadcasts to the others. */
export type Progress = Pick<
  CheckpointState,
  'step' | 'epoch' | 'cursor' | 'micro_step' | 'loss_scale' | 'good_steps'
>;
export const PROGRESS_KEYS = ['step', 'epoch', 'cursor', 'micro_step', 'loss_scale', 'good_steps'] as const;

/** The progress of a run at `step` (with `microStep` micro-batches run), its scaler and data position. */
export function progressOf(step: number, microStep: number, scaler: GradScaler, batches: Batches): Progress {
  const { epoch, cursor } = batches.position;
  const [loss_scale, good_steps] = [scaler.scale, scaler.goodSteps];
  return { step, epoch, cursor, micro_step: microStep, loss_scale, good_steps };
}

/** Puts the loss scaler and the data position back where `p` says (the trainer its step counts). */
export function restoreProgress(p: Progress, scaler: GradScaler, batches: Batches): void {
  [scaler.scale, scaler.goodSteps] = [p.loss_scale, p.good_steps];
  batches.position = { epoch: p.epoch, cursor: p.cursor };
}

/** What a checkpoint is written from, and what a resumed run must share with the one that wrote it. */
export interface RunSetup {
  identity: RunIdentity;
  seed: number;
  batchSize: number;
  accumulation: number;
  precision: Precision;
  /** Where the model came from: the adapter's base_model. */
  source: string;
  lora: LoraLayers | null;
  params: readonly Tensor[];
  optimizer: Optimizer;
  schedule: Schedule;
  totalSteps: number;
  /** The fp16 loss scaler (a resume in another precision starts from its scale, not the checkpoint's). */
  scaler: GradScaler;
  /** Settings recorded for a resume's comparison: max_grad_norm, context_length, padding, ... */
  settings: Record<string, string | number | boolean>;
  /** The training data's fingerprint (computed on first use). */
  data: () => DataFingerprint;
}

/** A run's identity: its model's config, train type and trainable tensors. */
export function runIdentity(
  config: LlamaConfig,
  t: ResolvedTrainType,
  params: readonly Tensor[],
): RunIdentity {
  return {
    model: modelId(config),
    trainType: t.name,
    adapter: t.adapter,
    quantization: t.quantization,
    params: params.map((p) => ({ name: p.name, shape: [...p.shape] })),
  };
}

/** Whether a process with this id is running (a checkpoint write of it may be in progress). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Tidies what killed runs left in an output folder. A checkpoint is written into
 * `checkpoint-N.tmp-PID` and renamed into place, so a run killed while writing leaves that folder
 * incomplete: it is removed (when process PID is no longer running). A run killed while replacing an
 * existing checkpoint-N may leave the complete old one as `checkpoint-N.old-PID`: it is renamed back
 * when checkpoint-N is missing, else removed. `resume_from_checkpoint: latest` only ever considers
 * `checkpoint-N` folders. Returns the names removed or restored.
 */
export function cleanCheckpointLeftovers(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const done: string[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^(checkpoint-\d+)\.(tmp|old)-(\d+)$/.exec(name);
    if (m === null || processAlive(Number(m[3]))) continue;
    const full = path.join(dir, name);
    const final = path.join(dir, m[1]!);
    if (m[2] === 'old' && !existsSync(final)) renameSync(full, final);
    else rmSync(full, { recursive: true, force: true });
    done.push(name);
  }
  return done;
}

/** The trainer_state.json of `run` at `progress`. */
function checkpointState(run: RunSetup, progress: Progress): CheckpointState {
  const { lora, optimizer, schedule } = run;
  return {
    format: CHECKPOINT_FORMAT,
    identity: run.identity,
    step: progress.step,
    epoch: progress.epoch,
    cursor: progress.cursor,
    micro_step: progress.micro_step,
    seed: run.seed,
    loss_scale: progress.loss_scale,
    good_steps: progress.good_steps,
    optimizer: optimizer.state(),
    schedule: {
      name: schedule.name,
      lr: schedule.lr,
      total_steps: run.totalSteps,
      warmup_steps: schedule.warmupSteps,
    },
    batch_size: run.batchSize,
    gradient_accumulation_steps: run.accumulation,
    precision: run.precision,
    adapter:
      lora === null
        ? null
        : {
            base_model: run.source,
            rs_lora: lora.options.rsLora,
            dora: lora.options.dora,
            dropout: lora.options.dropout,
            modules: [...lora.modules.values()].map((m) => ({
              module: m.module,
              rank: m.rank,
              alpha: m.alpha,
              in_features: m.inFeatures,
              out_features: m.outFeatures,
            })),
          },
    settings: run.settings,
    data: run.data(),
  };
}

/**
 * Writes a checkpoint of `run` at `progress` into `dir`: the trainable weights, the optimizer's state
 * tensors and trainer_state.json (a temporary folder renamed into place: a crash leaves the last one
 * whole). A failure (a full disk) removes the temporary folder and is one FileSystemError naming the
 * checkpoint and `lastGood`, the checkpoint still whole. Returns `dir`.
 */
export function saveCheckpoint(
  dir: string,
  run: RunSetup,
  progress: Progress,
  lastGood?: string | null,
): string {
  const { optimizer } = run;
  const state = checkpointState(run, progress);
  const tmp = `${dir}.tmp-${process.pid}`;
  try {
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    writeSafetensors(
      path.join(tmp, 'trainable.safetensors'),
      run.params.map((p) => ({
        name: p.name,
        shape: p.shape,
        dtype: 'F32' as const,
        data: p.store!.read(p),
      })),
    );
    writeSafetensors(
      path.join(tmp, 'optimizer.safetensors'),
      optimizer
        .stateTensors()
        .map((t) => ({ name: t.name, shape: t.shape, dtype: 'F32' as const, data: t.data })),
    );
    writeFileAtomic(path.join(tmp, STATE_FILE), [JSON.stringify(state, null, 2) + '\n']);
    const old = `${dir}.old-${process.pid}`;
    if (existsSync(dir)) renameSync(dir, old);
    renameSync(tmp, dir);
    rmSync(old, { recursive: true, force: true });
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw saveError(e, dir, lastGood ?? null);
  }
  return dir;
}

/** A failed checkpoint write as one line naming the checkpoint (not its temporary folder) and the last good one. */
function saveError(e: unknown, dir: string, lastGood: string | null): unknown {
  const code = e instanceof FileSystemError ? e.sysCode : isSystemError(e) ? e.code : null;
  if (code === null) return e;
  const problem = e instanceof FileSystemError ? e.problem : errorText(e);
  const full = code === 'ENOSPC' || code === 'EDQUOT';
  const why = full ? 'the disk is full' : problem.replaceAll(`${dir}.tmp-${process.pid}`, dir);
  const kept = lastGood === null ? '' : `; the last good checkpoint ${lastGood} is kept`;
  return new FileSystemError(dir, code, `checkpoint ${dir} cannot be written: ${why}${kept}`, {
    hint: `${full ? 'free disk space or choose an output_dir on another disk' : 'choose an output_dir you may write to'}${lastGood === null ? '' : ', then resume_from_checkpoint: latest'}`,
  });
}

/**
 * Reads a checkpoint of the same model, train type and trainable tensors back: the trainable weights
 * and the optimizer's state are written into `run`'s, and the progress is returned for the trainer
 * to go on from, with the settings that changed since (resume.ts). A checkpoint this run cannot
 * resume (another model, train type, LoRA rank, target modules, optimizer; other data unless
 * `ignoreDataChange`) is refused with a ResumeError; a damaged one with a FormatError.
 */
export function loadCheckpoint(
  dir: string,
  run: RunSetup,
  o: { ignoreDataChange?: boolean | undefined } = {},
): { progress: Progress; changes: SettingChange[] } {
  const file = stateFile(dir, 'point resume at a checkpoint-N folder of an output directory');
  const state = readState(file) as unknown as CheckpointState;
  const mine = checkpointState(run, state);
  const changes = compareWithCheckpoint(dir, state, mine, o);
  for (const k of ['step', 'epoch', 'cursor', 'micro_step', 'good_steps'] as const) {
    if (!(Number.isSafeInteger(state[k]) && state[k] >= 0))
      throw corrupt(file, `${k} is ${shownValue(state[k])}, not a whole number ≥ 0`);
  }
  if (!(Number.isFinite(state.loss_scale) && state.loss_scale > 0))
    throw corrupt(file, `loss_scale is ${shownValue(state.loss_scale)}, not a number > 0`);
  const optStep = (state.optimizer as { step?: unknown } | null)?.step;
  if (!(Number.isSafeInteger(optStep) && (optStep as number) >= 0))
    throw corrupt(file, `optimizer.step is ${shownValue(optStep)}, not a whole number ≥ 0`);
  const weights = SafetensorsFile.open(path.join(dir, 'trainable.safetensors'));
  const opt = SafetensorsFile.open(path.join(dir, 'optimizer.safetensors'));
  try {
    for (const p of run.params) p.store!.write(p, weights.readF32(p.name));
    run.optimizer.loadState(
      state.optimizer.step,
      opt.names().map((n) => ({ name: n, shape: opt.entry(n).shape, data: opt.readF32(n) })),
    );
  } finally {
    weights.close();
    opt.close();
  }
  const progress: Progress = { ...state };
  // another precision: the loss scale of this run's (an fp32 run's is 1, an fp16 run's its initial)
  if (state.precision !== run.precision)
    [progress.loss_scale, progress.good_steps] = [run.scaler.scale, run.scaler.goodSteps];
  return { progress, changes };
}

/** The LoRA/DoRA adapter saved in a checkpoint folder (for `qtune export`). */
export function checkpointAdapter(dir: string): LoraAdapterData {
  const file = stateFile(dir, 'give a checkpoint-N folder of an output directory');
  const state = readState(file);
  const a = state['adapter'] as Record<string, unknown> | null | undefined;
  if (a === undefined || a === null) {
    const type = (state['identity'] as { trainType?: unknown } | undefined)?.trainType;
    const saved = path.join(path.dirname(dir), 'model');
    throw new ConfigError(
      `checkpoint ${dir} is a ${typeof type === 'string' ? type : 'full'} fine-tune: it holds the model's own weights, not an adapter`,
      {
        hint: existsSync(path.join(saved, 'config.json'))
          ? `the run saved its model: pass --model ${saved} without --adapter`
          : `finish the run (qtune train ... --resume_from_checkpoint ${dir}), then pass its <output_dir>/model as --model without --adapter`,
        details: { field: 'adapter', value: dir },
      },
    );
  }
  const list = typeof a === 'object' ? a['modules'] : undefined;
  if (!Array.isArray(list) || list.some((m) => m === null || typeof m !== 'object'))
    throw corrupt(file, 'adapter.modules is not a list of modules');
  const entries = list as Record<string, unknown>[];
  for (const [k, kind] of [
    ['base_model', 'string'],
    ['rs_lora', 'boolean'],
    ['dora', 'boolean'],
    ['dropout', 'number'],
  ] as const) {
    if (typeof a[k] !== kind) throw corrupt(file, `adapter.${k} is ${shownValue(a[k])}, not a ${kind}`);
  }
  const adapter = a as unknown as CheckpointAdapter;
  const weights = SafetensorsFile.open(path.join(dir, 'trainable.safetensors'));
  try {
    const modules = new Map<string, LoraModule>();
    for (const m of entries) {
      const name = m['module'];
      if (typeof name !== 'string' || name === '')
        throw corrupt(file, `adapter module name ${shownValue(name)} is not a name`);
      modules.set(name, {
        rank: m['rank'] as number,
        alpha: m['alpha'] as number,
        inFeatures: m['in_features'] as number,
        outFeatures: m['out_features'] as number,
        A: weights.readF32(`${name}.lora_A`),
        B: weights.readF32(`${name}.lora_B`),
        ...(adapter.dora ? { magnitude: weights.readF32(`${name}.lora_magnitude`) } : {}),
      });
    }
    const data: LoraAdapterData = {
      baseModel: adapter.base_model,
      rsLora: adapter.rs_lora,
      dora: adapter.dora,
      dropout: adapter.dropout,
      targetModules: [...new Set([...modules.keys()].map((m) => m.split('.').pop()!))],
      modules,
    };
    try {
      validateAdapter(data); // ranks, alphas and tensor sizes agree
    } catch (e) {
      throw e instanceof QtuneError ? corrupt(file, e.problem) : e;
    }
    return data;
  } finally {
    weights.close();
  }
}

/** `dir`'s trainer_state.json, which must exist. */
function stateFile(dir: string, hint: string): string {
  const file = path.join(dir, STATE_FILE);
  if (!existsSync(file))
    throw new QtuneError('NOT_FOUND', `${dir} is not a qtune checkpoint (no ${STATE_FILE})`, { hint });
  return file;
}

/** An error for a checkpoint file that is not what qtune wrote. */
function corrupt(file: string, what: string): FormatError {
  return new FormatError(file, what, { hint: 'the checkpoint is corrupt; use an earlier checkpoint-N' });
}

/** A checkpoint's trainer_state.json, parsed: a JSON object. */
function readState(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw corrupt(file, `is not valid JSON (${errorText(e)})`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw corrupt(file, 'is not a JSON object');
  return v as Record<string, unknown>;
}
