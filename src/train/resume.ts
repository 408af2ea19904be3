/**
 * What a resumed run is checked against: the settings and the data its checkpoint recorded
 * (trainer_state.json), compared with this run's. A setting the saved tensors depend on makes the
 * resume impossible and is refused with a {@link ResumeError} naming it and both values: the model,
 * the train type (and quantization), the LoRA rank and target modules (for full and llama_pro: the
 * trainable tensors), the optimizer. Other training data ({@link DataFingerprint}) is refused too,
 * unless the run says to go on with it (`resume_ignore_data_change`). Every other setting that
 * differs (lr, schedule, max_steps, batch size, gradient accumulation, seed, precision, LoRA alpha and
 * dropout, context_length, ...) is one {@link SettingChange}: the run goes on with its new value.
 * A checkpoint written before a setting was recorded is compared on what it has.
 *
 * @example
 * const changes = compareWithCheckpoint('out/checkpoint-10', saved, mine, { ignoreDataChange: false });
 * changes.map((c) => c.line); // ['lr changed 2e-4 -> 1e-4']
 */
import { ResumeError, shownValue } from '../errors.js';
import { describeData, type DataFingerprint } from '../data/fingerprint.js';

/** A setting that differs between the checkpoint and the resumed run, which goes on with its own. */
export interface SettingChange {
  /** The option's name, as `qtune train` spells it: `lr`, `batch_size`, `dataset`, ... */
  setting: string;
  /** The values as the line shows them. */
  checkpoint: string;
  run: string;
  /** `lr changed 2e-4 -> 1e-4` */
  line: string;
}

/** `o[k1][k2]...`, or undefined where a level is missing or not an object (a damaged file). */
function at(o: unknown, ...keys: string[]): unknown {
  for (const k of keys) {
    if (o === null || typeof o !== 'object') return undefined;
    o = (o as Record<string, unknown>)[k];
  }
  return o;
}

/** A value as a line shows it: 2e-4, 0.01, cosine, true. */
export function shownSetting(v: unknown): string {
  if (typeof v === 'number' && v !== 0 && Math.abs(v) < 1e-3) return v.toExponential();
  return typeof v === 'string' ? v : shownValue(v);
}

/** The LoRA modules' `key` values (rank, alpha), distinct and sorted: `8`, or `8,16` under patterns. */
function perModule(s: unknown, key: string): string | undefined {
  const list = at(s, 'adapter', 'modules');
  if (!Array.isArray(list)) return undefined;
  const values = [...new Set(list.map((m) => shownSetting(at(m, key))))];
  return values.sort((a, b) => Number(a) - Number(b) || a.localeCompare(b)).join(',');
}

/** The LoRA target modules (the last part of each module's name), distinct and sorted. */
function targets(s: unknown): string | undefined {
  const list = at(s, 'adapter', 'modules');
  if (!Array.isArray(list)) return undefined;
  return [...new Set(list.map((m) => String(at(m, 'module')).split('.').pop()))].sort().join(',');
}

function trainType(s: unknown): string {
  const q = at(s, 'identity', 'quantization');
  return `${String(at(s, 'identity', 'trainType'))}${typeof q === 'string' ? ` over ${q}` : ''}`;
}

/** The settings a run may change, by qtune train's option names (optimizer hyperparameters by theirs). */
function changeable(s: unknown): [string, unknown][] {
  const out: [string, unknown][] = [
    ['lr', at(s, 'schedule', 'lr')],
    ['lr_scheduler', at(s, 'schedule', 'name')],
    ['warmup_steps', at(s, 'schedule', 'warmup_steps')],
    ['max_steps', at(s, 'schedule', 'total_steps')],
    ['batch_size', at(s, 'batch_size')],
    ['gradient_accumulation_steps', at(s, 'gradient_accumulation_steps')],
    ['seed', at(s, 'seed')],
    ['precision', at(s, 'precision')],
    ['lora_alpha', perModule(s, 'alpha')],
    ['lora_dropout', at(s, 'adapter', 'dropout')],
    ['use_rslora', at(s, 'adapter', 'rs_lora')],
  ];
  const opt = at(s, 'optimizer');
  if (opt !== null && typeof opt === 'object')
    for (const [k, v] of Object.entries(opt)) if (!['name', 'step', 'lr'].includes(k)) out.push([k, v]);
  const more = at(s, 'settings');
  if (more !== null && typeof more === 'object') out.push(...Object.entries(more));
  return out;
}

/** Why one file can give other examples. */
const SAME_FILE =
  ' (the same file gives other examples when it was edited, or when dataset_format, the chat template, the tokenizer, max_samples, val_size, packing, context_length or the seed that draws the split changed)';

