/**
 * The dataset entry point: read records (a local file or a Hub dataset), shuffle them by seed, split
 * off validation records, tokenize them in a format and make equal-length examples (padded, or
 * packed) for the Trainer.
 *
 * @example
 * const tok = Tokenizer.fromFolder('tiny-model');
 * const data = await loadDataset({ path: 'data/style.jsonl', format: 'alpaca', val_size: 0.1 }, tok, 256);
 * const trainer = await Trainer.create('tiny-model', data, { trainType: 'lora', maxSteps: 100 });
 */
import { ConfigError, FormatError, errorText } from '../errors.js';
import type { HubOptions } from '../io/hub.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { seededUniform } from '../util/random.js';
import type { Example, TrainData } from './example.js';
import { DATASET_FORMATS, SFT_FORMATS, dummyRecords, recordSample, type DatasetFormat } from './formats.js';
import { packSamples } from './packing.js';
import { preferenceSamples } from './preference.js';
import { loadRecords, type DataRecord } from './records.js';
import { checkChatTemplateTokens, eosId, padId, padNotice, toExample, type Sample } from './tokenize.js';

/**
 * Most characters of text in one record. The tokenizer slows down badly on long records (a 1 MiB
 * word took 35 s) and fails inside at about 200 MB; no context length needs this much text.
 */
export const MAX_RECORD_CHARS = 4 * 2 ** 20;

/** Characters of all the strings in a JSON value. */
function textLength(v: unknown): number {
  if (typeof v === 'string') return v.length;
  if (Array.isArray(v)) return v.reduce((n: number, x) => n + textLength(x), 0);
  if (v !== null && typeof v === 'object')
    return Object.values(v).reduce((n: number, x) => n + textLength(x), 0);
  return 0;
}

/**
 * A record's sample, refused with a FormatError naming its file and line when its text is too large
 * for the tokenizer, or holds a token the model has no embedding row for.
 */
function checkedSample(tok: Tokenizer, format: DatasetFormat, r: DataRecord): Sample {
  const chars = textLength(r.value);
  if (chars > MAX_RECORD_CHARS)
    throw new FormatError(
      r.file,
      `line ${r.line}: the record holds ${chars} characters of text, more than the ${MAX_RECORD_CHARS} qtune tokenizes`,
      {
        hint: 'split it into smaller records (examples are cut to context_length tokens anyway)',
        details: { line: r.line, chars },
      },
    );
  let s: Sample;
  try {
    s = recordSample(tok, format, r);
  } catch (e) {
    if (e instanceof RangeError)
      throw new FormatError(
        r.file,
        `line ${r.line}: the record is too large for the tokenizer (${errorText(e)})`,
        {
          hint: 'split it into smaller records',
          details: { line: r.line },
        },
      );
    throw e;
  }
  const rows = tok.modelVocabSize;
  const bad = rows === null ? undefined : s.tokens.find((id) => id >= rows);
  if (bad !== undefined)
    throw new FormatError(
      r.file,
      `line ${r.line}: the text holds token ${tok.describeToken(bad)}, which has no row in the model's ${rows} embeddings`,
      {
        hint: 'remove that token from the data, or resize the embeddings to the tokenizer',
        details: { line: r.line, id: bad, vocabSize: rows },
      },
    );
  return s;
}

/** Where a dataset comes from and how it becomes examples; names as in the YAML config. */
export interface DatasetConfig {
  /** A `.jsonl` / `.json` file, or a Hub dataset id `org/name`. Not needed for `dummy`. */
  path?: string;
  /** How records become prompt and response: see {@link DATASET_FORMATS} and docs/data.md. */
  format: string;
  /** Hub datasets: the split whose files to read (default `train`). */
  split?: string;
  /** Hub datasets: one file of the repository to read instead of a split's. */
  file?: string;
  /** Hub datasets: branch, tag or commit (default `main`). */
  revision?: string;
  /** Validation records split off the (shuffled) records: a fraction in (0, 1) or a count ≥ 1 (0: none). */
  val_size?: number;
  /** Validation records from a separate file (same format) instead of val_size. */
  val_path?: string;
  /** Concatenate samples into full sequences with a block-diagonal attention mask. Default false. */
  packing?: boolean;
  /** Shuffle the records by `seed` before splitting. Default true. */
  shuffle?: boolean;
  /** Default 42. */
  seed?: number;
  /** Use at most this many records (after shuffling); for `dummy`, how many to make (default 64). */
  max_samples?: number;
}

