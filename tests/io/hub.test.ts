/**
 * Hub download against a real HTTP server on loopback that answers like the Hub: the model-info API
 * (`/api/models/{repo}/revision/{rev}`) and the resolve endpoint (`/{repo}/resolve/{rev}/{file}`,
 * with X-Repo-Commit and ETag headers, and a redirect for weights as the Hub does for LFS files).
 * Files land in the Hugging Face cache layout under HF_HOME; HF_TOKEN is sent; a gated repository
 * without a token gets a clear error; HF_HUB_OFFLINE=1 reuses the cache.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { QtuneError } from '../../src/errors.js';
import { downloadModel } from '../../src/io/hub.js';
import { loadModel } from '../../src/models/load.js';
import { createTinyModel } from '../../src/models/tiny.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-hub-'));
const repoDir = path.join(tmp, 'repo');
const COMMIT = 'a'.repeat(40);
const TOKEN = 'hf_secret_test_token';

describe('Hub download (loopback server)', () => {
  let server: Server;
  let endpoint = '';
  const requests: { url: string; auth: string | undefined }[] = [];
  const saved: Record<string, string | undefined> = {};

  before(async () => {
    createTinyModel(repoDir, { hiddenSize: 64, intermediateSize: 128, layers: 1, heads: 4, kvHeads: 2 });
    const files = readdirSync(repoDir);
    server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      requests.push({ url: url.pathname, auth: req.headers.authorization });
      const gated = url.pathname.includes('gated-org/');
      if (gated && req.headers.authorization !== `Bearer ${TOKEN}`) {
        res.writeHead(401).end('unauthorized');
        return;
      }
      const info = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
      if (info !== null) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            id: info[1],
            sha: COMMIT,
            siblings: [...files, 'README.md'].map((f) => ({ rfilename: f })),
          }),
        );
        return;
      }
      const lfs = /^\/lfs\/(.+)$/.exec(url.pathname);
      const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
      const file = lfs?.[1] ?? resolve?.[3];
      if (file === undefined || !files.includes(file)) {
        res.writeHead(404).end();
        return;
      }
      const body = readFileSync(path.join(repoDir, file));
      const etag = createHash('sha256').update(body).digest('hex');
      if (resolve !== null && file.endsWith('.safetensors')) {
        // the Hub redirects LFS files to a CDN; the etag of the content travels as X-Linked-Etag
        res
          .writeHead(302, { location: `/lfs/${file}`, 'x-repo-commit': COMMIT, 'x-linked-etag': `"${etag}"` })
          .end();
        return;
      }
      res.writeHead(200, { 'x-repo-commit': COMMIT, etag: `"${etag}"`, 'content-length': body.length });
      res.end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    for (const k of ['HF_HOME', 'HF_ENDPOINT', 'HF_TOKEN', 'HF_HUB_OFFLINE', 'HF_HUB_CACHE'])
      saved[k] = process.env[k];
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
    rmSync(tmp, { recursive: true, force: true });
  });

  it('downloads into the HF cache layout and loads the model from a Hub id', async () => {
    const loaded = await loadModel('test-org/tiny-llama', { backend: cpuBackend() });
    try {
      assert.equal(loaded.config.hidden_size, 64);
      assert.deepEqual(loaded.tokenizer.encode('Ishmael'), loaded.tokenizer.encode('Ishmael'));
    } finally {
      loaded.dispose();
    }
    const cache = path.join(tmp, 'hf-home', 'hub', 'models--test-org--tiny-llama');
    assert.equal(readFileSync(path.join(cache, 'refs', 'main'), 'utf8'), COMMIT);
    const snap = path.join(cache, 'snapshots', COMMIT);
    assert.ok(readdirSync(snap).includes('model.safetensors'));
    assert.ok(!readdirSync(snap).includes('README.md'), 'only the files loading needs');
    assert.match(readlinkSync(path.join(snap, 'model.safetensors')), /^\.\.\/\.\.\/blobs\/[0-9a-f]{64}$/);
    const blob = path.resolve(snap, readlinkSync(path.join(snap, 'config.json')));
    assert.deepEqual(readFileSync(blob), readFileSync(path.join(repoDir, 'config.json')));
  });

  it('a second load reuses the cache; HF_HUB_OFFLINE=1 works without the server', async () => {
    const before = requests.length;
    await downloadModel('test-org/tiny-llama');
    assert.equal(requests.length, before + 1, 'only the model info is asked again');
    process.env['HF_HUB_OFFLINE'] = '1';
    try {
      const snap = await downloadModel('test-org/tiny-llama');
      assert.ok(snap.endsWith(COMMIT));
      assert.equal(requests.length, before + 1);
      await assert.rejects(
        downloadModel('test-org/never-downloaded'),
        (e: unknown) => e instanceof QtuneError && e.message.includes('HF_HUB_OFFLINE'),
      );
    } finally {
      delete process.env['HF_HUB_OFFLINE'];
    }
  });

  it('a gated repository needs HF_TOKEN, which is sent as a bearer token', async () => {
    await assert.rejects(
      downloadModel('gated-org/tiny'),
      (e: unknown) =>
        e instanceof QtuneError && e.message.includes('401') && (e.hint ?? '').includes('HF_TOKEN'),
    );
    process.env['HF_TOKEN'] = TOKEN;
    try {
      const snap = await downloadModel('gated-org/tiny');
      assert.ok(readdirSync(snap).includes('tokenizer.json'));
      assert.ok(
        requests.filter((r) => r.url.includes('gated-org')).some((r) => r.auth === `Bearer ${TOKEN}`),
      );
    } finally {
      delete process.env['HF_TOKEN'];
    }
  });

  it('a repository that does not exist is a clear error', async () => {
    await assert.rejects(
      downloadModel('test-org/missing', { endpoint: `${endpoint}/nothing-here` }),
      (e: unknown) => e instanceof QtuneError && e.message.includes('404'),
    );
  });
});
