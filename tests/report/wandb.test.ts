/**
 * Weights & Biases against a real HTTP server on loopback that answers like W&B: GraphQL `viewer`
 * and `upsertBucket` at /graphql, the file stream at /files/{entity}/{project}/{run}/file_stream.
 * WANDB_BASE_URL points at it. Checked: the run's creation (project, name, config), history rows
 * with their steps and values and consistent offsets, sent while the run goes, the basic-auth
 * header, the run marked finished; no key is a one-line ConfigError; a server that is down or fails
 * for a while costs warnings, not the training.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { ConfigError } from '../../src/errors.js';
import { createRunLoggers } from '../../src/report/logger.js';
import { findWandbApiKey } from '../../src/report/wandb-client.js';
import { TextCollector, resultOf, runRecords } from './records.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-wandb-'));
const KEY = 'local-0123456789abcdef';
const ENV = [
  'WANDB_API_KEY',
  'WANDB_BASE_URL',
  'WANDB_ENTITY',
  'WANDB_PROJECT',
  'WANDB_NAME',
  'WANDB_RUN_ID',
  'NETRC',
];

interface Req {
  path: string;
  auth: string | undefined;
  body: Record<string, unknown>;
  /** Whether the server took it (answered 200). */
  ok: boolean;
}

async function body(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
}

/** A W&B-like server; `failStreams` file-stream posts are answered 500 first. */
async function wandbServer(opts: { failStreams?: number } = {}) {
  const requests: Req[] = [];
  let fails = opts.failStreams ?? 0;
  const server: Server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://x');
      const b = await body(req);
      const rec: Req = { path: url.pathname, auth: req.headers.authorization, body: b, ok: true };
      requests.push(rec);
      if (req.headers.authorization !== `Basic ${Buffer.from(`api:${KEY}`).toString('base64')}`) {
        res.writeHead(401).end('{"errors":[{"message":"unauthorized"}]}');
        return;
      }
      if (url.pathname === '/graphql') {
        const q = String(b['query']);
        const v = b['variables'] as Record<string, string>;
        res.writeHead(200, { 'content-type': 'application/json' });
        if (q.includes('viewer'))
          res.end(JSON.stringify({ data: { viewer: { id: 'u1', entity: 'test-entity' } } }));
        else if (q.includes('upsertBucket'))
          res.end(
            JSON.stringify({
              data: {
                upsertBucket: {
                  bucket: {
                    id: 'b1',
                    name: v['name'],
                    displayName: v['displayName'] ?? 'brisk-sun-1',
                    project: { id: 'p1', name: v['project'], entity: { id: 'e1', name: v['entity'] } },
                  },
                  inserted: true,
                },
              },
            }),
          );
        else res.end(JSON.stringify({ errors: [{ message: 'unknown query' }] }));
        return;
      }
      if (/^\/files\/[^/]+\/[^/]+\/[^/]+\/file_stream$/.test(url.pathname)) {
        if (fails > 0) {
          fails--;
          rec.ok = false;
          res.writeHead(500).end('busy');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"exitcode":null,"limits":{}}');
        return;
      }
      res.writeHead(404).end();
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { server, url, requests, close: () => new Promise<void>((r) => server.close(() => r())) };
}

