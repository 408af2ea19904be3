/**
 * Typed errors. Every error qtune raises on purpose is a {@link QtuneError}: it carries a stable
 * `code`, the offending values in `details`, and a `hint` that says how to fix it. `message` is one
 * line meant for a user: it names the field or value and the fix.
 */
export type ErrorCode =
  | 'ENGINE_NOT_FOUND'
  | 'ENGINE_LOAD'
  | 'ENGINE_BUILD'
  | 'DEVICE_UNAVAILABLE'
  | 'SHAPE'
  | 'DTYPE'
  | 'UNSUPPORTED_OP'
  | 'GRAPH'
  | 'COMPUTE'
  | 'OUT_OF_MEMORY'
  | 'DISPOSED'
  | 'INVALID_ARGUMENT'
  | 'FORMAT'
  | 'CONFIG'
  | 'NOT_FOUND'
  | 'FILE_SYSTEM'
  | 'NETWORK';

export class QtuneError extends Error {
  override name = 'QtuneError';
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Readonly<Record<string, unknown>>;
  /** The message without the hint (to wrap it in another error with more context). */
  readonly problem: string;

  constructor(
    code: ErrorCode,
    message: string,
    options: { hint?: string; details?: Record<string, unknown> } = {},
  ) {
    super(options.hint === undefined ? message : `${message} (${options.hint})`);
    this.problem = message;
    this.code = code;
    this.hint = options.hint;
    this.details = options.details ?? {};
  }
}

/** A tensor shape does not fit the op it is given to. */
export class ShapeError extends QtuneError {
  override name = 'ShapeError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('SHAPE', message, options);
  }
}

/** A tensor's element type is not one the op accepts. */
export class DTypeError extends QtuneError {
  override name = 'DTypeError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('DTYPE', message, options);
  }
}

/** The chosen device cannot run an op of a graph (found with ggml's supports_op before computing). */
export class UnsupportedOpError extends QtuneError {
  override name = 'UnsupportedOpError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('UNSUPPORTED_OP', message, options);
  }
}

/** A device was asked for by name or kind and is not present. */
export class DeviceUnavailableError extends QtuneError {
  override name = 'DeviceUnavailableError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('DEVICE_UNAVAILABLE', message, options);
  }
}

/** Native memory could not be allocated. */
export class OutOfMemoryError extends QtuneError {
  override name = 'OutOfMemoryError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('OUT_OF_MEMORY', message, options);
  }
}

/** A file is not what its format promises (truncated, corrupt, unsupported): names the file and the problem. */
export class FormatError extends QtuneError {
  override name = 'FormatError';
  readonly file: string;
  constructor(
    file: string,
    message: string,
    options: { hint?: string; details?: Record<string, unknown> } = {},
  ) {
    super('FORMAT', `${file}: ${message}`, options);
    this.file = file;
  }
}

/** A model configuration value qtune does not support, or that is malformed. */
export class ConfigError extends QtuneError {
  override name = 'ConfigError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('CONFIG', message, options);
  }
}

/**
 * A checkpoint this run cannot resume: a setting its saved tensors or data depend on (the model, the
 * train type, the LoRA rank or target modules, the optimizer, the training data) differs. Carries the
 * setting and both values.
 */
export class ResumeError extends ConfigError {
  override name = 'ResumeError';
  readonly setting: string;
  /** The setting's value in the checkpoint, and in this run (as the message shows them). */
  readonly checkpointValue: string;
  readonly runValue: string;
  constructor(
    setting: string,
    values: { checkpoint: string; run: string },
    message: string,
    options: { hint?: string; details?: Record<string, unknown> } = {},
  ) {
    super(message, { ...options, details: { setting, ...values, ...options.details } });
    this.setting = setting;
    this.checkpointValue = values.checkpoint;
    this.runValue = values.run;
  }
}

/** Training cannot go on: the loss or the gradients diverged (not finite), with no loss scale left. */
export class TrainingError extends QtuneError {
  override name = 'TrainingError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('COMPUTE', message, options);
  }
}

/**
 * A token id that has no row in the embedding table (or no class in the loss): it would make ggml's
 * `get_rows` abort the process, so it is refused when the ids are set.
 */
export class TokenRangeError extends QtuneError {
  override name = 'TokenRangeError';
  readonly id: number;
  /** Position in the sequence (the last axis of the ids). */
  readonly position: number;
  /** Which sequence of the batch, when the ids hold several. */
  readonly sequence: number | null;
  readonly vocabSize: number;
  constructor(
    what: string,
    at: { id: number; position: number; sequence?: number; vocabSize: number },
    options: { hint?: string; details?: Record<string, unknown> } = {},
  ) {
    const where = at.sequence === undefined ? '' : ` of sequence ${at.sequence}`;
    super(
      'INVALID_ARGUMENT',
      `${what}: token id ${at.id} at position ${at.position}${where} is outside the vocabulary of ${at.vocabSize} (ids 0..${at.vocabSize - 1})`,
      {
        hint:
          options.hint ??
          'use the tokenizer that belongs to the model, or resize the embeddings to the tokenizer',
        details: { ...at, ...options.details },
      },
    );
    this.id = at.id;
    this.position = at.position;
    this.sequence = at.sequence ?? null;
    this.vocabSize = at.vocabSize;
  }
}

