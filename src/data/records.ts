/**
 * Reading dataset records: a local `.jsonl` file (one JSON object a line) or `.json` file (an array
 * of objects), or the JSON/JSONL files of a Hugging Face Hub dataset repository, downloaded into the
 * HF cache. Every record remembers its file and line, so a bad one is reported as `file:line`.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  ConfigError,
  FormatError,
  QtuneError,
  errorText,
  fileSystemError,
  isSystemError,
} from '../errors.js';
import { checkFile } from '../io/folders.js';
import { downloadDataset, type HubOptions } from '../io/hub.js';

/** One record of a dataset file and where it came from. */
export interface DataRecord {
  value: Record<string, unknown>;
  file: string;
  /** 1-based line of the file where the record starts. */
  line: number;
}

const DATA_EXT = /\.(jsonl|json)$/;

/** Whether `p` names a local data file (it exists, or it ends in .json / .jsonl). */
export function isLocalDataPath(p: string): boolean {
  return existsSync(p) || DATA_EXT.test(p);
}

function describe(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** Reads the records of a local `.json` or `.jsonl` file. */
export function readRecords(file: string): DataRecord[] {
  if (!existsSync(file))
    throw new QtuneError('NOT_FOUND', `dataset file ${file} does not exist`, {
      hint: 'check the path, or give a Hub dataset id (org/name)',
    });
  checkFile('dataset', file, 'give a .jsonl file (one JSON object a line) or a .json file');
  let text: string;
  try {
    text = utf8Text(file, readFileSync(file));
  } catch (e) {
    if (e instanceof QtuneError) throw e;
    throw e instanceof Error && !isSystemError(e)
      ? new FormatError(file, `cannot be read as text (${errorText(e)})`, {
          hint: 'split it into smaller files',
        })
      : fileSystemError(e, 'dataset', file);
  }
  if (file.endsWith('.jsonl')) return readJsonl(file, text);
  if (file.endsWith('.json')) return readJsonArray(file, text);
  throw new ConfigError(`path: ${file} is neither .json nor .jsonl`, {
    hint: 'give a .jsonl file (one JSON object a line) or a .json file (an array of objects)',
  });
}

/** The text of a UTF-8 file; invalid UTF-8 is a FormatError naming the first line that holds it. */
function utf8Text(file: string, bytes: Buffer): string {
  const strict = new TextDecoder('utf-8', { fatal: true });
  try {
    return strict.decode(bytes);
  } catch (e) {
    if (!(e instanceof TypeError)) throw e; // too large for one string: reported by the caller
  }
  let start = 0;
  for (let line = 1; ; line++) {
    const nl = bytes.indexOf(0x0a, start);
    const end = nl < 0 ? bytes.length : nl;
    try {
      strict.decode(bytes.subarray(start, end));
    } catch {
      throw new FormatError(file, `line ${line}: not valid UTF-8 text`, {
        hint: 'save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)',
        details: { line },
      });
    }
    if (nl < 0) break;
    start = nl + 1;
  }
  throw new FormatError(file, 'not valid UTF-8 text', { hint: 'save the file as UTF-8' });
}

function readJsonl(file: string, text: string): DataRecord[] {
  const out: DataRecord[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const lineText = raw.trim();
    if (lineText === '') return;
    let value: unknown;
    try {
      value = JSON.parse(lineText);
    } catch (e) {
      throw new FormatError(file, `line ${i + 1}: not valid JSON (${errorText(e)})`, {
        hint: 'each line of a .jsonl file must be one JSON object',
        details: { line: i + 1 },
      });
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value))
      throw new FormatError(file, `line ${i + 1}: a record must be a JSON object, got ${describe(value)}`, {
        hint: 'write one {"field": ...} object a line',
        details: { line: i + 1 },
      });
    out.push({ value: value as Record<string, unknown>, file, line: i + 1 });
  });
  return out;
}

function readJsonArray(file: string, text: string): DataRecord[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const at = /at position (\d+)/.exec(errorText(e));
    const where = at === null ? '' : `line ${text.slice(0, Number(at[1])).split('\n').length}: `;
    throw new FormatError(file, `${where}not valid JSON (${errorText(e)})`, {
      hint: 'a .json dataset is one array of objects; use .jsonl for one object a line',
    });
  }
  if (!Array.isArray(value))
    throw new FormatError(file, `a .json dataset must be an array of records, got ${describe(value)}`, {
      hint: 'wrap the records in [ ... ], or write them one a line as .jsonl',
    });
  const lines = elementLines(text);
  return value.map((v: unknown, i) => {
    const line = lines[i] ?? 1;
    if (v === null || typeof v !== 'object' || Array.isArray(v))
      throw new FormatError(file, `line ${line}: record ${i} must be a JSON object, got ${describe(v)}`, {
        hint: 'every element of the array must be a {"field": ...} object',
        details: { line, index: i },
      });
    return { value: v as Record<string, unknown>, file, line };
  });
}

/** The 1-based line where each element of a top-level JSON array starts (the text is valid JSON). */
function elementLines(text: string): number[] {
  const out: number[] = [];
  let line = 1;
  let depth = 0;
  let inString = false;
  let expectValue = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\n') line++;
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === ' ' || c === '\t' || c === '\r' || c === '\n') continue;
    if (depth === 1 && expectValue && c !== ']') {
      out.push(line);
      expectValue = false;
    }
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') {
      depth++;
      if (depth === 1) expectValue = true;
    } else if (c === ']' || c === '}') depth--;
    else if (c === ',' && depth === 1) expectValue = true;
  }
  return out;
}

/**
 * The JSON/JSONL files of a Hub dataset repository for a split: `file` when given, else the files
 * whose path names the split (`train.jsonl`, `data/train-00000.json`, `sql_test.json`), else — for
 * the `train` split — every JSON/JSONL file (a repository of one file, as b-mc2/sql-create-context).
 */
export function pickSplitFiles(repo: string, all: string[], split: string, file?: string): string[] {
  const data = all.filter((f) => DATA_EXT.test(f)).sort();
  if (file !== undefined) {
    if (!all.includes(file))
      throw new QtuneError('NOT_FOUND', `dataset ${repo} has no file ${file}`, {
        hint: `its JSON files: ${data.join(', ') || 'none'}`,
      });
    return [file];
  }
  if (data.length === 0)
    throw new QtuneError('NOT_FOUND', `dataset ${repo} has no .json or .jsonl files`, {
      hint: 'qtune reads JSON/JSONL datasets; convert Parquet or CSV files to JSONL first',
    });
  const word = new RegExp(`(^|[/_.-])${split.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}([/_.-]|$)`);
  const matching = data.filter((f) => word.test(f));
  if (matching.length > 0) return matching;
  if (split === 'train') return data;
  throw new QtuneError('NOT_FOUND', `dataset ${repo} has no file for split "${split}"`, {
    hint: `its JSON files: ${data.join(', ')}; pick one with file`,
  });
}

/**
 * The records of a dataset: a local file, or a Hub dataset id (`org/name`) whose JSON/JSONL files of
 * `split` (or the one `file`) are downloaded into the HF cache first.
 */
export async function loadRecords(
  source: string,
  o: { split?: string; file?: string; hub?: HubOptions } = {},
): Promise<DataRecord[]> {
  if (isLocalDataPath(source)) return readRecords(source);
  const { snapshot, files } = await downloadDataset(
    source,
    (all) => pickSplitFiles(source, all, o.split ?? 'train', o.file),
    o.hub ?? {},
  );
  return files.flatMap((f) => readRecords(path.join(snapshot, f)));
}
