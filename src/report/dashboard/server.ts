/**
 * The dashboard's HTTP server, on 127.0.0.1 only: `/` the page (page.ts), `/uplot.js` and
 * `/uplot.css` the chart library from the uplot package, `/api/run` the run so far as JSON, and
 * `/api/events` its new records as Server-Sent Events. It looks at the output folder every `pollMs`
 * (run-reader.ts), so it needs nothing from the process that trains: `qtune train --dashboard` runs
 * it on a worker thread (start.ts), `qtune dashboard` on its main thread.
 *
 * Events: `record` (a metrics.jsonl row; its `id` is the row's index, so a client that reconnects
 * with Last-Event-ID gets what it missed), `run` (config, checkpoints, placement, running; sent at
 * connect and when one changes), `reset` (metrics.jsonl started over), `end` (the server stops).
 * A comment line every `keepaliveMs` keeps proxies and the browser from closing an idle stream.
 *
 * @example
 * const server = await DashboardServer.start({ outputDir: 'out', port: 0, portField: '--port' });
 * console.error(`dashboard: ${server.url}`);
 */
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import { ConfigError } from '../../errors.js';
import { dashboardPage } from './page.js';
import { RunReader, type RunInfoOverride } from './run-reader.js';

export interface DashboardServerOptions {
  outputDir: string;
  /** 0: any free port. */
  port: number;
  /** The option that set the port, for the error when it is in use (`dashboard_port`, `--port`). */
  portField: string;
  pollMs?: number;
  keepaliveMs?: number;
  /** The reconnection delay the server asks of clients (SSE `retry`). */
  retryMs?: number;
  override?: RunInfoOverride;
}

const HOST = '127.0.0.1';

interface Asset {
  type: string;
  body: Buffer;
}

function uplotAssets(): Record<string, Asset> {
  const require = createRequire(import.meta.url);
  const file = (name: string): Buffer => readFileSync(require.resolve(`uplot/dist/${name}`));
  return {
    '/uplot.js': { type: 'text/javascript; charset=utf-8', body: file('uPlot.iife.min.js') },
    '/uplot.css': { type: 'text/css; charset=utf-8', body: file('uPlot.min.css') },
  };
}

/** One SSE message. */
function sse(event: string, data: unknown, id?: number): string {
  return `${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export class DashboardServer {
  readonly reader: RunReader;
  private readonly clients = new Set<http.ServerResponse>();
  private readonly assets = uplotAssets();
  private lastInfo = '';
  private timers: NodeJS.Timeout[] = [];
  private closed = false;

  private constructor(
    private readonly server: http.Server,
    readonly port: number,
    private readonly o: DashboardServerOptions,
  ) {
    this.reader = new RunReader(o.outputDir);
    if (o.override !== undefined) this.reader.setOverride(o.override);
    this.reader.poll();
    this.lastInfo = JSON.stringify(this.reader.info());
    server.on('request', (req, res) => this.handle(req, res));
    this.timers.push(setInterval(() => this.tick(), o.pollMs ?? 500));
    this.timers.push(
      setInterval(() => {
        for (const c of this.clients) c.write(': keepalive\n\n');
      }, o.keepaliveMs ?? 15_000),
    );
  }

  get url(): string {
    return `http://${HOST}:${this.port}/`;
  }

  /** Listens on 127.0.0.1; a port in use is a one-line ConfigError naming it. */
  static async start(o: DashboardServerOptions): Promise<DashboardServer> {
    const server = http.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'EADDRINUSE' || e.code === 'EACCES')
          reject(
            new ConfigError(
              `${o.portField}: port ${o.port} on ${HOST} ${e.code === 'EACCES' ? 'may not be used by this user' : 'is in use'}`,
              { hint: `choose another port, or ${o.portField} 0 for any free one` },
            ),
          );
        else reject(e);
      });
      server.listen(o.port, HOST, () => resolve());
    });
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : o.port;
    return new DashboardServer(server, port, o);
  }

  setOverride(o: RunInfoOverride): void {
    this.reader.setOverride(o);
    this.tick();
  }

  /** Sends what is new, then `end`, and stops. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.tick();
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    for (const c of this.clients) c.end(sse('end', {}));
    this.clients.clear();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  /** Reads the folder and sends what changed to every client. */
  private tick(): void {
    if (this.closed) return;
    const { records, reset } = this.reader.poll();
    if (reset) for (const c of this.clients) c.write(sse('reset', {}));
    const first = this.reader.records.length - records.length;
    if (records.length > 0) {
      const text = records.map((r, k) => sse('record', r, first + k)).join('');
      for (const c of this.clients) c.write(text);
    }
    const info = JSON.stringify(this.reader.info());
    if (info !== this.lastInfo) {
      this.lastInfo = info;
      for (const c of this.clients) c.write(`event: run\ndata: ${info}\n\n`);
    }
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    // a page of another site that resolves its name to 127.0.0.1 (DNS rebinding) reads nothing
    const host = (req.headers.host ?? '').replace(/:\d+$/, '');
    if (host !== HOST && host !== 'localhost') {
      res.writeHead(403, { 'content-type': 'text/plain' }).end('forbidden host\n');
      return;
    }
    const url = new URL(req.url ?? '/', `http://${HOST}`);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const asset = this.assets[url.pathname];
    if (url.pathname === '/' || url.pathname === '/index.html') {
      const body = dashboardPage({ title: this.reader.outputDir });
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache' });
      res.end(body);
    } else if (asset !== undefined) {
      res.writeHead(200, { 'content-type': asset.type, 'cache-control': 'max-age=3600' });
      res.end(asset.body);
    } else if (url.pathname === '/api/run') {
      this.tick();
      const body = JSON.stringify({ ...this.reader.info(), records: this.reader.records });
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-cache' });
      res.end(body);
    } else if (url.pathname === '/api/events') this.events(req, res, url);
    else res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  }

  /**
   * The stream starts after the Last-Event-ID a reconnecting client sends, else at `?from=N` (the
   * records a page already has from /api/run), else with the records written from now on.
   */
  private events(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    this.tick();
    const records = this.reader.records;
    const last = Number(req.headers['last-event-id']);
    const from = Number(url.searchParams.get('from'));
    const start = Math.max(
      0,
      Math.min(
        records.length,
        Number.isInteger(last) && req.headers['last-event-id'] !== undefined
          ? last + 1
          : url.searchParams.has('from') && Number.isInteger(from)
            ? from
            : records.length,
      ),
    );
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.write(`retry: ${this.o.retryMs ?? 2000}\n\n`);
    res.write(`event: run\ndata: ${this.lastInfo}\n\n`);
    res.write(
      records
        .slice(start)
        .map((r, k) => sse('record', r, start + k))
        .join(''),
    );
    this.clients.add(res);
    req.on('close', () => this.clients.delete(res));
  }
}
