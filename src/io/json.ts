/** JSON files that must hold an object (config.json, tokenizer.json, ...), read with typed errors. */
import { readFileSync } from 'node:fs';
import { FormatError, errorText } from '../errors.js';

/** The object in a JSON file; a FormatError naming the file when it is not valid JSON or not an object. */
export function readJsonObject(file: string, hint?: string): Record<string, unknown> {
  const o = hint === undefined ? {} : { hint };
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new FormatError(file, `is not valid JSON (${errorText(e)})`, o);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new FormatError(
      file,
      `holds ${v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v}, not a JSON object`,
      o,
    );
  return v as Record<string, unknown>;
}
