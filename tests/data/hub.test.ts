/**
 * Hub datasets against a real HTTP server on loopback that answers like the Hub for dataset
 * repositories: `/api/datasets/{repo}/revision/{rev}` and `/datasets/{repo}/resolve/{rev}/{file}`.
 * The split's JSON/JSONL files land in the HF cache layout (`datasets--org--name`); HF_HUB_OFFLINE=1
 * reuses them.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync, readdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadDataset } from '../../src/data/dataset.js';
import { loadRecords } from '../../src/data/records.js';
import { QtuneError } from '../../src/errors.js';
import { scratchDir, tinyTokenizer } from './helpers.js';

const COMMIT = 'b'.repeat(40);
const line = (o: unknown): string => JSON.stringify(o) + '\n';
const FILES: Record<string, string> = {
  'README.md': '# sql\n',
  'data/train.jsonl': [0, 1, 2, 3, 4, 5]
    .map((i) =>
      line({
        context: `CREATE TABLE ships (name VARCHAR, masts INTEGER)`,
        question: `Which ships have ${i} masts?`,
        answer: `SELECT name FROM ships WHERE masts = ${i}`,
      }),
    )
    .join(''),
  'data/test.jsonl': line({
    context: 'CREATE TABLE crew (name VARCHAR)',
    question: 'Who is aboard?',
    answer: 'SELECT name FROM crew',
  }),
  'data/train.parquet': 'PAR1',
};

describe('Hub datasets (loopback server)', () => {
  const tmp = scratchDir('hub');
  let server: Server;
  let endpoint = '';
  const requests: string[] = [];
  const saved: Record<string, string | undefined> = {};

  before(async () => {
    server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      requests.push(url.pathname);
      if (/^\/api\/datasets\/test-org\/sql\/revision\/main$/.test(url.pathname)) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            id: 'test-org/sql',
            sha: COMMIT,
            siblings: Object.keys(FILES).map((f) => ({ rfilename: f })),
          }),
        );
        return;
      }
      const m = /^\/datasets\/test-org\/sql\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
      const body = m === null ? undefined : FILES[m[2]!];
      if (body === undefined || m![1] !== COMMIT) {
        res.writeHead(404).end();
        return;
      }
      const etag = createHash('sha256').update(body).digest('hex');
      res.writeHead(200, { 'x-repo-commit': COMMIT, etag: `"${etag}"` });
      res.end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    for (const k of ['HF_HOME', 'HF_ENDPOINT', 'HF_HUB_OFFLINE', 'HF_HUB_CACHE']) saved[k] = process.env[k];
    process.env['HF_HOME'] = path.join(tmp, 'hf-home');
    process.env['HF_ENDPOINT'] = endpoint;
    delete process.env['HF_HUB_CACHE'];
    delete process.env['HF_HUB_OFFLINE'];
  });

  after(() => {
    server.close();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) Reflect.deleteProperty(process.env, k);
      else process.env[k] = v;
    }
  });

  it('downloads the split’s JSON files into the HF cache layout and tokenizes them', async () => {
    const tok = tinyTokenizer('qwen2_5');
    const data = await loadDataset({ path: 'test-org/sql', format: 'sql', val_size: 2 }, tok, 96);
    assert.equal(data.train.length, 4);
    assert.equal(data.validation!.length, 2);
    const cache = path.join(tmp, 'hf-home', 'hub', 'datasets--test-org--sql');
    assert.equal(readFileSync(path.join(cache, 'refs', 'main'), 'utf8'), COMMIT);
    const snap = path.join(cache, 'snapshots', COMMIT);
    assert.deepEqual(
      readdirSync(path.join(snap, 'data')),
      ['train.jsonl'],
      'only the train split, only JSON',
    );
    assert.match(
      readlinkSync(path.join(snap, 'data', 'train.jsonl')),
      /^\.\.\/\.\.\/\.\.\/blobs\/[0-9a-f]{64}$/,
    );
    assert.ok(requests.includes(`/datasets/test-org/sql/resolve/${COMMIT}/data/train.jsonl`));
    const test = await loadRecords('test-org/sql', { split: 'test' });
    assert.equal(test.length, 1);
    assert.equal(test[0]!.value['question'], 'Who is aboard?');
    assert.ok(test[0]!.file.endsWith(path.join('data', 'test.jsonl')), 'records name their cached file');
  });

  it('a split without files and a missing file are clear errors; offline reuses the cache', async () => {
    await assert.rejects(
      loadRecords('test-org/sql', { split: 'validation' }),
      (e: unknown) =>
        e instanceof QtuneError &&
        /has no file for split "validation"/.test(e.message) &&
        /data\/test\.jsonl/.test(e.message),
    );
    await assert.rejects(
      loadRecords('test-org/sql', { file: 'data/dev.jsonl' }),
      /dataset test-org\/sql has no file data\/dev\.jsonl/,
    );
    const before = requests.length;
    process.env['HF_HUB_OFFLINE'] = '1';
    try {
      assert.equal((await loadRecords('test-org/sql')).length, 6);
      assert.equal(requests.length, before, 'no request offline');
      await assert.rejects(loadRecords('test-org/never'), /HF_HUB_OFFLINE/);
    } finally {
      delete process.env['HF_HUB_OFFLINE'];
    }
  });
});