/**
 * A file-system call failed (a folder where a file is expected, no permission, a full disk...):
 * names the option, the path and what to do. {@link fileSystemError} builds one from Node's error.
 */
export class FileSystemError extends QtuneError {
  override name = 'FileSystemError';
  readonly path: string;
  /** Node's error code: EISDIR, ENOTDIR, EEXIST, EACCES, EPERM, EROFS, ENOSPC, ENOENT, ... */
  readonly sysCode: string;
  constructor(
    path: string,
    sysCode: string,
    message: string,
    options: { hint?: string; details?: Record<string, unknown> } = {},
  ) {
    super('FILE_SYSTEM', message, { ...options, details: { path, sysCode, ...options.details } });
    this.path = path;
    this.sysCode = sysCode;
  }
}

/** What Node's file-system errors mean for the user, and the fix, by error code. */
const SYSTEM_ERRORS: Record<string, { problem: string; hint: string }> = {
  EISDIR: { problem: 'is a folder, not a file', hint: 'give the path of a file' },
  ENOTDIR: {
    problem: 'is not a folder (it, or a folder above it, is a file)',
    hint: 'give a folder path whose parents are folders',
  },
  EEXIST: { problem: 'already exists and is not a folder', hint: 'give a new or an existing folder' },
  ENOENT: { problem: 'does not exist', hint: 'check the path' },
  EACCES: { problem: 'cannot be accessed: permission denied', hint: 'choose a path you may write to' },
  EPERM: { problem: 'cannot be changed: operation not permitted', hint: 'choose a path you may write to' },
  EROFS: { problem: 'is on a read-only file system', hint: 'choose a path on a writable disk' },
  ENOSPC: { problem: 'cannot be written: the disk is full', hint: 'free disk space or choose another disk' },
  EDQUOT: { problem: 'cannot be written: the disk quota is used up', hint: 'free disk space' },
  ENAMETOOLONG: { problem: 'has a name too long for the file system', hint: 'use a shorter path' },
  ELOOP: { problem: 'has a loop of symbolic links', hint: 'fix the links' },
  EMFILE: { problem: 'cannot be opened: too many open files', hint: 'raise the limit (ulimit -n)' },
  EBUSY: { problem: 'is busy', hint: 'close what holds it and try again' },
  ENXIO: { problem: 'is a device that cannot be opened this way', hint: 'give a regular file or folder' },
};

/** Whether `e` is one of Node's system errors (an Error with a string `code` such as ENOENT and a `syscall`). */
export function isSystemError(e: unknown): e is Error & { code: string; syscall?: string; path?: string } {
  if (!(e instanceof Error)) return false;
  const { code, syscall } = e as Error & { code?: unknown; syscall?: unknown };
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && typeof syscall === 'string';
}

/**
 * Node's system error `e` as one line naming the option (`field`, when known), the path and the fix:
 * `output_dir: /dev/null already exists and is not a folder (give a new or an existing folder)`.
 * Other errors are returned unchanged.
 */
export function fileSystemError(e: unknown, field?: string, file?: string): unknown {
  if (e instanceof QtuneError || !isSystemError(e)) return e;
  const p = file ?? e.path ?? '';
  const known = SYSTEM_ERRORS[e.code];
  const what = field === undefined ? p || 'a file' : `${field}: ${p}`;
  const problem = known?.problem ?? `could not be used (${e.code} in ${e.syscall ?? 'a file-system call'})`;
  return new FileSystemError(p, e.code, `${what} ${problem}`, {
    hint: known?.hint ?? 'check the path',
  });
}

/** Formats a shape the way error messages print it: `[2, 3, 4]`. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * A thrown value's message on one line, for wrapping in a QtuneError: JSON.parse quotes the text it
 * stopped at, newlines included.
 */
export function errorText(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).replace(/\s*[\r\n\u2028\u2029]+\s*/g, ' ').trim();
}

/** A name from a file, quoted for a message: escaped (it may hold any characters) and cut at 80. */
export function quote(s: string): string {
  const q = JSON.stringify(s);
  return q.length > 80 ? `${q.slice(0, 78)}…"` : q;
}

/** A value for a message: JSON (numbers as numbers, NaN included), cut at 80 characters. */
export function shownValue(v: unknown): string {
  let s: string;
  try {
    s = typeof v === 'number' || typeof v === 'bigint' ? String(v) : (JSON.stringify(v) ?? String(v));
  } catch {
    s = Array.isArray(v) ? '[...]' : String(v); // cyclic
  }
  return s.length > 80 ? `${s.slice(0, 78)}…` : s;
}

/**
 * A reward function (GRPO's `reward_functions`) that cannot be used: its module does not load or
 * export a function, or it returned the wrong number of rewards or something not a number. Names
 * the function and the value.
 */
export class RewardFunctionError extends QtuneError {
  override name = 'RewardFunctionError';
  constructor(message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super('CONFIG', message, options);
  }
}
