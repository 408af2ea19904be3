/**
 * A small Weights & Biases client over its HTTP API, as the official SDKs talk to the server:
 *   POST {base}/graphql          `viewer { entity }` (the default entity) and the `upsertBucket`
 *                                 mutation, which creates the run (a "bucket" of a "model" = project)
 *   POST {base}/files/{entity}/{project}/{run}/file_stream
 *                                 `{ files: { "wandb-history.jsonl": { offset, content: [rows] },
 *                                 "wandb-summary.json": { offset: 0, content: [summary] } } }`; the
 *                                 offset is the number of history lines the server has; the last
 *                                 post is `{ complete: true, exitcode }`, which marks the run finished
 * Every request carries basic auth `api:<key>`. No dependency: Node's fetch.
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const DEFAULT_BASE_URL = 'https://api.wandb.ai';

export interface WandbRunSettings {
  baseUrl: string;
  apiKey: string;
  /** Team or user; the key's default entity when absent. */
  entity?: string | undefined;
  project: string;
  /** The run's id (its URL path segment). */
  runId: string;
  /** The run's display name; the server picks one when absent. */
  displayName?: string | undefined;
  /** The run's config (hyper-parameters), plain values. */
  config?: Record<string, unknown> | undefined;
  /** Per request (default 15 s). */
  timeoutMs?: number | undefined;
}

export interface WandbRunInfo {
  entity: string;
  project: string;
  runId: string;
  displayName: string | null;
  url: string;
}

/** The key from WANDB_API_KEY, else from the netrc file (NETRC or ~/.netrc) entry for the API host. */
export function findWandbApiKey(baseUrl: string, env: NodeJS.ProcessEnv = process.env): string | null {
  const k = env['WANDB_API_KEY'];
  if (k !== undefined && k.trim() !== '') return k.trim();
  const file = env['NETRC'] ?? path.join(os.homedir(), '.netrc');
  if (!existsSync(file)) return null;
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    return null;
  }
  const tokens = readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => !l.trimStart().startsWith('#'))
    .join(' ')
    .split(/\s+/)
    .filter((t) => t !== '');
  let machine: string | null = null;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t === 'machine') machine = tokens[++i] ?? null;
    else if (t === 'default') machine = '';
    else if (t === 'password' && (machine === url.hostname || machine === url.host))
      return tokens[i + 1] ?? null;
  }
  return null;
}

/** The web app's address for an API address (api.wandb.ai → wandb.ai). */
export function appUrl(baseUrl: string): string {
  const u = new URL(baseUrl);
  if (u.hostname.startsWith('api.')) u.hostname = u.hostname.slice(4);
  return u.origin + u.pathname.replace(/\/$/, '');
}

/** A run id as the SDKs make them: 8 characters of [a-z0-9]. */
export function newRunId(): string {
  const chars = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let s = '';
  for (let i = 0; i < 8; i++) s += chars.charAt(Math.floor(Math.random() * chars.length));
  return s;
}

const VIEWER = `query Viewer { viewer { id entity } }`;

const UPSERT_BUCKET = `mutation UpsertBucket($name: String, $project: String, $entity: String, $displayName: String, $config: JSONString, $host: String, $program: String) {
  upsertBucket(input: { name: $name, modelName: $project, entityName: $entity, displayName: $displayName, config: $config, host: $host, jobProgram: $program }) {
    bucket { id name displayName project { id name entity { id name } } }
    inserted
  }
}`;

export class WandbHttpError extends Error {
  override name = 'WandbHttpError';
}

export class WandbClient {
  private readonly base: string;
  private readonly auth: string;
  private run: WandbRunInfo | null = null;
  /** History lines the server holds. */
  private offset = 0;

  constructor(private readonly s: WandbRunSettings) {
    this.base = s.baseUrl.replace(/\/+$/, '');
    this.auth = `Basic ${Buffer.from(`api:${s.apiKey}`).toString('base64')}`;
  }

  get info(): WandbRunInfo | null {
    return this.run;
  }

  get historyOffset(): number {
    return this.offset;
  }

