/**
 * `qtune train --dashboard`: the live page of the run (report/dashboard), started before the model
 * loads so that a port in use fails at once. Its address goes to stderr and train.log.
 */
import { startDashboardWorker, type DashboardHandle } from '../report/dashboard/start.js';
import { resolvedConfigYaml } from './run-outputs.js';
import type { TrainConfig } from './train-config.js';
import type { TrainLog } from './train-log.js';

export async function startTrainDashboard(c: TrainConfig, log: TrainLog | null): Promise<DashboardHandle> {
  const dash = await startDashboardWorker({
    outputDir: c.output_dir,
    port: c.dashboard_port,
    portField: 'dashboard_port',
    // qtune_config.yaml is written when the run ends; until then the page shows the same text
    override: { config: resolvedConfigYaml(c) },
  });
  process.stderr.write(`dashboard: ${dash.url}\n`);
  log?.line(`dashboard: ${dash.url}`);
  return dash;
}
