/**
 * A reporter for node's test runner (`--test-reporter=./dist/tests/helpers/summary-reporter.js`) that
 * writes, once every file has run, one block: the counts, every skipped test with its reason, every
 * failure with its message, and the files that took longest. scripts/run-tests.sh prints it after the
 * spec reporter's output, so a skip is never lost in the middle of a long log.
 */
import path from 'node:path';

interface TestData {
  name: string;
  nesting: number;
  file?: string;
  skip?: string | boolean;
  todo?: string | boolean;
  details: { duration_ms?: number; type?: string; error?: { message?: string; cause?: unknown } };
}

type Event = { type: 'test:pass' | 'test:fail'; data: TestData } | { type: string; data: unknown };

/** The innermost message of a failure (node wraps a test's error in ERR_TEST_FAILURE). */
function message(error: TestData['details']['error']): string {
  let e: unknown = error;
  while (typeof e === 'object' && e !== null && 'cause' in e && e.cause instanceof Error) e = e.cause;
  const text =
    e instanceof Error
      ? e.message
      : typeof e === 'object' && e !== null && 'message' in e
        ? String(e.message)
        : String(e);
  return text.split('\n')[0]!;
}

export default async function* summary(source: AsyncIterable<Event>): AsyncGenerator<string> {
  const counts = { tests: 0, pass: 0, fail: 0, skipped: 0, todo: 0 };
  const skips: string[] = [];
  const failures: string[] = [];
  const fileMs = new Map<string, number>();
  /** Names of the enclosing suites at each nesting level, per file (files run in parallel). */
  const stacks = new Map<string, string[]>();
  const start = performance.now();
  for await (const event of source) {
    if (event.type !== 'test:start' && event.type !== 'test:pass' && event.type !== 'test:fail') continue;
    const d = event.data as TestData;
    const file = d.file === undefined ? '?' : path.relative(process.cwd(), d.file);
    const stack = stacks.get(file) ?? [];
    stacks.set(file, stack);
    if (event.type === 'test:start') {
      // starts come in order, a suite's before its tests'; results come after
      stack.length = d.nesting;
      stack.push(d.name);
      continue;
    }
    const where = [file, ...stack.slice(0, d.nesting), d.name].join(' › ');
    if (d.nesting === 0) fileMs.set(file, (fileMs.get(file) ?? 0) + (d.details.duration_ms ?? 0));
    const suite = d.details.type === 'suite';
    if (d.skip !== undefined && d.skip !== false) {
      counts.skipped++;
      skips.push(`${where}: ${typeof d.skip === 'string' ? d.skip : '(no reason given)'}`);
    } else if (event.type === 'test:fail') {
      if (!suite || d.details.error?.message?.includes('subtest') !== true) {
        counts.fail++;
        failures.push(`${where}: ${message(d.details.error)}`);
      }
    } else if (d.todo !== undefined && d.todo !== false) counts.todo++;
    else if (!suite) counts.pass++;
    if (!suite || d.skip) counts.tests++;
  }
  const slowest = [...fileMs].sort((a, b) => b[1] - a[1]).slice(0, 10);
  const lines = [
    '',
    '== test summary',
    `tests ${counts.tests}, passed ${counts.pass}, failed ${counts.fail}, skipped ${counts.skipped}, todo ${counts.todo}; ${((performance.now() - start) / 1000).toFixed(0)} s`,
    `skipped (${skips.length}), each with its reason:`,
    ...skips.map((s) => `  - ${s}`),
    ...(failures.length > 0 ? [`failed (${failures.length}):`, ...failures.map((f) => `  - ${f}`)] : []),
    'slowest files (their tests, one after another):',
    ...slowest.map(([f, ms]) => `  ${(ms / 1000).toFixed(1).padStart(7)} s  ${f}`),
    '',
  ];
  yield lines.join('\n');
}
