/**
 * Downloads a model (or a dataset's JSON files) from the Hugging Face Hub into the standard cache
 * layout that huggingface_hub, transformers and mlx-lm share, so a model fetched by one is found by
 * the others (datasets live under `datasets--{org}--{name}`, asked for through `/api/datasets/...`
 * and `/datasets/{repo}/resolve/...`):
 *
 *   $HF_HUB_CACHE (default $HF_HOME/hub, HF_HOME default ~/.cache/huggingface)
 *     models--{org}--{name}/refs/{revision}            the commit the revision resolved to
 *     models--{org}--{name}/blobs/{etag}               file contents
 *     models--{org}--{name}/snapshots/{commit}/{file}  symlinks to the blobs
 *
 * HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) is sent as a bearer token; HF_ENDPOINT changes the server;
 * HF_HUB_OFFLINE=1 uses the cache only. Files are downloaded to a temporary name, then renamed.
 */
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { QtuneError } from '../errors.js';

export interface HubOptions {
  revision?: string;
  endpoint?: string;
  token?: string;
  cacheDir?: string;
  /** Log lines about what is being downloaded. */
  log?: (line: string) => void;
}

const REPO_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

/**
 * Whether a model or dataset value names a local path rather than a Hub id: it starts with `./`,
 * `../`, `/`, `~` or a drive letter, holds a backslash, ends with `.gguf`/`.safetensors`, or its
 * first part is a folder here (`out/base` when `out/` exists). Relative paths are taken from the
 * current folder. A missing one is then "does not exist", not a Hub download.
 */
export function looksLikePath(s: string): boolean {
  if (/^(\.{1,2}[\\/]|[\\/~]|[A-Za-z]:)/.test(s) || s.includes('\\')) return true;
  if (/\.(gguf|safetensors)$/i.test(s)) return true;
  const first = s.split('/')[0]!;
  return s.includes('/') && existsSync(first) && statSync(first).isDirectory();
}

/** `org/name` that is not a local path (see {@link looksLikePath}). */
export function isHubId(s: string): boolean {
  return REPO_ID.test(s) && !existsSync(s) && !looksLikePath(s);
}

export function hubCacheDir(o: HubOptions = {}): string {
  if (o.cacheDir !== undefined) return o.cacheDir;
  const env = process.env['HF_HUB_CACHE'];
  if (env) return env;
  const home = process.env['HF_HOME'] || path.join(os.homedir(), '.cache', 'huggingface');
  return path.join(home, 'hub');
}

/** A model or a dataset repository: where the Hub serves it and where the cache keeps it. */
type RepoType = 'model' | 'dataset';

function repoFolder(repo: string, o: HubOptions, type: RepoType = 'model'): string {
  return path.join(hubCacheDir(o), `${type}s--${repo.replace('/', '--')}`);
}

/** Files of a model repository that loading needs. */
function wanted(files: string[]): string[] {
  const base = [
    'config.json',
    'tokenizer.json',
    'tokenizer_config.json',
    'generation_config.json',
    'special_tokens_map.json',
  ];
  const weights = files.includes('model.safetensors.index.json')
    ? files.filter((f) => f === 'model.safetensors.index.json' || /^model-\d+-of-\d+\.safetensors$/.test(f))
    : files.filter((f) => f === 'model.safetensors');
  return [...base.filter((f) => files.includes(f)), ...weights];
}

function token(o: HubOptions): string | undefined {
  return o.token ?? (process.env['HF_TOKEN'] || process.env['HUGGING_FACE_HUB_TOKEN'] || undefined);
}

async function request(url: string, o: HubOptions, init: RequestInit = {}): Promise<Response> {
  const headers: Record<string, string> = { 'user-agent': 'qtune' };
  const t = token(o);
  if (t !== undefined) headers['authorization'] = `Bearer ${t}`;
  let res: Response;
  try {
    res = await fetch(url, { ...init, headers });
  } catch (e) {
    throw new QtuneError('NETWORK', `cannot reach ${url}: ${e instanceof Error ? e.message : String(e)}`, {
      hint: 'check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache',
    });
  }
  if (res.status === 401 || res.status === 403) {
    throw new QtuneError('NETWORK', `${url} answered ${res.status}: access denied`, {
      hint:
        t === undefined
          ? 'the repository may be gated or private: set HF_TOKEN'
          : 'HF_TOKEN has no access to this repository',
    });
  }
  if (res.status === 404)
    throw new QtuneError('NOT_FOUND', `${url} was not found (404)`, {
      hint: 'check the repository id and revision',
    });
  if (!res.ok) throw new QtuneError('NETWORK', `${url} answered ${res.status} ${res.statusText}`);
  return res;
}

/**
 * Makes sure a model's files are in the cache and returns the snapshot folder holding them.
 */
export async function downloadModel(repo: string, o: HubOptions = {}): Promise<string> {
  return downloadRepo(
    'model',
    repo,
    o,
    (files) => {
      const picked = wanted(files);
      if (!picked.includes('config.json'))
        throw new QtuneError('NOT_FOUND', `${repo} has no config.json`, {
          hint: 'qtune loads Hugging Face transformer repositories',
        });
      return picked;
    },
    'config.json',
  );
}

