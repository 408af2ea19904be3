/** Reading a `qtune train` YAML config file: one clear line for a syntax error, with its line. */
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
