/**
 * GRPO's reward functions (src/train/rewards.ts): the built-in exact match (numbers compared as
 * numbers) and format regex, users' modules written to disk and imported (default, named, async),
 * and the one-line errors for a module that does not load, exports no function, returns the wrong
 * number of rewards or something not a number, and for a TypeScript module on a Node that cannot
 * import one.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { RewardFunctionError } from '../../src/errors.js';
import {
  exactMatchReward,
  formatReward,
  loadRewardFunctions,
  matches,
  scoreCompletions,
} from '../../src/train/rewards.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'qtune-rewards-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const write = (name: string, text: string) => {
  writeFileSync(path.join(dir, name), text);
  return name;
};

describe('built-in rewards', () => {
  it('exact match compares numbers as numbers and text trimmed', () => {
    assert.ok(matches(' 19', '19'));
    assert.ok(matches('19.0', 19));
    assert.ok(matches('1,000', '1000'));
    assert.ok(!matches(' 19 + 1', '19'));
    assert.ok(!matches('20', '19'));
    assert.ok(matches(' Paris\n', 'Paris'));
    assert.ok(!matches('paris', 'Paris'));
    assert.ok(!matches('19', undefined));
  });
  it('exact_match scores each completion against its record, and names a missing field', async () => {
    const r = exactMatchReward('answer');
    const got = await r.fn(
      ['a', 'b', 'c'],
      [' 4', '5', ' 7'],
      [{ answer: '4' }, { answer: 6 }, { answer: '7' }],
    );
    assert.deepEqual(got, [1, 0, 1]);
    assert.throws(
      () => r.fn(['a'], ['4'], [{ solution: '4' }]),
      (e: unknown) =>
        e instanceof RewardFunctionError && /record 1 of the step has no "answer" field/.test(e.message),
    );
  });
  it('format_regex scores a match 1', () => {
    const r = formatReward('^ \\d+$');
    assert.deepEqual(r.fn([], [' 12', '12', ' 12 apples'], []), [1, 0, 0]);
    assert.throws(() => formatReward('(unclosed'), /format_regex: "\(unclosed" is not a regular expression/);
  });
});

describe('reward modules', () => {
  it('load a default export, a named one, and an async function; sum their rewards', async () => {
    write(
      'len.mjs',
      'export default function short(prompts, completions) { return completions.map((c) => -c.length); }',
    );
    write(
      'two.mjs',
      'export function a() { return [1, 1]; }\nexport async function b(p, c, r) { return r.map((x) => x.w); }',
    );
    const fns = await loadRewardFunctions(['len.mjs', 'two.mjs:b', path.join(dir, 'two.mjs:a')], dir);
    assert.deepEqual(
      fns.map((f) => f.name),
      ['short', 'b', 'a'],
    );
    const { total, perFunction } = await scoreCompletions(
      fns,
      ['p', 'q'],
      ['ab', 'abcd'],
      [{ w: 5 }, { w: 0.5 }],
    );
    assert.deepEqual(perFunction.get('short'), [-2, -4]);
    assert.deepEqual(perFunction.get('b'), [5, 0.5]);
    assert.deepEqual(total, [-2 + 5 + 1, -4 + 0.5 + 1]);
  });
  const refused = async (specs: string[], re: RegExp) =>
    assert.rejects(loadRewardFunctions(specs, dir), (e: unknown) => {
      assert.ok(e instanceof RewardFunctionError, String(e));
      assert.match(e.message, re);
      assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
      return true;
    });
  it('refuse a missing file, a module that does not load, and one without the function', async () => {
    await refused(['nope.mjs'], /reward_functions: nope\.mjs: no such file/);
    write('broken.mjs', 'export default function (\n');
    await refused(['broken.mjs'], /reward_functions: broken\.mjs: the module does not load: /);
    write('none.mjs', 'export const x = 1;\nexport function f() {}\nexport function g() {}');
    await refused(['none.mjs'], /no default export and not one exported function \(functions: f, g\)/);
    await refused(['none.mjs:h'], /no exported function "h" \(functions: f, g\)/);
    write('dup.mjs', 'export default function exact() { return []; }');
    write('dup2.mjs', 'export function exact() { return []; }');
    await refused(['dup.mjs', 'dup2.mjs'], /two functions are named "exact"/);
  });
  it('a .ts module: imported where Node runs TypeScript, else refused with the way out', async () => {
    write(
      'typed.ts',
      'export default function typed(p: string[], c: string[]): number[] { return c.map(() => 1); }',
    );
    const strips = (process.features as { typescript?: unknown }).typescript !== undefined;
    if (strips) assert.equal((await loadRewardFunctions(['typed.ts'], dir))[0]!.name, 'typed');
    else await refused(['typed.ts'], /cannot import TypeScript \(compile it to \.mjs/);
  });
  it('refuse a wrong number of rewards and values that are not finite numbers', async () => {
    const score = (fn: () => unknown) =>
      scoreCompletions([{ name: 'mine', fn: fn as () => number[] }], ['p', 'q'], ['a', 'b'], [{}, {}]);
    await assert.rejects(
      score(() => [1]),
      /reward function mine returned 1 values for 2 completions/,
    );
    await assert.rejects(
      score(() => 'x'),
      /reward function mine returned string for 2 completions/,
    );
    await assert.rejects(
      score(() => [1, NaN]),
      /reward function mine returned NaN for completion 2, not a finite number/,
    );
    await assert.rejects(
      score(() => Promise.resolve([1, '2'])),
      /returned "2" for completion 2/,
    );
  });
});
