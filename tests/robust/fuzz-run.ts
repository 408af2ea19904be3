/**
 * The parent side of a fuzz run: starts tests/robust/fuzz-child.js for one target, follows its
 * progress file, kills it when a case runs past the time limit (a hang), and reports what every case
 * did, including a native abort (the child dies by a signal in the middle of a case).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fuzz-child.js');

export interface FuzzReport {
  target: string;
  cases: number;
  ok: number;
  /** Typed errors by code. */
  typed: Record<string, number>;
  /** Every case: index, outcome, milliseconds, the mutation and the message. */
  log: { index: number; outcome: string; ms: number; desc: string; message: string }[];
  /** Cases that threw something other than a one-line QtuneError, or returned an inconsistent result. */
  failures: { index: number; desc: string; detail: string }[];
  /** The case that ran past the limit, when one did. */
  hang: { index: number; desc: string } | null;
  /** The child died (a native abort, a crash) while running this case, or before the first. */
  crash: {
    code: number | null;
    signal: string | null;
    index: number | null;
    desc: string;
    stderr: string;
  } | null;
  slowest: { index: number; ms: number; desc: string } | null;
  seconds: number;
}

interface Started {
  index: number;
  desc: string;
  seenAt: number;
}

/** Runs `cases` cases of `target` from case `first`, each within `caseLimitMs`. */
export function runFuzz(
  target: string,
  cases: number,
  seed: number,
  o: { caseLimitMs: number; prepareLimitMs: number; first?: number },
): Promise<FuzzReport> {
  const work = mkdtempSync(path.join(os.tmpdir(), `qtune-fuzz-${target}-`));
  const progress = path.join(work, 'progress.txt');
  const t0 = performance.now();
  const report: FuzzReport = {
    target,
    cases: 0,
    ok: 0,
    typed: {},
    log: [],
    failures: [],
    hang: null,
    crash: null,
    slowest: null,
    seconds: 0,
  };
  const descs = new Map<number, string>();
  let open: Started | null = null;
  let ended = false;
  let consumed = 0;

  const follow = (): void => {
    if (!existsSync(progress)) return;
    const text = readFileSync(progress, 'utf8');
    const complete = text.lastIndexOf('\n') + 1;
    for (const line of text.slice(consumed, complete).split('\n')) {
      if (line === '') continue;
      const [kind, idx, a, b, detail] = line.split('\t');
      const index = Number(idx);
      if (kind === 'E') ended = true;
      else if (kind === 'S') {
        descs.set(index, a ?? '');
        open = { index, desc: a ?? '', seenAt: performance.now() };
      } else if (kind === 'R') {
        open = null;
        report.cases++;
        const ms = Number(b);
        report.log.push({ index, outcome: a ?? '', ms, desc: descs.get(index) ?? '', message: detail ?? '' });
        if (report.slowest === null || ms > report.slowest.ms)
          report.slowest = { index, ms, desc: descs.get(index) ?? '' };
        if (a === 'ok') report.ok++;
        else if (a?.startsWith('typed:')) {
          const code = a.slice(6);
          report.typed[code] = (report.typed[code] ?? 0) + 1;
        } else report.failures.push({ index, desc: descs.get(index) ?? '', detail: detail ?? '' });
      }
    }
    consumed = complete;
  };

  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [CHILD, target, String(cases), String(seed), work, progress, String(o.first ?? 0)],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, QTUNE_THREADS: '1' } },
    );
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      stderr = (stderr + d).slice(-4000);
    });
    const timer = setInterval(() => {
      follow();
      const now = performance.now();
      const stuck: Started | null = open;
      if (stuck !== null && now - stuck.seenAt > o.caseLimitMs) {
        report.hang = { index: stuck.index, desc: stuck.desc };
        child.kill('SIGKILL');
      } else if (report.cases === 0 && stuck === null && now - t0 > o.prepareLimitMs) {
        report.hang = { index: -1, desc: 'preparing the original files' };
        child.kill('SIGKILL');
      }
    }, 100);
    child.on('close', (code, signal) => {
      clearInterval(timer);
      follow();
      const last: Started | null = open;
      if (report.hang === null && (!ended || code !== 0))
        report.crash = {
          code,
          signal,
          index: last?.index ?? null,
          desc: last?.desc ?? '(before the first case)',
          stderr: stderr.trim(),
        };
      report.seconds = (performance.now() - t0) / 1000;
      rmSync(work, { recursive: true, force: true });
      resolve(report);
    });
  });
}

/** One line per target: cases, ok, typed errors by code, the slowest case, the time. */
export function summary(r: FuzzReport): string {
  const typed = Object.entries(r.typed)
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${n}`)
    .join(', ');
  return (
    `${r.target}: ${r.cases} cases, ${r.ok} ok, typed errors ${typed === '' ? 'none' : typed}` +
    `, ${r.failures.length} untyped` +
    (r.slowest === null ? '' : `; slowest case #${r.slowest.index} ${r.slowest.ms.toFixed(0)} ms`) +
    `; ${r.seconds.toFixed(1)} s`
  );
}
