/** Command-line parsing shared by the commands: strict flags, typed errors, generated help. */
import { parseArgs } from 'node:util';
import { QtuneError, type ErrorCode } from '../errors.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  default?: string | boolean;
  help: string;
  short?: string;
}

export interface CommandSpec {
  name: string;
  summary: string;
  usage: string;
  flags: Record<string, FlagSpec>;
}

/** Error codes that mean the input was wrong (exit 2) rather than that something failed (exit 1). */
const INPUT_ERRORS = new Set<ErrorCode>([
  'INVALID_ARGUMENT',
  'DEVICE_UNAVAILABLE',
  'SHAPE',
  'DTYPE',
  'UNSUPPORTED_OP',
  'FORMAT',
  'CONFIG',
  'NOT_FOUND',
  // a folder where a file is expected, no permission, a full disk: the fix is another path
  'FILE_SYSTEM',
  // a batch or model the device cannot hold: the fix is in the input (smaller batch, quantization)
  'OUT_OF_MEMORY',
]);

/** The CLI's exit code for an error: 2 for wrong input, 1 for a failure. */
export function exitCodeOf(e: unknown): number {
  return e instanceof QtuneError && INPUT_ERRORS.has(e.code) ? 2 : 1;
}

/** A mistake in what the user typed: the CLI prints it on one line and exits with code 2. */
export class UsageError extends QtuneError {
  override name = 'UsageError';
  constructor(message: string, hint?: string) {
    super('INVALID_ARGUMENT', message, hint === undefined ? {} : { hint });
  }
}

export function helpText(spec: CommandSpec): string {
  const lines = [spec.summary, '', `usage: ${spec.usage}`, '', 'options:'];
  const all: Record<string, FlagSpec> = { ...spec.flags, help: { type: 'boolean', help: 'show this help' } };
  for (const [name, f] of Object.entries(all)) {
    const flag = `--${name}${f.type === 'string' ? ' VALUE' : ''}`;
    const def = f.default === undefined ? '' : ` (default: ${String(f.default)})`;
    lines.push(`  ${flag.padEnd(26)} ${f.help}${def}`);
  }
  return lines.join('\n');
}

export function parse(
  spec: CommandSpec,
  argv: string[],
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    help: { type: 'boolean' },
  };
  for (const [name, f] of Object.entries(spec.flags)) {
    options[name] = f.short === undefined ? { type: f.type } : { type: f.type, short: f.short };
  }
  try {
    const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
    const out: Record<string, string | boolean | undefined> = {};
    for (const [name, f] of Object.entries(spec.flags)) out[name] = values[name] ?? f.default;
    out['help'] = values['help'];
    return { values: out, positionals };
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0]! : String(e);
    throw new UsageError(`${spec.name}: ${msg}`, `see \`qtune ${spec.name} --help\``);
  }
}

export function intFlag(name: string, value: string | boolean | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (typeof value !== 'string' || !Number.isInteger(n) || n < 1) {
    throw new UsageError(
      `--${name}=${String(value)} is not a positive integer`,
      `pass a whole number such as --${name} 2`,
    );
  }
  return n;
}

/** The flags that split a model over several devices, shared by the commands that load one. */
export const DEVICE_FLAGS: Record<string, FlagSpec> = {
  devices: {
    type: 'string',
    help: 'split the model over these devices in block order (e.g. vulkan0,cpu), or auto; instead of --backend',
  },
  'layer-split': { type: 'string', help: 'with --devices: proportions of the blocks per device (e.g. 3,1)' },
};

/** `--devices` and `--layer-split` as a device request, or undefined for one device. */
export function devicesFlag(
  values: Record<string, string | boolean | undefined>,
): { devices: string[] | 'auto'; layerSplit?: number[] } | undefined {
  const devices = values['devices'];
  const split = values['layer-split'];
  if (devices === undefined) {
    if (split !== undefined)
      throw new UsageError('--layer-split needs --devices', 'e.g. --devices vulkan0,cpu --layer-split 3,1');
    return undefined;
  }
  const list =
    typeof devices === 'string'
      ? devices
          .split(',')
          .map((d) => d.trim())
          .filter((d) => d !== '')
      : [];
  if (list.length === 0)
    throw new UsageError('--devices needs a list of devices', 'e.g. --devices vulkan0,cpu, or auto');
  if (values['backend'] !== undefined && values['backend'] !== 'auto')
    throw new UsageError(
      '--backend and --devices are both given',
      'give --devices to split the model, --backend to keep it on one device',
    );
  const request: { devices: string[] | 'auto'; layerSplit?: number[] } = {
    devices: list.length === 1 && list[0] === 'auto' ? 'auto' : list,
  };
  if (split !== undefined) {
    const nums = typeof split === 'string' ? split.split(',').map(Number) : [NaN];
    if (nums.some((n) => !(Number.isFinite(n) && n >= 0)))
      throw new UsageError(
        `--layer-split=${String(split)} is not a list of numbers ≥ 0`,
        'e.g. --layer-split 3,1',
      );
    request.layerSplit = nums;
  }
  return request;
}

/** Lines of a plain-text table: a header, a rule, and the rows, columns padded to fit. */
export function formatTable(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}
