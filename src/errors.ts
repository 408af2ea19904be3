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
