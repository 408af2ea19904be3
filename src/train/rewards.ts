/**
 * GRPO's reward functions: each takes the step's prompts, completions and dataset records (one entry
 * per completion) and returns one number per completion, synchronously or as a promise. Rewards of
 * several functions are summed (TRL's reward_weights all 1). Built in: {@link exactMatchReward}
 * (the completion equals a record field, numbers compared as numbers) and {@link formatReward} (the
 * completion matches a regular expression). Users' functions come from JavaScript modules
 * ({@link loadRewardFunctions}); a `.ts` module loads only where Node itself runs TypeScript.
 *
 * @example
 * // rewards.mjs
 * export default function short(prompts, completions) { return completions.map((c) => -c.length); }
 * const fns = [exactMatchReward('answer'), ...(await loadRewardFunctions(['rewards.mjs']))];
 * const { total, perFunction } = await scoreCompletions(fns, prompts, completions, records);
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { RewardFunctionError } from '../errors.js';

export type RewardRecord = Readonly<Record<string, unknown>>;

/** A user's reward function, as a module exports it. */
export type RewardFn = (
  prompts: string[],
  completions: string[],
  records: RewardRecord[],
) => number[] | Promise<number[]>;

/** A reward function with the name its metrics are logged under (`rewards/<name>/mean`). */
export interface NamedReward {
  name: string;
  fn: RewardFn;
}

/** A number written in text (" 19", "-3.5", "1e3"), or null. */
function asNumber(s: string): number | null {
  const t = s.trim().replace(/,/g, '');
  if (t === '' || !/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(t)) return null;
  return Number(t);
}

/** Whether a completion equals an expected value: numbers as numbers, text with its ends trimmed. */
export function matches(completion: string, expected: unknown): boolean {
  if (expected === undefined || expected === null) return false;
  const want = typeof expected === 'string' ? expected : JSON.stringify(expected);
  const [a, b] = [asNumber(completion), asNumber(want)];
  if (a !== null && b !== null) return a === b;
  return completion.trim() === want.trim();
}

/** 1 where the completion equals the record's `field` (numbers compared as numbers: " 19" is 19), else 0. */
export function exactMatchReward(field: string): NamedReward {
  return {
    name: 'exact_match',
    fn: (_prompts, completions, records) => {
      records.forEach((r, i) => {
        if (!(field in r))
          throw new RewardFunctionError(`exact_match: record ${i + 1} of the step has no "${field}" field`, {
            hint: 'set exact_match to a field every prompt record holds',
          });
      });
      return completions.map((c, i) => (matches(c, records[i]![field]) ? 1 : 0));
    },
  };
}

/** 1 where the completion matches `pattern` (a JavaScript regular expression), else 0. */
export function formatReward(pattern: string): NamedReward {
  let re: RegExp;
  try {
    re = new RegExp(pattern, 's');
  } catch (e) {
    throw new RewardFunctionError(
      `format_regex: ${JSON.stringify(pattern)} is not a regular expression: ${(e as Error).message}`,
      {
        hint: 'write a JavaScript regular expression, e.g. "^ \\\\d+$"',
      },
    );
  }
  return { name: 'format', fn: (_p, completions) => completions.map((c) => (re.test(c) ? 1 : 0)) };
}

/**
 * The reward functions of modules: `file.mjs` (its default export, else its only exported function)
 * or `file.mjs:name` (that export), each path relative to `baseDir`.
 */
export async function loadRewardFunctions(
  specs: readonly string[],
  baseDir = process.cwd(),
): Promise<NamedReward[]> {
  const out: NamedReward[] = [];
  for (const spec of specs) {
    const m = /^(.*?)(?::([A-Za-z_$][\w$]*))?$/.exec(spec)!;
    const [file, exportName] = [path.resolve(baseDir, m[1]!), m[2]];
    const where = `reward_functions: ${spec}`;
    if (!existsSync(file))
      throw new RewardFunctionError(`${where}: no such file ${file}`, {
        hint: 'give the path of a .mjs/.js module',
      });
    let mod: Record<string, unknown>;
    try {
      mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
    } catch (e) {
      const err = e as { code?: string; message?: string };
      if (err.code === 'ERR_UNKNOWN_FILE_EXTENSION' && /\.[mc]?ts$/.test(file))
        throw new RewardFunctionError(`${where}: this Node (${process.version}) cannot import TypeScript`, {
          hint: 'compile it to .mjs (npx tsc --module nodenext --target es2022 FILE.ts) or run Node >= 23.6',
        });
      throw new RewardFunctionError(
        `${where}: the module does not load: ${(err.message ?? String(e)).split('\n')[0]}`,
      );
    }
    const fns = Object.entries(mod).filter(([, v]) => typeof v === 'function');
    const pick =
      exportName !== undefined
        ? fns.find(([k]) => k === exportName)
        : (fns.find(([k]) => k === 'default') ?? (fns.length === 1 ? fns[0] : undefined));
    if (pick === undefined) {
      const names = fns.map(([k]) => k).join(', ') || 'none';
      throw new RewardFunctionError(
        `${where}: ${exportName === undefined ? 'no default export and not one exported function' : `no exported function "${exportName}"`} (functions: ${names})`,
        {
          hint: 'export default function (prompts, completions, records) { return [...numbers] }, or name one: FILE.mjs:NAME',
        },
      );
    }
    const fn = pick[1] as RewardFn & { name: string };
    const name =
      pick[0] !== 'default'
        ? pick[0]
        : fn.name !== '' && fn.name !== 'default'
          ? fn.name
          : path.parse(file).name;
    out.push({ name, fn });
  }
  const seen = new Set<string>();
  for (const r of out) {
    if (seen.has(r.name))
      throw new RewardFunctionError(`reward_functions: two functions are named "${r.name}"`, {
        hint: 'give each reward function its own name (its metrics are logged as rewards/<name>/mean)',
      });
    seen.add(r.name);
  }
  return out;
}

/** Each function's rewards and their sum, per completion; a wrong length or a non-number is refused. */
export async function scoreCompletions(
  fns: readonly NamedReward[],
  prompts: string[],
  completions: string[],
  records: RewardRecord[],
): Promise<{ total: number[]; perFunction: Map<string, number[]> }> {
  const total = new Array<number>(completions.length).fill(0);
  const perFunction = new Map<string, number[]>();
  for (const { name, fn } of fns) {
    const got: unknown = await fn([...prompts], [...completions], [...records]);
    if (!Array.isArray(got) || got.length !== completions.length)
      throw new RewardFunctionError(
        `reward function ${name} returned ${Array.isArray(got) ? `${got.length} values` : typeof got} for ${completions.length} completions`,
        { hint: 'return one number per completion, in order', details: { name } },
      );
    const bad = got.findIndex((v) => typeof v !== 'number' || !Number.isFinite(v));
    if (bad >= 0)
      throw new RewardFunctionError(
        `reward function ${name} returned ${typeof got[bad] === 'number' ? String(got[bad]) : (JSON.stringify(got[bad]) ?? String(got[bad]))} for completion ${bad + 1}, not a finite number`,
        { hint: 'return one finite number per completion', details: { name } },
      );
    const values = got as number[];
    values.forEach((v, i) => (total[i] = total[i]! + v));
    perFunction.set(name, values);
  }
  return { total, perFunction };
}
