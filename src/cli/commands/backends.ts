/** `qtune backends`: the devices, their memory and what they can run, probed on this machine. */
import { BackendManager } from '../../backends/manager.js';
import { formatTable, helpText, parse, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'backends',
  summary: 'List compute devices (CPU, CUDA, Metal, Vulkan) with memory and supported types.',
  usage: 'qtune backends [--json]',
  flags: { json: { type: 'boolean', default: false, help: 'print a JSON array' } },
};

const GB = 1024 ** 3;

export function run(argv: string[], out: (s: string) => void): number {
  const { values } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const report = new BackendManager().report();
  if (values['json'] === true) {
    out(JSON.stringify(report, null, 2));
    return 0;
  }
  const rows = report.map((r) => [
    r.name,
    r.kind + (r.software ? ' (software)' : ''),
    r.available ? 'yes' : 'no',
    r.available ? `${(r.memory_free / GB).toFixed(1)}/${(r.memory_total / GB).toFixed(1)} GiB` : '-',
    r.bf16 ? 'yes' : 'no',
    r.train_quant_types.length > 0 ? `${r.train_quant_types.length}/${r.quant_types.length}` : '-',
    r.available ? r.description : (r.reason ?? ''),
  ]);
  const head = ['device', 'kind', 'available', 'memory free/total', 'bf16', 'quant train/fwd', 'description'];
  for (const line of formatTable(head, rows)) out(line);
  return 0;
}
