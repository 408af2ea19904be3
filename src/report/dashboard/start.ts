/**
 * `qtune train --dashboard`: the dashboard's server (server.ts) on a worker thread, so it answers
 * while a training step holds the main thread. The worker reads the output folder itself; the
 * handle only tells it what the folder does not say yet (the config, the placement) and stops it.
 *
 * @example
 * const dash = await startDashboardWorker({ outputDir: 'out', port: 0, portField: 'dashboard_port' });
 * process.stderr.write(`dashboard: ${dash.url}\n`);
 * // ... train ...
 * await dash.close(); // the page gets the last records, then `end`
 */
import { Worker } from 'node:worker_threads';
import { ConfigError } from '../../errors.js';
import type { RunInfoOverride } from './run-reader.js';
import type { DashboardServerOptions } from './server.js';
import type { FromWorker, ToWorker } from './worker.js';

export interface DashboardHandle {
  url: string;
  port: number;
  /** What the page shows until the folder says it (qtune_config.yaml, train.log). */
  setOverride(o: RunInfoOverride): void;
  close(): Promise<void>;
}

export async function startDashboardWorker(o: DashboardServerOptions): Promise<DashboardHandle> {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: o });
  const send = (m: ToWorker): void => worker.postMessage(m);
  const port = await new Promise<number>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the dashboard's worker ended (exit code ${code})`)));
    worker.once('message', (m: FromWorker) => {
      if (m.type === 'listening') resolve(m.port);
      else if (m.type === 'error')
        reject(
          m.config
            ? new ConfigError(m.message, m.hint === undefined ? {} : { hint: m.hint })
            : new Error(`dashboard: ${m.message}`),
        );
    });
  });
  worker.removeAllListeners();
  // the dashboard never keeps a finished run's process alive
  worker.unref();
  worker.on('error', (e) => process.stderr.write(`warning: the dashboard stopped: ${e.message}\n`));
  let closing: Promise<void> | null = null;
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    setOverride: (override) => send({ type: 'override', override }),
    close: () =>
      (closing ??= new Promise<void>((resolve) => {
        worker.ref(); // the process waits for the last records to go out
        worker.once('exit', () => resolve());
        worker.on('message', (m: FromWorker) => {
          if (m.type === 'closed') void worker.terminate();
        });
        send({ type: 'close' });
      })),
  };
}