  private async post(url: string, body: unknown): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(url, {
        method: 'POST',
        headers: { authorization: this.auth, 'content-type': 'application/json', 'user-agent': 'qtune' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.s.timeoutMs ?? 15_000),
      });
    } catch (e) {
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new WandbHttpError(
        `${url}: ${cause?.code ?? cause?.message ?? (e instanceof Error ? e.message : String(e))}`,
      );
    }
    const text = await res.text();
    if (!res.ok) throw new WandbHttpError(`${url}: HTTP ${res.status} ${text.slice(0, 200)}`);
    try {
      return text === '' ? null : (JSON.parse(text) as unknown);
    } catch {
      throw new WandbHttpError(`${url}: not JSON: ${text.slice(0, 200)}`);
    }
  }

  private async graphql(query: string, variables: Record<string, unknown>): Promise<Record<string, unknown>> {
    const r = (await this.post(`${this.base}/graphql`, { query, variables })) as {
      data?: Record<string, unknown>;
      errors?: { message?: string }[];
    } | null;
    if (r?.errors !== undefined && r.errors.length > 0)
      throw new WandbHttpError(`graphql: ${r.errors.map((e) => e.message ?? '?').join('; ')}`);
    if (r?.data === undefined) throw new WandbHttpError('graphql: no data in the answer');
    return r.data;
  }

  /** Creates (or updates) the run. */
  async init(): Promise<WandbRunInfo> {
    let entity = this.s.entity;
    if (entity === undefined || entity === '') {
      const d = (await this.graphql(VIEWER, {})) as { viewer?: { entity?: string } | null };
      entity = d.viewer?.entity ?? undefined;
      if (entity === undefined) throw new WandbHttpError('the server named no default entity for this key');
    }
    const config: Record<string, { value: unknown; desc: null }> = {};
    for (const [k, v] of Object.entries(this.s.config ?? {})) config[k] = { value: v, desc: null };
    const d = (await this.graphql(UPSERT_BUCKET, {
      name: this.s.runId,
      project: this.s.project,
      entity,
      displayName: this.s.displayName ?? null,
      config: JSON.stringify(config),
      host: os.hostname(),
      program: 'qtune',
    })) as {
      upsertBucket?: {
        bucket?: {
          name?: string;
          displayName?: string | null;
          project?: { name?: string; entity?: { name?: string } };
        };
      };
    };
    const b = d.upsertBucket?.bucket;
    if (b === undefined) throw new WandbHttpError('upsertBucket returned no run');
    const info: WandbRunInfo = {
      entity: b.project?.entity?.name ?? entity,
      project: b.project?.name ?? this.s.project,
      runId: b.name ?? this.s.runId,
      displayName: b.displayName ?? null,
      url: '',
    };
    info.url = `${appUrl(this.base)}/${info.entity}/${info.project}/runs/${info.runId}`;
    this.run = info;
    return info;
  }

  private streamUrl(): string {
    const r = this.run;
    if (r === null) throw new WandbHttpError('the run is not created yet');
    return `${this.base}/files/${encodeURIComponent(r.entity)}/${encodeURIComponent(r.project)}/${encodeURIComponent(r.runId)}/file_stream`;
  }

  /** Sends history rows (and the summary); on success the offset moves past them. */
  async sendHistory(
    rows: readonly Record<string, unknown>[],
    summary?: Record<string, unknown>,
  ): Promise<void> {
    if (rows.length === 0 && summary === undefined) return;
    const files: Record<string, { offset: number; content: string[] }> = {};
    if (rows.length > 0)
      files['wandb-history.jsonl'] = { offset: this.offset, content: rows.map((r) => JSON.stringify(r)) };
    if (summary !== undefined)
      files['wandb-summary.json'] = { offset: 0, content: [JSON.stringify(summary)] };
    await this.post(this.streamUrl(), { files });
    this.offset += rows.length;
  }

  /** Marks the run finished (exit code 0) or failed. */
  async finish(exitcode: number): Promise<void> {
    await this.post(this.streamUrl(), { complete: true, exitcode });
  }
}