/**
 * Makes sure the files of a dataset repository that `pick` chooses (from the repository's file
 * list) are in the cache; returns the snapshot folder and the chosen files. Offline, the files of
 * the cached snapshot are chosen from what it holds.
 */
export async function downloadDataset(
  repo: string,
  pick: (files: string[]) => string[],
  o: HubOptions = {},
): Promise<{ snapshot: string; files: string[] }> {
  let files: string[] = [];
  const snapshot = await downloadRepo('dataset', repo, o, (all) => (files = pick(all)), null);
  return { snapshot, files };
}

/** Lists a snapshot's files (relative paths), following its symlinks into the blobs. */
function snapshotFiles(snap: string, sub = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(snap, sub), { withFileTypes: true })) {
    const rel = sub === '' ? e.name : `${sub}/${e.name}`;
    if (e.isDirectory()) out.push(...snapshotFiles(snap, rel));
    else out.push(rel);
  }
  return out;
}

/**
 * The download of one repository revision: resolve the revision to a commit through the info API,
 * choose files from its list, fetch each missing one into a blob and link it into the snapshot.
 * `offlineMarker` is a file the cached snapshot must hold to count as complete offline (null: the
 * snapshot folder existing is enough).
 */
async function downloadRepo(
  type: RepoType,
  repo: string,
  o: HubOptions,
  pick: (files: string[]) => string[],
  offlineMarker: string | null,
): Promise<string> {
  if (!REPO_ID.test(repo))
    throw new QtuneError('INVALID_ARGUMENT', `"${repo}" is not a Hub repository id`, {
      hint: 'use org/name',
    });
  const revision = o.revision ?? 'main';
  const folder = repoFolder(repo, o, type);
  const refFile = path.join(folder, 'refs', revision);
  const cachedCommit = existsSync(refFile)
    ? readFileSync(refFile, 'utf8').trim()
    : /^[0-9a-f]{40}$/.test(revision)
      ? revision
      : undefined;
  if (process.env['HF_HUB_OFFLINE'] === '1' || process.env['HF_HUB_OFFLINE'] === 'true') {
    const snap = cachedCommit === undefined ? undefined : path.join(folder, 'snapshots', cachedCommit);
    if (snap === undefined || !existsSync(path.join(snap, offlineMarker ?? ''))) {
      throw new QtuneError(
        'NOT_FOUND',
        `${repo}@${revision} is not in the cache at ${folder} and HF_HUB_OFFLINE is set`,
      );
    }
    if (offlineMarker === null) pick(snapshotFiles(snap));
    return snap;
  }
  const endpoint = (o.endpoint ?? process.env['HF_ENDPOINT'] ?? 'https://huggingface.co').replace(/\/$/, '');
  const api = type === 'model' ? 'models' : 'datasets';
  const info = (await (
    await request(`${endpoint}/api/${api}/${repo}/revision/${encodeURIComponent(revision)}`, o)
  ).json()) as {
    sha?: string;
    siblings?: { rfilename: string }[];
  };
  const commit = info.sha;
  if (typeof commit !== 'string' || !Array.isArray(info.siblings)) {
    throw new QtuneError(
      'NETWORK',
      `${endpoint} answered the ${type} info of ${repo} without sha and siblings`,
    );
  }
  const files = pick(info.siblings.map((s) => s.rfilename));
  const snap = path.join(folder, 'snapshots', commit);
  mkdirSync(path.join(folder, 'blobs'), { recursive: true });
  mkdirSync(snap, { recursive: true });
  for (const file of files) {
    const link = path.join(snap, file);
    if (existsSync(link)) continue;
    const url = `${endpoint}/${type === 'model' ? '' : 'datasets/'}${repo}/resolve/${commit}/${file}`;
    o.log?.(`downloading ${repo}/${file}`);
    const res = await request(url, o);
    const etag = (res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? `${commit}-${file}`)
      .replace(/^W\//, '')
      .replace(/"/g, '');
    const blob = path.join(folder, 'blobs', etag);
    if (!existsSync(blob)) {
      const tmp = `${blob}.incomplete`;
      try {
        await pipeline(
          Readable.fromWeb(res.body as Parameters<typeof Readable.fromWeb>[0]),
          createWriteStream(tmp),
        );
        renameSync(tmp, blob);
      } catch (e) {
        rmSync(tmp, { force: true });
        throw new QtuneError(
          'NETWORK',
          `download of ${url} failed: ${e instanceof Error ? e.message : String(e)}`,
        );
      }
    } else {
      await res.body?.cancel();
    }
    mkdirSync(path.dirname(link), { recursive: true });
    symlinkSync(path.relative(path.dirname(link), blob), link);
  }
  mkdirSync(path.dirname(refFile), { recursive: true });
  writeFileSync(refFile, commit);
  return snap;
}
