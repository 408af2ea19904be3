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
