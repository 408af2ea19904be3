/** Writing files so that a crash never leaves a half-written one: a temporary file beside it, then a rename. */
import { closeSync, fsyncSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { FileSystemError, fileSystemError } from '../errors.js';
import { makeFolder } from './folders.js';

function statOrNull(p: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(p);
  } catch {
    return null;
  }
}

/**
 * Writes `chunks` into `file` through a temporary file renamed into place. A failure (a full disk, no
 * permission, a file where a folder should be) removes the temporary file and is a one-line
 * FileSystemError naming `file`.
 */
export function writeFileAtomic(file: string, chunks: readonly (Uint8Array | string)[]): void {
  // the rename would replace a device such as /dev/null with a regular file (as root), or fail on a folder
  const existing = statOrNull(file);
  if (existing !== null && existing !== undefined && !existing.isFile())
    throw new FileSystemError(
      file,
      existing.isDirectory() ? 'EISDIR' : 'ENXIO',
      `${file} is ${existing.isDirectory() ? 'a folder' : 'not a regular file'}, so it cannot be written as a file`,
      { hint: 'give the path of a new or a regular file' },
    );
  makeFolder(path.dirname(file));
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  let fd: number;
  try {
    fd = openSync(tmp, 'w');
  } catch (e) {
    // a new file in /proc is refused with ENOENT although the folder exists
    if ((e as { code?: unknown }).code === 'ENOENT')
      throw new FileSystemError(
        file,
        'ENOENT',
        `${file} cannot be created: ${path.dirname(file)} takes no new files (a virtual file system such as /proc)`,
        { hint: 'choose a folder on a disk' },
      );
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