/** The data fingerprint a checkpoint recorded, or null (written before qtune recorded one). */
function savedData(s: unknown): DataFingerprint | null {
  const fingerprint = at(s, 'data', 'fingerprint');
  if (typeof fingerprint !== 'string') return null;
  const [examples, source] = [at(s, 'data', 'examples'), at(s, 'data', 'source')];
  return {
    fingerprint,
    examples: typeof examples === 'number' ? examples : NaN,
    ...(typeof source === 'string' ? { source } : {}),
  };
}

/**
 * Compares checkpoint `dir`'s state `saved` (as read from its trainer_state.json) with the state this
 * run would write (`mine`). Throws a {@link ResumeError} for a setting that makes the resume
 * impossible and for other data (unless `ignoreDataChange`); returns the settings that changed.
 */
export function compareWithCheckpoint(
  dir: string,
  saved: unknown,
  mine: unknown,
  o: { ignoreDataChange?: boolean | undefined },
): SettingChange[] {
  const refuse = (setting: string, a: string, b: string, what: string, hint?: string): never => {
    throw new ResumeError(setting, { checkpoint: a, run: b }, `checkpoint ${dir} was written for ${what}`, {
      hint: hint ?? 'resume with the model and settings that wrote it, or start a new run',
    });
  };
  const [modelA, modelB] = [String(at(saved, 'identity', 'model')), String(at(mine, 'identity', 'model'))];
  if (modelA !== modelB)
    refuse('model', modelA, modelB, `another model (config ${modelA}, this one is ${modelB})`);
  const [typeA, typeB] = [trainType(saved), trainType(mine)];
  if (typeA !== typeB) refuse('train_type', typeA, typeB, `train type ${typeA}, this run is ${typeB}`);
  for (const [setting, a, b] of [
    ['lora_rank', perModule(saved, 'rank'), perModule(mine, 'rank')],
    ['lora_target_modules', targets(saved), targets(mine)],
  ] as const)
    if (a !== undefined && b !== undefined && a !== b)
      refuse(setting, a, b, `other trainable tensors: ${setting} ${a}, this run has ${b}`);
  const [paramsA, paramsB] = [at(saved, 'identity', 'params'), at(mine, 'identity', 'params')];
  if (JSON.stringify(paramsA) !== JSON.stringify(paramsB)) {
    const names = (p: unknown) => (Array.isArray(p) ? p.map((t) => shownValue(at(t, 'name'))) : []);
    const [na, nb] = [names(paramsA), names(paramsB)];
    const first = na.find((n, i) => n !== nb[i]) ?? nb[na.length] ?? 'a tensor shape';
    refuse(
      'trainable_tensors',
      `${na.length} tensors`,
      `${nb.length} tensors`,
      `other trainable tensors (LoRA rank or target modules differ): ${na.length} tensors, this run has ${nb.length} (first difference: ${first})`,
    );
  }
  const [optA, optB] = [
    shownSetting(at(saved, 'optimizer', 'name')),
    shownSetting(at(mine, 'optimizer', 'name')),
  ];
  if (optA !== optB)
    refuse(
      'optimizer',
      optA,
      optB,
      `optimizer ${optA}, this run has ${optB}`,
      `its optimizer state cannot be carried over: resume with optimizer ${optA}, or start a new run`,
    );

  const changes: SettingChange[] = [];
  const add = (setting: string, a: string, b: string, note = ''): void => {
    changes.push({ setting, checkpoint: a, run: b, line: `${setting} changed ${a} -> ${b}${note}` });
  };
  const now = new Map(changeable(mine));
  for (const [setting, v] of changeable(saved)) {
    if (v === undefined || !now.has(setting)) continue; // not recorded by the checkpoint, or not in this run
    const [a, b] = [shownSetting(v), shownSetting(now.get(setting))];
    if (a !== b) add(setting, a, b);
  }
  const [dataA, dataB] = [savedData(saved), savedData(mine)];
  if (dataA !== null && dataB !== null) {
    const [a, b] = [describeData(dataA), describeData(dataB)];
    if (dataA.fingerprint !== dataB.fingerprint) {
      if (o.ignoreDataChange !== true)
        throw new ResumeError(
          'dataset',
          { checkpoint: a, run: b },
          `checkpoint ${dir} was trained on other data: ${a}; this run has ${b}${dataA.source !== undefined && dataA.source === dataB.source ? SAME_FILE : ''}`,
          {
            hint: 'resume with the data it was trained on, or set resume_ignore_data_change: true (Trainer option resumeIgnoreDataChange) to go on with this data',
          },
        );
      add('dataset', a, b, '; going on with the new data (resume_ignore_data_change)');
    } else if (dataA.source !== dataB.source) add('dataset', a, b, ' (the same examples)');
  }
  return changes;
}
