/**
 * The live dashboard (src/report/dashboard), over the run folder of a real 2-step `qtune train` of
 * the tiny model: `/api/run` over real HTTP gives metrics.jsonl's rows as the file holds them (read
 * here with JSON.parse, line by line), the config file, the checkpoints and the placement;
 * `/api/events` is a Server-Sent Events stream (retry, keepalive comments, ids) in which a row
 * appended to the file arrives as an event, and a client that reconnects with Last-Event-ID gets
 * what it missed. The page, opened in headless Chromium (skipped, with the reason, when there is
 * none), draws ≥ 2 points on every chart and shows an appended sample; its screenshot is kept in
 * dist/test-artifacts/. `qtune train --dashboard` answers while it trains and streams its steps;
 * `qtune dashboard` refuses a folder without a run and a port in use, in one line each, exit 2.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  appendFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTinyModel } from '../../src/models/tiny.js';
import { placementFromLog } from '../../src/report/dashboard/run-reader.js';
import { DashboardServer } from '../../src/report/dashboard/server.js';
import { startDashboardWorker } from '../../src/report/dashboard/start.js';
import { BIN, ROOT, qtune, tinyTrainArgs } from '../helpers/cli.js';
import { Chromium, findChromium } from '../helpers/chromium.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-dashboard-'));
const tiny = path.join(tmp, 'tiny-model');
const run = path.join(tmp, 'run');
const ARTIFACTS = path.join(ROOT, 'dist', 'test-artifacts');
after(() => rmSync(tmp, { recursive: true, force: true }));

const SHORT = [
  ...['--context_length', '64', '--max_samples', '24', '--batch_size', '2'],
  ...['--gradient_accumulation_steps', '1', '--logging_steps', '1'],
];
const ENV = { QTUNE_THREADS: '1' };

/** metrics.jsonl's rows, read here without qtune's code. */
function rowsOf(dir: string): Record<string, unknown>[] {
  return readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

const dataOf = (e: SseEvent): Record<string, unknown> => JSON.parse(e.data) as Record<string, unknown>;

/** An SSE stream parsed as the EventSource spec reads it (fields per line, a blank line ends one). */
class SseClient {
  readonly events: SseEvent[] = [];
  readonly comments: string[] = [];
  retry: number | null = null;
  contentType = '';
  ended = false;
  private readonly req: http.ClientRequest;
  private buffer = '';
  private waiters: (() => void)[] = [];

  constructor(url: string, headers: Record<string, string> = {}) {
    this.req = http.get(url, { headers }, (res) => {
      this.contentType = String(res.headers['content-type']);
      res.on('data', (d: Buffer) => {
        this.buffer += d.toString('utf8');
        let end: number;
        while ((end = this.buffer.indexOf('\n\n')) >= 0) {
          this.block(this.buffer.slice(0, end));
          this.buffer = this.buffer.slice(end + 2);
        }
        this.wake();
      });
      res.on('end', () => {
        this.ended = true;
        this.wake();
      });
    });
    this.req.on('error', () => undefined);
  }

  private block(text: string): void {
    const e: SseEvent = { event: 'message', data: '' };
    let data: string[] | null = null;
    for (const line of text.split('\n')) {
      if (line.startsWith(':')) {
        this.comments.push(line.slice(1).trim());
        continue;
      }
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'retry') this.retry = Number(value);
      else if (field === 'id') e.id = value;
      else if (field === 'event') e.event = value;
      else if (field === 'data') (data ??= []).push(value);
    }
    if (data !== null) this.events.push({ ...e, data: data.join('\n') });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Waits until `ok()` holds (checked at each chunk), failing after `ms`. */
  async until(ok: () => boolean, ms: number, what: string): Promise<void> {
    const end = Date.now() + ms;
    while (!ok()) {
      if (Date.now() > end)
        assert.fail(`no ${what} within ${ms} ms; events: ${this.events.map((e) => e.event).join(',')}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  records(): SseEvent[] {
    return this.events.filter((e) => e.event === 'record');
  }

  close(): void {
    this.req.destroy();
  }
}

const sampleRow = (step: number) => ({
  kind: 'sample',
  step,
  epoch: 0.05,
  time: Date.now() / 1000,
  prompt: 'Name a colour of the sea.',
  completion: 'Blue, and grey under clouds.',
  reward: 0.5,
});

before(() => {
  createTinyModel(tiny, { hiddenSize: 64, intermediateSize: 128, layers: 2, heads: 4, kvHeads: 2 });
  const r = qtune(
    [...tinyTrainArgs(tiny, run), ...SHORT, '--max_steps', '2', '--eval_steps', '1', '--save_steps', '2'],
    ENV,
  );
  assert.equal(r.code, 0, r.stderr);
});

describe('the dashboard server over a real run folder', () => {
  it('/api/run is the records of metrics.jsonl, the config file, the checkpoints and the placement', async () => {
    const server = await DashboardServer.start({ outputDir: run, port: 0, portField: '--port' });
    try {
      const r = await get(`${server.url}api/run`);
      assert.equal(r.status, 200);
      const body = JSON.parse(r.body) as {
        records: Record<string, unknown>[];
        config: string;
        checkpoints: { name: string; step: number }[];
        placement: string[];
        running: boolean;
      };
      assert.deepEqual(body.records, rowsOf(run));
      assert.deepEqual(
        body.records.filter((x) => x['kind'] === 'step').map((x) => x['step']),
        [1, 2],
      );
      assert.equal(body.config, readFileSync(path.join(run, 'qtune_config.yaml'), 'utf8'));
      assert.deepEqual(
        body.checkpoints.map((c) => [c.name, c.step]),
        [['checkpoint-2', 2]],
      );
      assert.deepEqual(body.placement, ['CPU: the whole model']); // train.log: "trained 2 steps (lora on CPU)"
      assert.equal(body.running, false); // no .qtune-lock: the run has ended
      assert.match((await get(server.url)).body, /<figure class="chart" id="chart-loss"/);
      assert.equal((await get(`${server.url}uplot.js`)).status, 200);
      assert.equal((await get(`${server.url}nothing`)).status, 404);
      // another site's name resolved to 127.0.0.1 (DNS rebinding) is refused
      assert.equal((await get(`${server.url}api/run`, { host: 'evil.example:80' })).status, 403);
    } finally {
      await server.close();
    }
  });

  it('/api/events: retry and keepalive, the records with ids, an appended row as an event, Last-Event-ID, end', async () => {
    const dir = path.join(tmp, 'events');
    cpSync(run, dir, { recursive: true });
    const rows = rowsOf(dir);
    const server = await DashboardServer.start({
      outputDir: dir,
      port: 0,
      portField: '--port',
      pollMs: 50,
      keepaliveMs: 200,
      retryMs: 1500,
    });
    const from0 = new SseClient(`${server.url}api/events?from=0`);
    const fresh = new SseClient(`${server.url}api/events`); // only what comes from now on
    try {
      await from0.until(() => from0.records().length === rows.length, 10_000, 'records');
      assert.match(from0.contentType, /^text\/event-stream/);
      assert.equal(from0.retry, 1500);
      assert.deepEqual(
        from0.records().map((e) => [Number(e.id), dataOf(e)]),
        rows.map((row, i) => [i, row]),
      );
      const run0 = from0.events.find((e) => e.event === 'run');
      assert.ok(run0 !== undefined && (JSON.parse(run0.data) as { outputDir: string }).outputDir === dir);
      await from0.until(() => from0.comments.includes('keepalive'), 5000, 'keepalive comment');
      // a row appended in two writes (a line being written waits for its newline)
      const row = sampleRow(2);
      const line = JSON.stringify(row);
      appendFileSync(path.join(dir, 'metrics.jsonl'), line.slice(0, 20));
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(from0.records().length, rows.length, 'half a line is no record');
      appendFileSync(path.join(dir, 'metrics.jsonl'), line.slice(20) + '\n');
      await from0.until(() => from0.records().length === rows.length + 1, 10_000, 'the appended row');
      const last = from0.records().at(-1)!;
      assert.equal(Number(last.id), rows.length);
      assert.deepEqual(JSON.parse(last.data), row);
      await fresh.until(() => fresh.records().length === 1, 10_000, 'the appended row (no from)');
      assert.equal(fresh.records()[0]!.data, line);
      // a client that reconnects after the event before last gets the last one only
      const again = new SseClient(`${server.url}api/events?from=0`, {
        'last-event-id': String(rows.length - 1),
      });
      await again.until(() => again.records().length >= 1, 10_000, 'the missed record');
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(
        again.records().map((e) => Number(e.id)),
        [rows.length],
      );
      again.close();
      await server.close();
      await from0.until(() => from0.ended, 5000, 'the end of the stream');
      assert.equal(from0.events.at(-1)!.event, 'end');
    } finally {
      from0.close();
      fresh.close();
      await server.close();
    }
  });

  it('on its worker thread it answers while the main thread is held, as a training step holds it', async () => {
    const dash = await startDashboardWorker({ outputDir: run, port: 0, portField: 'dashboard_port' });
    const marker = path.join(tmp, 'answered.json');
    try {
      // another process asks for /api/run and writes down what it got
      const client = spawn(
        process.execPath,
        [
          '-e',
          `require('http').get(${JSON.stringify(`${dash.url}api/run`)}, (r) => { let body = ''; r.on('data', (d) => (body += d)); r.on('end', () => require('fs').writeFileSync(${JSON.stringify(marker)}, JSON.stringify({ status: r.statusCode, body }))); });`,
        ],
        { stdio: 'ignore' },
      );
      const exited = new Promise((r) => client.once('exit', r));
      // this thread blocks (no event loop turn) until the answer is on disk, 60 s at most
      const t0 = Date.now();
      const cell = new Int32Array(new SharedArrayBuffer(4));
      while (!existsSync(marker) && Date.now() - t0 < 60_000) Atomics.wait(cell, 0, 0, 20);
      assert.ok(existsSync(marker), 'no answer while the main thread was held');
      await exited;
      const got = JSON.parse(readFileSync(marker, 'utf8')) as { status: number; body: string };
      assert.equal(got.status, 200);
      assert.deepEqual((JSON.parse(got.body) as { records: unknown[] }).records, rowsOf(run));
    } finally {
      await dash.close();
    }
  });

  it('a port in use is a one-line error naming the port', async () => {
    const first = await DashboardServer.start({ outputDir: run, port: 0, portField: 'dashboard_port' });
    try {
      await assert.rejects(
        DashboardServer.start({ outputDir: run, port: first.port, portField: 'dashboard_port' }),
        (e: Error) => {
          assert.equal(
            e.message,
            `dashboard_port: port ${first.port} on 127.0.0.1 is in use (choose another port, or dashboard_port 0 for any free one)`,
          );
          return true;
        },
      );
    } finally {
      await first.close();
    }
  });

  it("placement comes from train.log's placement lines, else from its summary line", () => {
    const log = [
      '# qtune train, started 2026-01-01T00:00:00.000Z',
      'placement: Vulkan0: blocks 0-1; embeddings, final norm, LM head',
      'placement: CPU: blocks 2-3',
      'trained 4 steps (lora on Vulkan0+CPU): loss 3.0 → 2.0',
    ].join('\n');
    assert.deepEqual(placementFromLog(log), [
      'Vulkan0: blocks 0-1; embeddings, final norm, LM head',
      'CPU: blocks 2-3',
    ]);
    assert.deepEqual(placementFromLog('trained 2 steps (qlora on CPU × 2 ranks): loss 1 → 1'), [
      'CPU: the whole model',
    ]);
    assert.deepEqual(placementFromLog(''), []);
  });
});

const chromium = findChromium();

describe('the page in headless Chromium', () => {
  it(
    'after two steps every chart holds ≥ 2 points, an appended sample shows, a screenshot is kept, and a restarted server is picked up',
    {
      skip:
        chromium === null
          ? 'no chromium on PATH (apt-get install chromium, or set CHROMIUM to the binary)'
          : false,
    },
    async (t) => {
      const dir = path.join(tmp, 'page');
      cpSync(run, dir, { recursive: true });
      const server = await DashboardServer.start({
        outputDir: dir,
        port: 0,
        portField: '--port',
        pollMs: 100,
      });
      const browser = await Chromium.launch(chromium!);
      try {
        await browser.navigate(server.url);
        await browser.waitFor("document.body.getAttribute('data-connection') === 'live'", 30_000);
        const points = (id: string): Promise<number> =>
          browser.evaluate<number>(
            `Number(document.getElementById('chart-${id}').getAttribute('data-points'))`,
          );
        await browser.waitFor("Number(document.body.getAttribute('data-steps')) >= 2", 30_000);
        for (const id of ['loss', 'lr', 'grad_norm', 'tokens_per_s', 'memory'])
          assert.ok((await points(id)) >= 2, `chart ${id} has ${await points(id)} points`);
        // uPlot drew them: one canvas per chart
        assert.equal(await browser.evaluate<number>("document.querySelectorAll('#charts canvas').length"), 5);
        // loss: 2 training points and the 2 evaluations (eval_steps 1)
        const evals = rowsOf(dir).filter((r) => r['kind'] === 'eval').length;
        assert.equal(
          await browser.evaluate<number>(
            "Number(document.getElementById('chart-loss').getAttribute('data-total'))",
          ),
          2 + evals,
        );
        assert.match(
          await browser.evaluate<string>("document.getElementById('checkpoints').textContent"),
          /checkpoint-2 \(step 2/,
        );
        assert.match(
          await browser.evaluate<string>("document.getElementById('placement').textContent"),
          /CPU: the whole model/,
        );
        assert.match(
          await browser.evaluate<string>("document.getElementById('config').textContent"),
          /train_type: lora/,
        );
        // live: a sample row written to metrics.jsonl reaches the page through /api/events
        appendFileSync(path.join(dir, 'metrics.jsonl'), JSON.stringify(sampleRow(2)) + '\n');
        await browser.waitFor(
          "document.getElementById('samples').getAttribute('data-samples') === '1'",
          30_000,
        );
        const samples = await browser.evaluate<string>("document.getElementById('samples').textContent");
        assert.match(samples, /Name a colour of the sea\./);
        assert.match(samples, /Blue, and grey under clouds\./);
        assert.match(samples, /reward: 0\.5/);
        const png = await browser.screenshot();
        assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
        mkdirSync(ARTIFACTS, { recursive: true });
        const file = path.join(ARTIFACTS, 'dashboard.png');
        writeFileSync(file, png);
        t.diagnostic(`screenshot: ${file}`);
        // the server stops (the page is told: ended) and another starts on the same port: the page
        // loads the run again by itself, with a row written meanwhile
        const port = server.port;
        await server.close();
        await browser.waitFor("document.body.getAttribute('data-connection') === 'ended'", 30_000);
        appendFileSync(path.join(dir, 'metrics.jsonl'), JSON.stringify(sampleRow(3)) + '\n');
        const again = await DashboardServer.start({ outputDir: dir, port, portField: '--port', pollMs: 100 });
        try {
          await browser.waitFor(
            "document.getElementById('samples').getAttribute('data-samples') === '2' && document.body.getAttribute('data-connection') === 'live'",
            30_000,
          );
        } finally {
          await again.close();
        }
      } finally {
        await browser.close();
        await server.close();
      }
    },
  );
});

describe('the dashboard commands', () => {
  it('qtune train --dashboard answers while it trains, streams its steps and ends the stream with the run', async () => {
    const out = path.join(tmp, 'live');
    const child = spawn(
      process.execPath,
      [
        BIN,
        ...tinyTrainArgs(tiny, out),
        ...SHORT,
        '--max_steps',
        '6',
        '--eval_steps',
        '3',
        '--dashboard',
        '--port',
        '0',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...ENV } },
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    try {
      const end = Date.now() + 240_000;
      let m: RegExpExecArray | null;
      while ((m = /^dashboard: (http:\/\/127\.0\.0\.1:\d+\/)$/m.exec(stderr)) === null) {
        assert.ok(child.exitCode === null && Date.now() < end, `no dashboard line:\n${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const url = m[1]!;
      const stream = new SseClient(`${url}api/events?from=0`);
      const first = await get(`${url}api/run`);
      assert.equal(first.status, 200);
      const info = JSON.parse(first.body) as { running: boolean; config: string; outputDir: string };
      assert.equal(info.running, true);
      assert.equal(info.outputDir, out);
      assert.match(info.config, /^dashboard: true$/m); // the run's config before qtune_config.yaml exists
      await stream.until(() => stream.records().some((e) => dataOf(e)['step'] === 1), 240_000, 'step 1');
      // the worker answers while the main thread trains (a step of this run takes ~0.3 s or more)
      const t0 = Date.now();
      const during = await get(`${url}api/run`);
      assert.equal(during.status, 200);
      assert.ok(Date.now() - t0 < 5000, `/api/run took ${Date.now() - t0} ms during training`);
      await stream.until(() => stream.ended, 240_000, 'the end of the stream');
      assert.equal(await done, 0, stderr);
      assert.equal(stream.events.at(-1)!.event, 'end');
      const steps = stream
        .records()
        .map((e) => JSON.parse(e.data) as { kind: string; step: number })
        .filter((r) => r.kind === 'step')
        .map((r) => r.step);
      assert.deepEqual(steps, [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(stream.records().map(dataOf), rowsOf(out));
      assert.match(
        readFileSync(path.join(out, 'train.log'), 'utf8'),
        /^dashboard: http:\/\/127\.0\.0\.1:\d+\/$/m,
      );
      stream.close();
    } finally {
      child.kill();
      await done;
    }
  });

  it('qtune dashboard serves a finished run until SIGTERM', async () => {
    const child = spawn(process.execPath, [BIN, 'dashboard', run], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const end = Date.now() + 60_000;
    let m: RegExpExecArray | null;
    while ((m = /^dashboard: (http:\/\/127\.0\.0\.1:\d+\/)$/m.exec(stderr)) === null) {
      assert.ok(child.exitCode === null && Date.now() < end, `no dashboard line:\n${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const body = JSON.parse((await get(`${m[1]!}api/run`)).body) as { records: unknown[] };
    assert.deepEqual(body.records, rowsOf(run));
    child.kill('SIGTERM');
    assert.equal(await done, 0, stderr);
  });

  it('qtune dashboard: a folder without a run, a missing folder and a port in use are one line each, exit 2', async () => {
    const empty = path.join(tmp, 'empty');
    mkdirSync(empty);
    const r1 = qtune(['dashboard', empty]);
    assert.equal(r1.code, 2);
    assert.equal(
      r1.stderr,
      `qtune: error: dashboard: ${empty} holds no qtune run (no metrics.jsonl, checkpoint-N or qtune_config.yaml) (give the output_dir of a qtune train run)\n`,
    );
    const r2 = qtune(['dashboard', path.join(tmp, 'nowhere')]);
    assert.equal(r2.code, 2);
    assert.match(
      r2.stderr,
      /^qtune: error: dashboard: \S+nowhere does not exist \(give the output_dir of a qtune train run\)\n$/,
    );
    const held = net.createServer();
    await new Promise<void>((r) => held.listen(0, '127.0.0.1', () => r()));
    const port = (held.address() as net.AddressInfo).port;
    try {
      const r3 = qtune(['dashboard', run, '--port', String(port)]);
      assert.equal(r3.code, 2);
      assert.equal(
        r3.stderr,
        `qtune: error: --port: port ${port} on 127.0.0.1 is in use (choose another port, or --port 0 for any free one)\n`,
      );
      const r4 = qtune(
        [...tinyTrainArgs(tiny, path.join(tmp, 'busy')), ...SHORT, '--dashboard', '--port', String(port)],
        ENV,
      );
      assert.equal(r4.code, 2);
      assert.match(
        r4.stderr,
        new RegExp(
          `^qtune: error: dashboard_port: port ${port} on 127\\.0\\.0\\.1 is in use \\(choose another port, or dashboard_port 0 for any free one\\)$`,
          'm',
        ),
      );
      const r5 = qtune(['dashboard', run, '--port', '70000']);
      assert.equal(r5.code, 2);
      assert.match(r5.stderr, /^qtune: error: dashboard: --port 70000 is not a port/);
    } finally {
      held.close();
    }
  });
});
