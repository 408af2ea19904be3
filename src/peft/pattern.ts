/**
 * PEFT's rank_pattern / alpha_pattern keys are Python `re` expressions, matched by
 * `peft.utils.other.get_pattern_key` as `re.match(rf"(.*\.)?({key})$", module)`. Here they become
 * JavaScript RegExps with the same meaning: Python-only syntax is translated —
 *
 * - `(?P<name>…)` → `(?<name>…)`, `(?P=name)` → `\k<name>`, `(?#comment)` dropped;
 * - `\A` → `^`, `\Z` → `$` (no module name holds a newline), `\a` → `\x07`, `{,n}` → `{0,n}`;
 * - a `]` right after `[` or `[^` (a literal in Python, an empty class in JavaScript) → `\]`;
 * - global flags at the start, `(?i)`, `(?s)`, `(?m)` (and `(?a)`, `(?u)`, which change nothing
 *   JavaScript does differently here) → RegExp flags over the whole expression, as Python before
 *   3.11 applied them (3.11 refuses a global flag that is not at the start of PEFT's expression);
 *
 * and what has no JavaScript equivalent (or that Python itself rejects: `(?<name>…)`, an unknown
 * `\q` escape) is refused: verbose `(?x)`, `(?L)`, scoped flags `(?i:…)`, flags after the start,
 * atomic groups `(?>…)`, possessive quantifiers `*+`, conditionals `(?(1)…)`, `\N{…}`, `\U…`.
 *
 * @example
 * peftPatternRegExp('(?P<w>v)_proj').test('model.layers.0.self_attn.v_proj'); // true
 */
import { ConfigError } from '../errors.js';

/** Python escapes of a letter that mean the same in JavaScript. */
const SAME_ESCAPES = new Set(['b', 'B', 'd', 'D', 'f', 'n', 'r', 's', 'S', 't', 'v', 'w', 'W', 'x', 'u']);

/** A key JavaScript can run as Python does: the expression's source and flags, or why not. */
export function translatePythonPattern(key: string): { source: string; flags: string } | { error: string } {
  let i = 0;
  let flags = '';
  for (let m = /^\(\?([aiLmsux]+)\)/.exec(key); m !== null; m = /^\(\?([aiLmsux]+)\)/.exec(key.slice(i))) {
    for (const f of m[1]!) {
      if (f === 'x') return { error: 'verbose mode (?x) has no JavaScript equivalent' };
      if (f === 'L') return { error: '(?L) is for bytes patterns only' };
      if ('ims'.includes(f) && !flags.includes(f)) flags += f;
    }
    i += m[0].length;
  }
  let out = '';
  let inClass = false;
  while (i < key.length) {
    const c = key[i]!;
    if (c === '\\') {
      const n = key[i + 1];
      if (n === undefined) return { error: 'it ends with a lone backslash' };
      if (/[A-Za-z]/.test(n)) {
        if ((n === 'A' || n === 'Z') && !inClass) out += n === 'A' ? '^' : '$';
        else if (n === 'a') out += '\\x07';
        else if (SAME_ESCAPES.has(n)) out += `\\${n}`;
        else if (n === 'N' || n === 'U')
          return { error: `\\${n} escapes have no JavaScript equivalent here` };
        else return { error: `\\${n} is not an escape Python knows${inClass ? ' inside [...]' : ''}` };
      } else out += `\\${n}`;
      i += 2;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c;
      i += 1;
      continue;
    }
    if (c === '[') {
      inClass = true;
      const negated = key[i + 1] === '^';
      out += negated ? '[^' : '[';
      i += negated ? 2 : 1;
      if (key[i] === ']') {
        out += '\\]'; // a literal ] in Python; [] would be an empty class in JavaScript
        i += 1;
      }
      continue;
    }
    if (c === '(' && key[i + 1] === '?') {
      const rest = key.slice(i);
      const named = /^\(\?P<([A-Za-z_]\w*)>/.exec(rest);
      const backref = /^\(\?P=([A-Za-z_]\w*)\)/.exec(rest);
      const comment = /^\(\?#[^)]*\)/.exec(rest);
      if (named !== null) {
        out += `(?<${named[1]!}>`;
        i += named[0].length;
      } else if (backref !== null) {
        out += `\\k<${backref[1]!}>`;
        i += backref[0].length;
      } else if (comment !== null) {
        i += comment[0].length;
      } else if (/^\(\?(?::|=|!|<=|<!)/.test(rest)) {
        const head = /^\(\?(?::|=|!|<=|<!)/.exec(rest)![0];
        out += head;
        i += head.length;
      } else if (rest.startsWith('(?>'))
        return { error: 'atomic groups (?>...) have no JavaScript equivalent' };
      else if (rest.startsWith('(?('))
        return { error: 'conditional groups (?(...)...) have no JavaScript equivalent' };
      else if (rest.startsWith('(?<'))
        return { error: 'Python names groups (?P<name>...), not (?<name>...)' };
      else if (/^\(\?[-aiLmsux]+:/.test(rest))
        return { error: 'scoped flags (?i:...) have no JavaScript equivalent in Node 20' };
      else if (/^\(\?[aiLmsux]+\)/.test(rest))
        return { error: 'inline flags such as (?i) must come first in the key' };
      else return { error: `${rest.slice(0, 3)} is not Python group syntax` };
      continue;
    }
    if ('*+?}'.includes(c) && key[i + 1] === '+' && !(c === '}' && !/\{\d*,?\d*\}$/.test(out + c)))
      return { error: 'possessive quantifiers (*+, ++, ?+, {m,n}+) have no JavaScript equivalent' };
    if (c === '{') {
      const upTo = /^\{,(\d+)\}/.exec(key.slice(i));
      if (upTo !== null) {
        out += `{0,${upTo[1]!}}`; // Python's {,n} is {0,n}; JavaScript would take it literally
        i += upTo[0].length;
        continue;
      }
    }
    out += c;
    i += 1;
  }
  return { source: out, flags };
}

/**
 * The RegExp PEFT's `get_pattern_key` runs for a key: `(.*\.)?(KEY)$` from the start of the module
 * name, with the key translated from Python ({@link translatePythonPattern}). A key that cannot be
 * translated, or is not a regular expression, is a ConfigError naming `field` and the key.
 */
export function peftPatternRegExp(key: string, field = 'pattern'): RegExp {
  const t = translatePythonPattern(key);
  if ('error' in t)
    throw new ConfigError(
      `${field}: key ${JSON.stringify(key)} cannot be run as Python's re runs it: ${t.error}`,
      {
        hint: 'rewrite the key in plain regular-expression syntax, e.g. "v_proj" or "layers\\.0\\..*"',
        details: { field, value: key },
      },
    );
  try {
    return new RegExp(`^(.*\\.)?(${t.source})$`, t.flags);
  } catch (e) {
    throw new ConfigError(
      `${field}: key ${JSON.stringify(key)} is not a regular expression (${(e as Error).message})`,
      {
        hint: 'keys are PEFT regular expressions over module names, e.g. "q_proj" or "layers\\.0\\..*"',
        details: { field, value: key },
      },
    );
  }
}
