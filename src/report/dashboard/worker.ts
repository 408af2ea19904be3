/**
 * The dashboard on a worker thread (start.ts starts it): the training thread blocks during a step,
 * and this thread's event loop answers the page meanwhile. Messages in: `{ type: 'override', ... }`,
 * `{ type: 'close' }`; out: `{ type: 'listening', port }`, `{ type: 'error', ... }`, `{ type: 'closed' }`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { QtuneError } from '../../errors.js';
import type { RunInfoOverride } from './run-reader.js';
import { DashboardServer, type DashboardServerOptions } from './server.js';

export type ToWorker = { type: 'override'; override: RunInfoOverride } | { type: 'close' };
export type FromWorker =
  | { type: 'listening'; port: number }
  | { type: 'error'; message: string; hint?: string; config: boolean }
  | { type: 'closed' };

const port = parentPort!;
const post = (m: FromWorker): void => port.postMessage(m);

DashboardServer.start(workerData as DashboardServerOptions).then(
  (server) => {
    port.on('message', (m: ToWorker) => {
      if (m.type === 'override') server.setOverride(m.override);
      else
        void server.close().then(() => {
          post({ type: 'closed' });
          port.close();
        });
    });
    post({ type: 'listening', port: server.port });
  },
  (e: unknown) => {
    const q = e instanceof QtuneError;
    post({
      type: 'error',
      message: q ? e.problem : e instanceof Error ? e.message : String(e),
      ...(q && e.hint !== undefined ? { hint: e.hint } : {}),
      config: q,
    });
    port.close();
  },
);