/** History rows of the file-stream posts the server took, checking each post's offset follows the last. */
function historyOf(requests: readonly Req[]): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = [];
  for (const r of requests.filter((q) => q.ok)) {
    const files = r.body['files'] as Record<string, { offset: number; content: string[] }> | undefined;
    const h = files?.['wandb-history.jsonl'];
    if (h === undefined) continue;
    assert.ok(h.offset <= rows.length, `offset ${h.offset} after ${rows.length} rows`);
    rows.splice(
      h.offset,
      rows.length - h.offset,
      ...h.content.map((l) => JSON.parse(l) as Record<string, unknown>),
    );
  }
  return rows;
}

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Weights & Biases (loopback server)', () => {
  const saved: Record<string, string | undefined> = {};
  before(() => {
    for (const k of ENV) saved[k] = process.env[k];
  });
  beforeEach(() => {
    for (const k of ENV) Reflect.deleteProperty(process.env, k);
    process.env['NETRC'] = path.join(tmp, 'no-netrc');
  });
  afterEach(() => {
    for (const k of ENV) {
      if (saved[k] === undefined) Reflect.deleteProperty(process.env, k);
      else process.env[k] = saved[k];
    }
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('creates the run, streams history rows while it goes, marks it finished', async () => {
    const srv = await wandbServer();
    try {
      process.env['WANDB_API_KEY'] = KEY;
      process.env['WANDB_BASE_URL'] = srv.url;
      process.env['WANDB_RUN_ID'] = 'run12345';
      const out = new TextCollector();
      const run = await createRunLoggers({
        outputDir: path.join(tmp, 'ok'),
        logTo: ['wandb'],
        totalSteps: 10,
        stream: out,
        project: 'qtune-test',
        runName: 'tiny-lora',
        runConfig: { train_type: 'lora', lr: 1e-3 },
        wandbFlushIntervalMs: 50,
      });
      // the run exists before training starts
      assert.match(out.text, new RegExp(`wandb: run ${srv.url}/test-entity/qtune-test/runs/run12345\\n`));
      const gql = srv.requests.filter((r) => r.path === '/graphql');
      assert.equal(gql.length, 2);
      assert.match(String(gql[0]!.body['query']), /viewer/);
      assert.match(String(gql[1]!.body['query']), /upsertBucket/);
      const vars = gql[1]!.body['variables'] as Record<string, unknown>;
      assert.equal(vars['name'], 'run12345');
      assert.equal(vars['project'], 'qtune-test');
      assert.equal(vars['entity'], 'test-entity');
      assert.equal(vars['displayName'], 'tiny-lora');
      assert.deepEqual(JSON.parse(String(vars['config'])), {
        train_type: { value: 'lora', desc: null },
        lr: { value: 1e-3, desc: null },
      });

      const records = runRecords(10, 5);
      for (const r of records.slice(0, 5)) run.log(r);
      // rows go out while the run goes (the 5th waits to be merged with its evaluation)
      await until(() => historyOf(srv.requests).length >= 4);
      for (const r of records.slice(5)) run.log(r);
      await run.close(resultOf(records));

      const rows = historyOf(srv.requests);
      assert.deepEqual(
        rows.map((r) => r['_step']),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
      );
      for (const [i, r] of rows.entries()) {
        const rec = records.find((x) => x.step === i + 1 && x.kind !== 'eval')!;
        assert.equal(r['train/loss'], rec.loss);
        assert.equal(r['train/lr'], rec.lr);
        assert.equal(r['train/grad_norm'], rec.gradNorm);
        assert.equal(r['train/tokens_per_s'], rec.tokensPerS);
        assert.equal(r['memory/engine_mib'], 10 * (i + 1));
        assert.equal(typeof r['_runtime'], 'number');
        assert.ok(Math.abs((r['_timestamp'] as number) - Date.now() / 1000) < 60);
      }
      assert.equal(rows[4]!['eval/loss'], 2.9 - 0.75, 'the evaluation is in its step row');
      assert.equal(rows[9]!['eval/perplexity'], Math.exp(2.9 - 1.5));
      assert.equal(rows[2]!['train/skipped'], 1);
      assert.equal(rows[3]!['eval/loss'], undefined);

      const streams = srv.requests.filter(
        (r) => r.path === '/files/test-entity/qtune-test/run12345/file_stream',
      );
      assert.equal(
        streams.length,
        srv.requests.length - 2,
        'every other request went to the run file stream',
      );
      assert.deepEqual(streams.at(-1)!.body, { complete: true, exitcode: 0 });
      assert.equal(streams.filter((r) => r.body['complete'] === true).length, 1);
      const lastSummary = streams
        .map(
          (r) =>
            (r.body['files'] as Record<string, { content: string[] }> | undefined)?.['wandb-summary.json'],
        )
        .filter((s) => s !== undefined)
        .at(-1)!;
      const summary = JSON.parse(lastSummary.content[0]!) as Record<string, unknown>;
      assert.equal(summary['train/loss'], 1);
      assert.equal(summary['eval/loss'], 2.9 - 1.5);
      assert.equal(summary['_step'], 10);
      for (const r of srv.requests)
        assert.equal(r.auth, `Basic ${Buffer.from(`api:${KEY}`).toString('base64')}`);
      assert.ok(!out.text.includes('warning'), out.text);
    } finally {
      await srv.close();
    }
  });

  it('without a key: a one-line ConfigError before anything is created', async () => {
    process.env['WANDB_BASE_URL'] = 'http://127.0.0.1:9';
    const dir = path.join(tmp, 'nokey');
    await assert.rejects(
      createRunLoggers({ outputDir: dir, logTo: ['wandb', 'tensorboard'], totalSteps: 1, stream: false }),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.message.startsWith('log_to: wandb needs WANDB_API_KEY') &&
        !e.message.includes('\n'),
    );
    assert.throws(() => readFileSync(path.join(dir, 'metrics.jsonl')), /ENOENT/);
  });

  it('finds the key in a netrc file for the API host', () => {
    const netrc = path.join(tmp, 'netrc');
    writeFileSync(
      netrc,
      'machine example.com login a password wrong\nmachine api.wandb.ai\n  login user\n  password from-netrc\n',
    );
    assert.equal(findWandbApiKey('https://api.wandb.ai', { NETRC: netrc }), 'from-netrc');
    assert.equal(findWandbApiKey('https://api.wandb.ai', { NETRC: netrc, WANDB_API_KEY: 'env' }), 'env');
    assert.equal(findWandbApiKey('https://wandb.example.org', { NETRC: netrc }), null);
  });

  it('a server that is down: warnings, and the run goes on', async () => {
    const srv = await wandbServer();
    await srv.close(); // a port nobody listens on
    process.env['WANDB_API_KEY'] = KEY;
    process.env['WANDB_BASE_URL'] = srv.url;
    const out = new TextCollector();
    const dir = path.join(tmp, 'down');
    const run = await createRunLoggers({
      outputDir: dir,
      logTo: ['wandb'],
      totalSteps: 10,
      stream: out,
      wandbFlushIntervalMs: 50,
    });
    const records = runRecords(10, 5);
    for (const r of records) run.log(r);
    await run.close(resultOf(records));
    assert.match(
      out.text,
      /wandb: warning: could not create the run: .*ECONNREFUSED.*; will retry, training goes on/,
    );
    assert.match(out.text, /wandb: warning: 10 rows could not be sent/);
    assert.equal(
      readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trimEnd().split('\n').length,
      records.length,
    );
  });

  it('a server that fails for a while: the rows are sent again, in order', async () => {
    const srv = await wandbServer({ failStreams: 3 });
    try {
      process.env['WANDB_API_KEY'] = KEY;
      process.env['WANDB_BASE_URL'] = srv.url;
      process.env['WANDB_ENTITY'] = 'team';
      const out = new TextCollector();
      const run = await createRunLoggers({
        outputDir: path.join(tmp, 'flaky'),
        logTo: ['wandb'],
        totalSteps: 10,
        stream: out,
        wandbFlushIntervalMs: 30,
      });
      assert.equal(
        srv.requests.filter((r) => String(r.body['query']).includes('viewer')).length,
        0,
        'WANDB_ENTITY',
      );
      const records = runRecords(10, 5);
      for (const r of records.slice(0, 4)) run.log(r);
      // three posts fail, the fourth carries rows 1–3 (step 4 waits for a possible evaluation)
      await until(() => historyOf(srv.requests).length >= 3);
      assert.equal(srv.requests.filter((r) => r.path.endsWith('/file_stream')).length, 4);
      for (const r of records.slice(4)) run.log(r);
      await run.close(resultOf(records));
      assert.deepEqual(
        historyOf(srv.requests).map((r) => r['_step']),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
      );
      assert.match(out.text, /wandb: warning: could not send metrics: .*HTTP 500 busy; will retry/);
      assert.equal(out.text.match(/could not send metrics/g)!.length, 1, 'one warning per failure streak');
      assert.match(out.text, /wandb: warning: sending metrics again/);
      assert.deepEqual(srv.requests.at(-1)!.body, { complete: true, exitcode: 0 });
    } finally {
      await srv.close();
    }
  });

  it('sends while the main thread is busy, as during a synchronous train()', async () => {
    // this server runs on its own thread and notes each request in a file, so the main thread can block
    const log = path.join(tmp, 'busy-requests.jsonl');
    const server = new Worker(
      `const http = require('node:http'); const fs = require('node:fs');
       const { parentPort, workerData } = require('node:worker_threads');
       const s = http.createServer((req, res) => {
         let b = ''; req.on('data', (c) => (b += c)); req.on('end', () => {
           fs.appendFileSync(workerData, JSON.stringify({ path: req.url, body: JSON.parse(b) }) + '\\n');
           const v = JSON.parse(b).variables || {};
           res.end(JSON.stringify(req.url === '/graphql'
             ? { data: { upsertBucket: { bucket: { name: v.name, project: { name: v.project, entity: { name: v.entity } } } } } }
             : {}));
         });
       });
       s.listen(0, '127.0.0.1', () => parentPort.postMessage(s.address().port));`,
      { eval: true, workerData: log },
    );
    try {
      const port = await new Promise<number>((resolve) => server.once('message', resolve));
      process.env['WANDB_API_KEY'] = KEY;
      process.env['WANDB_BASE_URL'] = `http://127.0.0.1:${port}`;
      process.env['WANDB_ENTITY'] = 'team';
      const run = await createRunLoggers({
        outputDir: path.join(tmp, 'busy'),
        logTo: ['wandb'],
        totalSteps: 10,
        stream: new TextCollector(),
        wandbFlushIntervalMs: 20,
      });
      const records = runRecords(10, 1000).filter((r) => r.kind !== 'checkpoint');
      const sent = (): number =>
        readFileSync(log, 'utf8')
          .trimEnd()
          .split('\n')
          .map((l) => JSON.parse(l) as { body: { files?: Record<string, { content: string[] }> } })
          .reduce((n, r) => n + (r.body.files?.['wandb-history.jsonl']?.content.length ?? 0), 0);
      // a "training loop" that never yields: log, then hold the thread for a while
      const hold = new Int32Array(new SharedArrayBuffer(4));
      for (const r of records) {
        run.log(r);
        Atomics.wait(hold, 0, 0, 30);
      }
      let waited = 0;
      while (sent() < 9 && waited < 5000) waited += Atomics.wait(hold, 0, 0, 50) === 'timed-out' ? 50 : 0;
      assert.equal(sent(), 9, 'rows 1–9 went out without the main thread yielding (10 waits for close)');
      await run.close(resultOf(records));
      assert.equal(sent(), 10);
    } finally {
      await server.terminate();
    }
  });
});
