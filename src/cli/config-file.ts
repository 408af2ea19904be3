/**
 * A config file as `qtune train` reads it: YAML with one clear line for a syntax error, and the
 * byte sizes its options take (`200MiB`, `1.5GB`).
 */
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { FormatError, errorText, fileSystemError } from '../errors.js';
import { checkFile } from '../io/folders.js';

/** Reads a YAML config file; a syntax error names the file and line. */
export function readConfigFile(file: string): Record<string, unknown> {
  checkFile('config', file, 'give the path of a YAML config file');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw fileSystemError(e, 'config', file);
  }
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const line = text.slice(0, e.pos[0]).split('\n').length;
    throw new FormatError(file, `line ${line}: ${e.message.split('\n')[0]!}`, {
      hint: 'fix the YAML syntax',
    });
  }
  let value: unknown;
  try {
    // aliases are resolved here: one that names no anchor, or too many (an alias bomb), fails
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new FormatError(file, errorText(e), {
      hint: 'fix the YAML anchors (&name) and aliases (*name)',
    });
  }
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value))
    throw new FormatError(file, 'must be a mapping of option: value', { hint: 'see `qtune train --help`' });
  return value as Record<string, unknown>;
}

const UNITS: Record<string, number> = {
  b: 1,
  k: 2 ** 10,
  kib: 2 ** 10,
  kb: 1e3,
  m: 2 ** 20,
  mib: 2 ** 20,
  mb: 1e6,
  g: 2 ** 30,
  gib: 2 ** 30,
  gb: 1e9,
  t: 2 ** 40,
  tib: 2 ** 40,
  tb: 1e12,
};

/** `200MiB`, `1.5GB`, `512M` or a number of bytes; NaN when it is none of these. */
export function parseSize(v: unknown): number {
  if (typeof v === 'number') return v > 0 ? v : NaN;
  if (typeof v !== 'string') return NaN;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  if (m === null) return NaN;
  const unit = UNITS[(m[2] ?? '').toLowerCase() || 'b'];
  const n = Number(m[1]) * (unit ?? NaN);
  return n > 0 ? Math.round(n) : NaN;
}
