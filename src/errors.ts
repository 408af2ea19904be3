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

  constructor(
    code: ErrorCode,
    message: string,
    options: { hint?: string; details?: Record<string, unknown> } = {},
  ) {
    super(options.hint === undefined ? message : `${message} (${options.hint})`);
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
