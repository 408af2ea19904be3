/**
 * One fuzz target's cases, run in a child process so that a native abort or a hang is seen by the
 * parent (tests/robust/fuzz.test.ts) as a failure of the case that caused it, not as the end of the
 * test runner. Progress goes to a file with synchronous writes, one line before and one after each
 * case, so the parent knows which case was running whatever happens:
 *
 *   S <index> <description>            the case starts
 *   R <index> <outcome> <ms> [detail]  ok | typed:<code> | fail
 *   E                                  every case ran
 *
 * usage: node fuzz-child.js <target> <cases> <seed> <work dir> <progress file> [first case]
 */
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import { QtuneError } from '../../src/errors.js';
import { caseRand } from './mutate.js';
import { TARGETS, writeCase } from './fuzz-targets.js';

function oneLine(s: string): string {
  return s.replace(/[\r\n\t]+/g, ' ').slice(0, 600);
}

async function main(): Promise<void> {
  const [name, casesArg, seedArg, work, progress, firstArg] = process.argv.slice(2);
  const target = TARGETS[name ?? ''];
  if (target === undefined || work === undefined || progress === undefined)
    throw new Error(`usage: fuzz-child <${Object.keys(TARGETS).join('|')}> <cases> <seed> <work> <progress>`);
  const cases = Number(casesArg);
  const seed = Number(seedArg);
  const first = Number(firstArg ?? 0);
  const originals = path.join(work, 'originals');
  mkdirSync(originals, { recursive: true });
  await target.prepare(originals);
  const fd = openSync(progress, 'a');
  const caseDir = path.join(work, 'case');
  for (let i = first; i < first + cases; i++) {
    const c = target.make(caseRand(seed, name!, i), i);
    rmSync(caseDir, { recursive: true, force: true });
    mkdirSync(caseDir);
    writeCase(caseDir, c);
    writeSync(fd, `S\t${i}\t${oneLine(c.desc)}\n`);
    const t0 = performance.now();
    let outcome: string;
    let detail = '';
    try {
      await target.read(caseDir, i);
      outcome = 'ok';
    } catch (e) {
      if (e instanceof QtuneError && !e.message.includes('\n')) {
        outcome = `typed:${e.code}`;
        detail = oneLine(e.message);
      } else {
        outcome = 'fail';
        const err = e instanceof Error ? e : new Error(String(e));
        const where = err.stack?.split('\n').find((l) => l.includes('/dist/src/')) ?? '';
        detail = oneLine(
          `${e instanceof QtuneError ? 'multi-line QtuneError' : err.name}: ${err.message} ${where.trim()}`,
        );
      }
    }
    const ms = performance.now() - t0;
    writeSync(fd, `R\t${i}\t${outcome}\t${ms.toFixed(1)}\t${detail}\n`);
  }
  writeSync(fd, 'E\n');
  closeSync(fd);
}

await main();
