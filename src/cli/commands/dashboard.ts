/**
 * `qtune dashboard OUTPUT_DIR [--port N]`: the live page of a run that is going on or has finished
 * (docs/dashboard.md), on 127.0.0.1 until Ctrl-C. The same server as `qtune train --dashboard`.
 */
import { existsSync } from 'node:fs';
import { ConfigError } from '../../errors.js';
import { holdsRun } from '../../report/dashboard/run-reader.js';
import { DashboardServer } from '../../report/dashboard/server.js';
import { helpText, parse, UsageError, type CommandSpec } from '../args.js';

export const spec: CommandSpec = {
  name: 'dashboard',
  summary: "Serve a run's live page (charts, config, checkpoints, samples) on 127.0.0.1.",
  usage: 'qtune dashboard OUTPUT_DIR [--port N]',
  flags: {
    port: { type: 'string', default: '0', help: 'port on 127.0.0.1 (0: any free port)' },
  },
};

/** A port number, 0 to 65535. */
export function portFlag(value: string | boolean | undefined): number {
  const n = Number(value ?? '0');
  if (typeof value === 'boolean' || !Number.isInteger(n) || n < 0 || n > 65535)
    throw new UsageError(
      `dashboard: --port ${String(value)} is not a port`,
      'give a whole number from 1 to 65535, or 0 for any free port',
    );
  return n;
}

export async function run(argv: string[], out: (s: string) => void): Promise<number> {
  const { values, positionals } = parse(spec, argv);
  if (values['help'] === true) {
    out(helpText(spec));
    return 0;
  }
  const port = portFlag(values['port']);
  if (positionals.length !== 1)
    throw new UsageError(
      positionals.length === 0
        ? 'dashboard: give the output folder of a run'
        : `dashboard: one output folder, not ${positionals.length} (${positionals.join(' ')})`,
      'e.g. qtune dashboard out/lora-tiny',
    );
  const dir = positionals[0]!;
  if (!holdsRun(dir))
    throw new ConfigError(
      existsSync(dir)
        ? `dashboard: ${dir} holds no qtune run (no metrics.jsonl, checkpoint-N or qtune_config.yaml)`
        : `dashboard: ${dir} does not exist`,
      { hint: 'give the output_dir of a qtune train run' },
    );
  const server = await DashboardServer.start({ outputDir: dir, port, portField: '--port' });
  process.stderr.write(`dashboard: ${server.url}\n`);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  await server.close();
  process.stderr.write(`dashboard: stopped (${signal})\n`);
  return 0;
}