/** A checked {@link DatasetConfig} with its defaults filled in. */
export interface ResolvedDatasetConfig extends Omit<
  DatasetConfig,
  'format' | 'split' | 'packing' | 'shuffle' | 'seed'
> {
  format: DatasetFormat;
  split: string;
  packing: boolean;
  shuffle: boolean;
  seed: number;
}

const CONFIG_FIELDS = [
  'path',
  'format',
  'split',
  'file',
  'revision',
  'val_size',
  'val_path',
  'packing',
  'shuffle',
  'seed',
  'max_samples',
] as const;

function fail(field: string, value: unknown, must: string, hint: string): ConfigError {
  return new ConfigError(`dataset.${field}: ${JSON.stringify(value)} ${must}`, {
    hint,
    details: { field, value },
  });
}

/** Checks a dataset config and fills the defaults; errors name the field, the value and what is allowed. */
export function validateDatasetConfig(c: DatasetConfig): ResolvedDatasetConfig {
  for (const k of Object.keys(c))
    if (!(CONFIG_FIELDS as readonly string[]).includes(k))
      throw fail(
        k,
        (c as unknown as Record<string, unknown>)[k],
        'is not a dataset setting',
        `use ${CONFIG_FIELDS.join(', ')}`,
      );
  if (!DATASET_FORMATS.includes(c.format as DatasetFormat))
    throw fail('format', c.format, 'is not a dataset format', `use one of ${SFT_FORMATS.join(', ')}`);
  const format = c.format as DatasetFormat;
  if (format !== 'dummy' && (typeof c.path !== 'string' || c.path === ''))
    throw fail(
      'path',
      c.path,
      'is not a data file or Hub dataset id',
      'give a .jsonl/.json file or org/name',
    );
  for (const k of ['split', 'file', 'revision', 'val_path'] as const)
    if (c[k] !== undefined && (typeof c[k] !== 'string' || c[k] === ''))
      throw fail(k, c[k], 'must be a non-empty string', `remove ${k} or set it to a name`);
  const v = c.val_size;
  if (v !== undefined && !(typeof v === 'number' && ((v >= 0 && v < 1) || (Number.isInteger(v) && v >= 1))))
    throw fail(
      'val_size',
      v,
      'must be 0 (no split), a fraction in (0, 1) or a whole count ≥ 1',
      'e.g. 0.1 or 20',
    );
  if (v !== undefined && v > 0 && c.val_path !== undefined)
    throw fail('val_size', v, 'and val_path both give validation data', 'set one of them');
  if (c.max_samples !== undefined && !(Number.isInteger(c.max_samples) && c.max_samples >= 1))
    throw fail('max_samples', c.max_samples, 'must be a whole number ≥ 1', 'e.g. 1000');
  if (c.seed !== undefined && !Number.isInteger(c.seed))
    throw fail('seed', c.seed, 'must be an integer', 'e.g. 42');
  for (const k of ['packing', 'shuffle'] as const)
    if (c[k] !== undefined && typeof c[k] !== 'boolean')
      throw fail(k, c[k], 'must be true or false', `set ${k}: true or false`);
  return {
    ...c,
    format,
    split: c.split ?? 'train',
    packing: c.packing ?? false,
    shuffle: c.shuffle ?? true,
    seed: c.seed ?? 42,
  };
}

/** A seeded Fisher–Yates shuffle: the same order for the same seed. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  const rand = seededUniform(seed >>> 0);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** How many of `n` records val_size takes: a fraction rounds to at least 1, a count is itself. */
export function validationCount(n: number, valSize: number): number {
  const k = valSize < 1 ? Math.max(1, Math.round(n * valSize)) : valSize;
  if (k >= n) throw fail('val_size', valSize, `leaves no training records of ${n}`, 'use a smaller val_size');
  return k;
}

/**
 * Tokenizes records in a format into examples of `contextLength` positions: each sample truncated
 * and padded on its own, or (packing) concatenated with others. Samples left with nothing to learn
 * (their targets all cut off by truncation) are dropped.
 */
