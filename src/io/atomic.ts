/** Writing files so that a crash never leaves a half-written one: a temporary file beside it, then a rename. */
import { closeSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileSystemError } from '../errors.js';
import { makeFolder } from './folders.js';

/**
 * Writes `chunks` into `file` through a temporary file renamed into place. A failure (a full disk, no
 * permission, a file where a folder should be) removes the temporary file and is a one-line
 * FileSystemError naming `file`.
 */
export function writeFileAtomic(file: string, chunks: readonly (Uint8Array | string)[]): void {
  makeFolder(path.dirname(file));
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  let fd: number;
  try {
    fd = openSync(tmp, 'w');
  } catch (e) {
    throw fileSystemError(e, undefined, file);
  }
  try {
    for (const c of chunks) {
      const buf = typeof c === 'string' ? Buffer.from(c, 'utf8') : c;
      let done = 0;
      while (done < buf.byteLength) done += writeSync(fd, buf, done, buf.byteLength - done);
    }
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, file);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    rmSync(tmp, { force: true });
    throw fileSystemError(e, undefined, file);
  }
}
