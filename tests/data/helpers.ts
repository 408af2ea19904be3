/** Shared by the data tests: tiny model folders with real tokenizers, made once per process. */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { Tokenizer } from '../../src/io/tokenizer.js';
import { createTinyModel, type TinyModelOptions, type TinyTokenizer } from '../../src/models/tiny.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-data-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const tokenizers = new Map<string, Tokenizer>();

/** A tiny model folder (small shapes unless `o` says otherwise) with the named real tokenizer. */
export function tinyModelDir(name: TinyTokenizer, o: TinyModelOptions = {}): string {
  const dir = path.join(tmp, `${name}-${JSON.stringify(o).replace(/\W/g, '')}`);
  createTinyModel(dir, {
    tokenizer: name,
    hiddenSize: 32,
    intermediateSize: 64,
    layers: 1,
    heads: 2,
    kvHeads: 1,
    ...o,
  });
  return dir;
}

/** The tokenizer of a real model family, loaded once. */
export function tinyTokenizer(name: TinyTokenizer): Tokenizer {
  let tok = tokenizers.get(name);
  if (tok === undefined) {
    tok = Tokenizer.fromFolder(tinyModelDir(name));
    tokenizers.set(name, tok);
  }
  return tok;
}

/** A scratch folder removed after the tests. */
export function scratchDir(name: string): string {
  return mkdtempSync(path.join(tmp, `${name}-`));
}