export function recordsToExamples(
  records: readonly DataRecord[],
  format: DatasetFormat,
  tokenizer: Tokenizer,
  contextLength: number,
  packing: boolean,
): Example[] {
  const pad = padId(tokenizer);
  if (format === 'preference') return preferenceExamples(records, tokenizer, contextLength, pad);
  const samples = records
    .map((r) => checkedSample(tokenizer, format, r))
    .filter((s) => s.targets.slice(1, contextLength + 1).some((t) => t));
  return packing
    ? packSamples(samples, contextLength, pad)
    : samples.map((s) => toExample(s, contextLength, pad));
}

/** Preference records as chosen examples carrying their rejected ones (pairs with nothing to learn dropped). */
function preferenceExamples(
  records: readonly DataRecord[],
  tokenizer: Tokenizer,
  contextLength: number,
  pad: number,
): Example[] {
  const learns = (s: Sample) => s.targets.slice(1, contextLength + 1).some((t) => t);
  return records.flatMap((r) => {
    checkedSample(tokenizer, 'preference', r); // the size check and the record's errors
    const { chosen, rejected } = preferenceSamples(tokenizer, r);
    if (!learns(chosen) || !learns(rejected)) return [];
    return [{ ...toExample(chosen, contextLength, pad), rejected: toExample(rejected, contextLength, pad) }];
  });
}

/**
 * Runs `make`; when it throws on a bad record, throws the error of the first bad record in file
 * order instead (records are shuffled before they are read, so the first to fail is not line 1).
 */
function firstBadInFileOrder<T>(
  make: () => T,
  inFileOrder: readonly DataRecord[],
  used: ReadonlySet<DataRecord>,
  check: (r: DataRecord) => unknown,
): T {
  try {
    return make();
  } catch (e) {
    if (!(e instanceof FormatError)) throw e;
    for (const r of inFileOrder) if (used.has(r)) check(r);
    throw e;
  }
}

/**
 * Reads, shuffles, splits and tokenizes a dataset into the Trainer's {@link TrainData}: every
 * example `contextLength` positions long, labels -100 where no loss is counted.
 */
export async function loadDataset(
  config: DatasetConfig,
  tokenizer: Tokenizer,
  contextLength: number,
  o: { hub?: HubOptions; notice?: (line: string) => void } = {},
): Promise<TrainData> {
  const c = validateDatasetConfig(config);
  if (!(Number.isInteger(contextLength) && contextLength >= 2))
    throw new ConfigError(`context_length: ${contextLength} must be a whole number ≥ 2`, {
      hint: 'e.g. 512',
    });
  eosId(tokenizer);
  if (c.format === 'chat') checkChatTemplateTokens(tokenizer, 'dataset_format chat');
  const note = padNotice(tokenizer);
  if (note !== null) (o.notice ?? ((m: string) => process.stderr.write(`qtune: ${m}\n`)))(note);
  const hub = {
    split: c.split,
    ...(c.file === undefined ? {} : { file: c.file }),
    hub: { ...o.hub, ...(c.revision === undefined ? {} : { revision: c.revision }) },
  };
  let records =
    c.format === 'dummy' ? dummyRecords(c.max_samples ?? 64, c.seed) : await loadRecords(c.path!, hub);
  if (records.length === 0)
    throw new ConfigError(`dataset.path: ${c.path} has no records`, {
      hint: 'give a file with at least one record',
    });
  const inFileOrder = records;
  if (c.shuffle) records = shuffled(records, c.seed);
  if (c.max_samples !== undefined) records = records.slice(0, c.max_samples);
  let validation: DataRecord[] = [];
  if (c.val_size !== undefined && c.val_size > 0) {
    const k = validationCount(records.length, c.val_size);
    validation = records.slice(0, k);
    records = records.slice(k);
  } else if (c.val_path !== undefined) {
    validation = await loadRecords(c.val_path, hub);
  }
  const train = firstBadInFileOrder(
    () => recordsToExamples(records, c.format, tokenizer, contextLength, c.packing),
    inFileOrder,
    new Set(records),
    (r) => checkedSample(tokenizer, c.format, r),
  );
  if (train.length === 0)
    throw new ConfigError(
      `dataset: no training record keeps a target token within context_length ${contextLength}`,
      { hint: 'raise context_length or shorten the prompts' },
    );
  const val = recordsToExamples(validation, c.format, tokenizer, contextLength, c.packing);
  const source = c.format === 'dummy' ? 'dummy' : c.path!;
  return val.length === 0 ? { train, source } : { train, validation: val, source };
}
