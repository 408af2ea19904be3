/**
 * Fuzzing the readers with mutated real files: safetensors (and the model load path onto ggml),
 * GGUF (and its load path and tokenizer), JSONL/JSON datasets, YAML train configs. Every case must
 * end in a consistent result or a one-line QtuneError: another exception, an inconsistent result, a
 * case running past the time limit, or a native abort of the child process fails the test, naming
 * the case (seed, index and mutation) so it can be replayed with QTUNE_FUZZ_SEED / QTUNE_FUZZ_CASE.
 *
 * The seed is fixed, so CI runs the same cases every time; QTUNE_SLOW=1 runs ten times as many.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TARGETS } from './fuzz-targets.js';
import { runFuzz, summary } from './fuzz-run.js';
import { SLOW } from '../helpers/slow.js';

const SEED = Number(process.env['QTUNE_FUZZ_SEED'] ?? 20260607);
/** Replays one case (QTUNE_FUZZ_CASE=<index>) of every target. */
const ONLY = process.env['QTUNE_FUZZ_CASE'];

describe('fuzzing the readers', () => {
  for (const [name, target] of Object.entries(TARGETS)) {
    const cases = ONLY !== undefined ? 1 : SLOW ? target.cases * 10 : target.cases;
    it(`${name}: ${cases} mutated files end in a result or a typed error (${target.reads})`, async () => {
      const r = await runFuzz(name, cases, SEED, {
        caseLimitMs: 20_000,
        prepareLimitMs: 120_000,
        ...(ONLY === undefined ? {} : { first: Number(ONLY) }),
      });
      console.log(summary(r));
      const problems: string[] = [];
      if (r.hang !== null)
        problems.push(`case #${r.hang.index} (${r.hang.desc}) ran past 20 s: killed as a hang`);
      if (r.crash !== null)
        problems.push(
          `the child died (code ${r.crash.code}, signal ${r.crash.signal}) during case #${r.crash.index} (${r.crash.desc}): ${r.crash.stderr.slice(-1500)}`,
        );
      for (const f of r.failures.slice(0, 20)) problems.push(`case #${f.index} (${f.desc}): ${f.detail}`);
      if (r.failures.length > 20) problems.push(`... and ${r.failures.length - 20} more`);
      assert.deepEqual(problems, [], `seed ${SEED}:\n${problems.join('\n')}`);
      assert.equal(r.cases, cases);
    });
  }
});
