/**
 * The W&B sender, in a worker thread: Trainer.train() is synchronous and holds the main thread for
 * the whole run, so the HTTP traffic runs on this thread's own event loop. Rows come in as messages;
 * every `flushMs` the queued rows go to the file stream. A failed request keeps the rows queued for
 * the next try and sends one warning per failure streak to the main thread; nothing here throws into
 * training.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { WandbClient, type WandbRunSettings } from './wandb-client.js';

export type ToWorker = { type: 'row'; row: Record<string, unknown> } | { type: 'finish'; exitcode: number };
export type FromWorker =
  | { type: 'ready'; url: string }
  | { type: 'init-failed'; message: string }
  | { type: 'warning'; message: string }
  | { type: 'done'; sent: number; unsent: number };

export interface WorkerSettings {
  run: WandbRunSettings;
  flushMs: number;
  maxQueue: number;
}

const port = parentPort!;
const { run, flushMs, maxQueue } = workerData as WorkerSettings;
const client = new WandbClient(run);
const queue: Record<string, unknown>[] = [];
let summary: Record<string, unknown> = {};
let summaryDirty = false;
let failing = false;
let dropped = 0;
let busy: Promise<void> | null = null;

const post = (m: FromWorker): void => port.postMessage(m);
const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function failed(what: string, e: unknown): void {
  if (!failing) post({ type: 'warning', message: `${what}: ${errText(e)}; will retry, training goes on` });
  failing = true;
}

async function ensureInit(): Promise<boolean> {
  if (client.info !== null) return true;
  try {
    const info = await client.init();
    post({ type: 'ready', url: info.url });
    failing = false;
    return true;
  } catch (e) {
    failed('could not create the run', e);
    return false;
  }
}

/** Sends what is queued, in batches; false when a request failed. */
async function flush(): Promise<boolean> {
  if (!(await ensureInit())) return false;
  while (queue.length > 0 || summaryDirty) {
    const rows = queue.slice(0, 1000);
    try {
      await client.sendHistory(rows, summary);
    } catch (e) {
      failed('could not send metrics', e);
      return false;
    }
    queue.splice(0, rows.length);
    summaryDirty = false;
    if (failing) post({ type: 'warning', message: 'sending metrics again' });
    failing = false;
  }
  return true;
}

function tick(): void {
  busy ??= flush().then(
    () => {
      busy = null;
    },
    () => {
      busy = null;
    },
  );
}

const timer = setInterval(tick, flushMs);

port.on('message', (m: ToWorker) => {
  if (m.type === 'row') {
    queue.push(m.row);
    summary = { ...summary, ...m.row };
    summaryDirty = true;
    if (queue.length > maxQueue) {
      queue.shift();
      if (dropped++ === 0)
        post({ type: 'warning', message: `more than ${maxQueue} rows unsent; dropping the oldest` });
    }
    return;
  }
  clearInterval(timer);
  void (async () => {
    if (busy !== null) await busy;
    const ok = await flush();
    if (ok || client.info !== null) {
      try {
        await client.finish(m.exitcode);
      } catch (e) {
        post({ type: 'warning', message: `could not mark the run finished: ${errText(e)}` });
      }
    }
    post({ type: 'done', sent: client.historyOffset, unsent: queue.length });
  })();
});

// create the run at once
tick();
