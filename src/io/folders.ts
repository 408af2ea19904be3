/**
 * Paths the user names, checked where they are used: a file that must be a file, a folder that must
 * be (or become) a writable folder. Each failure is a one-line {@link FileSystemError} naming the
 * option, the path and the fix, found before any work starts. Folders are made one level at a time:
 * Node's `mkdirSync(p, { recursive: true })` never returns for a path under /proc.
 */
import { closeSync, existsSync, mkdirSync, openSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, FileSystemError, fileSystemError } from '../errors.js';
import { isHubId } from './hub.js';

function what(field: string | undefined, p: string): string {
  return field === undefined ? p : `${field}: ${p}`;
}

/** `statSync`, or null when nothing is there (or it cannot be looked at). */
function statOrNull(p: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(p);
  } catch {
    return null;
  }
}

/** The nearest of `p` and its parents that exists. */
function existingAncestor(p: string): string {
  let a = path.resolve(p);
  while (!existsSync(a) && path.dirname(a) !== a) a = path.dirname(a);
  return a;
}

function notAFolder(field: string | undefined, dir: string, found: string): FileSystemError {
  const kind = statOrNull(found)?.isFile() === true ? 'a file, not a folder' : 'not a folder';
  return new FileSystemError(
    dir,
    'ENOTDIR',
    found === path.resolve(dir)
      ? `${what(field, dir)} is ${kind}`
      : `${what(field, dir)} cannot be made: ${found} is ${kind}`,
    { hint: 'give a new or an existing folder' },
  );
}

/** Requires `file` to be an existing regular file (a folder, a device, a missing path are refused). */
export function checkFile(field: string, file: string, hint = 'give the path of a file'): void {
  const st = statOrNull(file);
  if (st === null || st === undefined) {
    const a = existingAncestor(file);
    if (a !== path.resolve(file) && statOrNull(a)?.isDirectory() === false)
      throw new FileSystemError(file, 'ENOTDIR', `${field}: ${file} does not exist: ${a} is a file`, {
        hint,
      });
    throw new FileSystemError(file, 'ENOENT', `${field}: ${file} does not exist`, { hint });
  }
  if (st.isDirectory())
    throw new FileSystemError(file, 'EISDIR', `${field}: ${file} is a folder, not a file`, { hint });
  if (!st.isFile())
    throw new FileSystemError(file, 'ENXIO', `${field}: ${file} is not a regular file`, { hint });
}

/**
 * Makes sure `dir` is, or can become, a folder qtune may write into, without leaving anything behind:
 * an existing folder gets a probe file created and removed, a missing one has its first missing
 * level created and removed.
 */
export function checkOutputFolder(field: string, dir: string): void {
  const full = path.resolve(dir);
  const found = existingAncestor(full);
  if (statOrNull(found)?.isDirectory() !== true) throw notAFolder(field, dir, found);
  if (found === full) {
    const probe = path.join(full, `.qtune-probe-${process.pid}`);
    try {
      closeSync(openSync(probe, 'wx'));
      unlinkSync(probe);
    } catch (e) {
      // /proc/self exists, but new files in it are refused with ENOENT
      if ((e as { code?: unknown }).code === 'ENOENT')
        throw new FileSystemError(
          dir,
          'ENOENT',
          `${what(field, dir)} takes no new files (a virtual file system such as /proc)`,
          { hint: 'choose a folder on a disk' },
        );
      throw fileSystemError(e, field, dir);
    }
    return;
  }
  const first = path.join(found, path.relative(found, full).split(path.sep)[0]!);
  try {
    mkdirSync(first);
    rmdirSync(first);
  } catch (e) {
    throw missingFolderError(e, field, dir, found);
  }
}

function missingFolderError(e: unknown, field: string | undefined, dir: string, parent: string): unknown {
  // mkdir of a new name in /proc says ENOENT although the parent exists: it takes no new folders
  if ((e as { code?: unknown }).code === 'ENOENT' && existsSync(parent))
    return new FileSystemError(
      dir,
      'ENOENT',
      `${what(field, dir)} cannot be made: ${parent} takes no new folders (a virtual file system such as /proc)`,
      { hint: 'choose a folder on a disk' },
    );
  return fileSystemError(e, field, dir);
}

/** Creates `dir` and its missing parents (one level at a time), with one-line errors naming `field`. */
export function makeFolder(dir: string, field?: string): void {
  const full = path.resolve(dir);
  const found = existingAncestor(full);
  const st = statOrNull(found);
  if (st?.isDirectory() !== true) throw notAFolder(field, dir, found);
  let cur = found;
  for (const part of path
    .relative(found, full)
    .split(path.sep)
    .filter((s) => s !== '')) {
    const parent = cur;
    cur = path.join(cur, part);
    try {
      mkdirSync(cur);
    } catch (e) {
      if ((e as { code?: unknown }).code === 'EEXIST' && statOrNull(cur)?.isDirectory() === true) continue;
      throw missingFolderError(e, field, dir, parent);
    }
  }
}

/**
 * `model` names a Hub id (`org/name`, not a local path) or a path, which must exist. Relative paths
 * are taken from the current folder, as `dataset` and `output_dir` are; a missing one is one line,
 * which names the config file's folder when the path exists relative to that instead.
 */
export function checkModelPath(model: string, configFile?: string): void {
  if (existsSync(model) || isHubId(model)) return;
  const besideConfig =
    configFile === undefined || path.isAbsolute(model) ? null : path.join(path.dirname(configFile), model);
  throw new ConfigError(`model: path ${model} does not exist`, {
    hint:
      besideConfig !== null && existsSync(besideConfig)
        ? `relative paths are from the current folder, not the config file's: use ${besideConfig}`
        : `relative paths are from the current folder, ${process.cwd()}; give a model folder, a .gguf file, or a Hub id such as org/name`,
    details: { field: 'model', value: model },
  });
}
