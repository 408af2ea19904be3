/** `qtune quant matrix`: devices × quantization methods, probed on this machine. */
import { compatibilityMatrix, type MatrixEntry } from '../../quant/matrix.js';
import { METHODS } from '../../quant/methods.js';
import { formatTable, helpText, parse, UsageError, type CommandSpec } from '../args.js';

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
  // one line per method and bit width (`hqq:4`, `hqq:5`), one column per device
  const label = (r: MatrixEntry) =>
    Object.keys(METHODS[r.method].dtypes).length > 1 ? `${r.method}:${r.bits}` : r.method;
  const devices = [...new Set(rows.map((r) => r.device))];
  const head = ['method', 'type', ...devices];
  const table = [...new Set(rows.map(label))].map((l) => {
    const of = rows.filter((r) => label(r) === l);
    return [
      l,
      of[0]!.dtype,
      ...devices.map((d) => {
        const r = of.find((x) => x.device === d)!;
        return r.train ? 'train' : r.forward ? 'forward' : '-';
      }),
    ];
  });
  for (const line of formatTable(head, table)) out(line);
  out('');
  out(
    'train: forward and the gradient through a frozen weight (QLoRA); forward: inference only; -: not supported',
  );
  return 0;
}
