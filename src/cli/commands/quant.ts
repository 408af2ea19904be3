/** `qtune quant matrix`: devices × quantization methods, probed on this machine. */
import { compatibilityMatrix } from '../../quant/matrix.js';
import { METHODS } from '../../quant/methods.js';
import { helpText, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'quant',
  summary: 'Show which device runs which quantization method forward and in training (probed).',
  usage: 'qtune quant matrix [--json] | qtune quant methods',
  flags: { json: { type: 'boolean', default: false, help: 'print JSON' } },
};

export function run(argv: string[], out: (s: string) => void): number {
  const { values, positionals } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const sub = positionals[0] ?? 'matrix';
  if (sub === 'methods') {
    for (const m of Object.values(METHODS))
      out(
        `${m.method.padEnd(12)} ${Object.entries(m.dtypes)
          .map(([b, d]) => `${b}-bit ${d}`)
          .join(', ')
          .padEnd(22)} ${m.description}`,
      );
    return 0;
  }
  if (sub !== 'matrix')
    throw new UsageError(
      `quant: unknown subcommand "${sub}"`,
      'use `qtune quant matrix` or `qtune quant methods`',
    );
  const rows = compatibilityMatrix();
  if (values['json'] === true) {
    out(JSON.stringify(rows, null, 2));
    return 0;
  }
  const devices = [...new Set(rows.map((r) => r.device))];
  const methods = [
    ...new Set(
      rows.map((r) => `${r.method}${Object.keys(METHODS[r.method].dtypes).length > 1 ? `:${r.bits}` : ''}`),
    ),
  ];
  const cell = (d: string, label: string) => {
    const r = rows.find(
      (x) =>
        x.device === d &&
        `${x.method}${Object.keys(METHODS[x.method].dtypes).length > 1 ? `:${x.bits}` : ''}` === label,
    )!;
    return r.train ? 'train' : r.forward ? 'forward' : '-';
  };
  const head = ['method', 'type', ...devices];
  const table = methods.map((label) => {
    const r = rows.find(
      (x) => `${x.method}${Object.keys(METHODS[x.method].dtypes).length > 1 ? `:${x.bits}` : ''}` === label,
    )!;
    return [label, r.dtype, ...devices.map((d) => cell(d, label))];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  out(fmt(head));
  out(fmt(widths.map((w) => '-'.repeat(w))));
  for (const r of table) out(fmt(r));
  out('');
  out(
    'train: forward and the gradient through a frozen weight (QLoRA); forward: inference only; -: not supported',
  );
  return 0;
}
