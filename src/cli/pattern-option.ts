/**
 * The value of a `map` option of the train config (lora_rank_pattern, lora_alpha_pattern): PEFT
 * pattern keys (Python regexes over module names, translated or refused by
 * {@link checkPatternKeys}) to numbers. From YAML a mapping; from a flag `key=value` pairs split at
 * commas and at each pair's last `=` (a key may hold one: `(?P=name)`), or a JSON object (for keys
 * holding a comma, such as `{1,2}`).
 */
import { checkPatternKeys } from '../peft/lora-weights.js';

export function patternMap(
  key: string,
  raw: unknown,
  spec: { min?: number; minExclusive?: boolean; whole?: boolean },
  bad: (why: string, fix: string) => never,
): Record<string, number> {
  let entries: [string, unknown][] | null = null;
  if (typeof raw === 'string' && raw.trim().startsWith('{')) {
    try {
      const j = JSON.parse(raw) as unknown;
      if (j !== null && typeof j === 'object' && !Array.isArray(j)) entries = Object.entries(j);
    } catch {
      entries = null;
    }
  } else if (typeof raw === 'string') {
    // key=value pairs; a key may hold '=' ((?P=name)), the value never does
    entries = raw
      .split(',')
      .filter((x) => x.trim() !== '')
      .map((x) => {
        const i = x.lastIndexOf('=');
        return i < 0 ? [x.trim(), undefined] : [x.slice(0, i).trim(), x.slice(i + 1).trim()];
      });
  } else if (raw !== null && typeof raw === 'object' && !Array.isArray(raw)) entries = Object.entries(raw);
  const out: Record<string, number> = {};
  const low = spec.min ?? 0;
  for (const [k, v] of entries ?? [['', undefined]]) {
    const n = typeof v === 'number' ? v : typeof v === 'string' && v !== '' ? Number(v) : NaN;
    if (
      k === '' ||
      !Number.isFinite(n) ||
      n < low ||
      (spec.minExclusive === true && n === low) ||
      (spec.whole === true && !Number.isInteger(n))
    )
      return bad(
        `is not a mapping of module patterns to ${spec.whole === true ? 'whole numbers' : 'numbers'} ${spec.minExclusive === true ? 'above' : 'of at least'} ${low}`,
        `set ${key} to e.g. {q_proj: 16} (or q_proj=16,v_proj=4, or JSON, on the command line)`,
      );
    out[k] = n;
  }
  checkPatternKeys(key, out); // Python regexes: translated, or refused here
  return out;
}
