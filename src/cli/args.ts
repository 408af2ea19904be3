/**
 * Command-line parsing shared by the commands: strict flags, typed errors, generated help. One
 * spelling rule for every command: `-` and `_` in a flag's name are the same (`--context-length`
 * is `--context_length`), and a flag may have aliases, the name another command or Axolotl uses.
 */
import { QtuneError, type ErrorCode } from '../errors.js';
import { closestName } from '../util/names.js';

export interface FlagSpec {
  type: 'string' | 'boolean';
  default?: string | boolean;
  help: string;
  short?: string;
  /** Other names for the flag: the one another command uses for the same thing (`--dataset-format`). */
  aliases?: readonly string[];
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
    const also = f.aliases === undefined ? '' : ` (also ${f.aliases.map((a) => `--${a}`).join(', ')})`;
    lines.push(`  ${flag.padEnd(26)} ${f.help}${also}${def}`);
  }
  lines.push('', 'Flag names take - or _ alike (--max-samples, --max_samples).');
  return lines.join('\n');
}

/** A flag's name as compared: `_` and `-` are one character (`context_length` is `context-length`). */
export function flagKey(name: string): string {
  return name.replace(/_/g, '-');
}

/** `--name` as typed, for a message: printable and short, or quoted. */
function shownFlag(arg: string): string {
  return /^[\x21-\x7e]{1,60}$/.test(arg) ? arg : JSON.stringify(arg.slice(0, 60));
}

/** The UsageError for a flag no option has, naming the closest known one. */
export function unknownFlagError(command: string, typed: string, known: Iterable<string>): UsageError {
  const near = closestName(typed.replace(/^-+/, ''), known);
  return new UsageError(
    `${command}: ${shownFlag(typed)}: unknown option`,
    near === undefined ? `see \`qtune ${command} --help\`` : `did you mean --${near}?`,
  );
}

/** The UsageError for a flag that needs a value and was given none. */
export function missingValueError(command: string, typed: string): UsageError {
  return new UsageError(
    `${command}: ${shownFlag(typed)} needs a value`,
    `e.g. ${typed} VALUE, or ${typed}=VALUE`,
  );
}

/**
 * Reads `argv` against a command's flags: `--name value`, `--name=value`, `-s value` (a flag's short
 * name), a bare `--name` for a boolean (or `--name=true|false`), positionals, and everything after
 * `--` as positionals. Names follow {@link flagKey}, aliases count as their flag, the last of a
 * flag given twice wins. A mistake is one UsageError naming the flag (and the closest known one).
 */
export function parse(
  spec: CommandSpec,
  argv: string[],
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  const all: Record<string, FlagSpec> = { ...spec.flags, help: { type: 'boolean', help: '', short: 'h' } };
  const byKey = new Map<string, string>(); // flagKey of a name or alias -> the flag
  const byShort = new Map<string, string>();
  for (const [name, f] of Object.entries(all)) {
    for (const n of [name, ...(f.aliases ?? [])]) byKey.set(flagKey(n), name);
    if (f.short !== undefined) byShort.set(f.short, name);
  }
  const given: Record<string, string | boolean> = {};
  const positionals: string[] = [];
  const isFlag = (a: string) => a.startsWith('--') || (a.length === 2 && byShort.has(a.slice(1)));
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    // a plain word, `-`, or a negative number is a positional
    if (!arg.startsWith('-') || arg === '-' || /^-[\d.]/.test(arg)) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const typed = eq < 0 ? arg : arg.slice(0, eq);
    const name = typed.startsWith('--') ? byKey.get(flagKey(typed.slice(2))) : byShort.get(typed.slice(1));
    if (name === undefined) throw unknownFlagError(spec.name, typed, Object.keys(spec.flags));
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    if (all[name]!.type === 'boolean') {
      if (inline !== undefined && inline !== 'true' && inline !== 'false')
        throw new UsageError(
          `${spec.name}: ${shownFlag(arg)}: ${typed} takes no value`,
          `give ${typed} alone`,
        );
      given[name] = inline !== 'false';
    } else if (inline !== undefined) given[name] = inline;
    else if (i + 1 < argv.length && !isFlag(argv[i + 1]!)) given[name] = argv[++i]!;
    else throw missingValueError(spec.name, typed);
  }
  const values: Record<string, string | boolean | undefined> = {};
  for (const [name, f] of Object.entries(spec.flags)) values[name] = given[name] ?? f.default;
  values['help'] = given['help'];
  return { values, positionals };
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
