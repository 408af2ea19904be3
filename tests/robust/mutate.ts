/**
 * Mutations of real files for the fuzz tests, driven by a seeded generator (src/util/random.ts): the
 * same seed and case number give the same bytes on every machine. Each mutation returns the new
 * bytes and a one-line description, so a failing case can be named and replayed.
 *
 * - binary: bit flips, bytes and words overwritten with boundary values, truncation, insertion,
 *   deletion, duplicated and zeroed ranges, and known length/count fields set to absurd values;
 * - JSON: keys removed, duplicated or renamed, values replaced by other types and extremes;
 * - text lines (JSONL, YAML): lines dropped, duplicated, swapped, cut, re-indented, joined.
 */
import { seededUniform } from '../../src/util/random.js';

export type Rand = () => number;

/** A generator for case `index` of a named target: independent of every other case. */
export function caseRand(seed: number, target: string, index: number): Rand {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const c of `${target}#${index}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return seededUniform(h);
}

export function int(r: Rand, n: number): number {
  return Math.floor(r() * n);
}

export function pick<T>(r: Rand, xs: readonly T[]): T {
  return xs[int(r, xs.length)]!;
}

/** A length or count field of a binary header: where it is, how wide, what it counts. */
export interface Field {
  offset: number;
  size: 4 | 8;
  what: string;
}

export interface Mutated {
  bytes: Uint8Array;
  desc: string;
}

const BYTES = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x20, 0x22, 0x7b, 0x7d, 0x5b, 0x5d, 0x0a, 0x5c];
const WORDS32 = [
  0, 1, 2, 3, 4, 7, 8, 255, 256, 0x7fff, 0xffff, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff,
];
const WORDS64 = [
  0n,
  1n,
  2n ** 31n,
  2n ** 32n,
  2n ** 32n + 1n,
  2n ** 40n,
  2n ** 53n,
  2n ** 53n + 1n,
  2n ** 62n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 2n,
  2n ** 64n - 1n,
];

/** Ranges of a file where most mutations land (its header, less any long text payload). */
export type Hot = readonly (readonly [number, number])[];

/** A position in the file: mostly inside a `hot` range (chosen by length), sometimes anywhere. */
function position(r: Rand, size: number, hot: Hot): number {
  if (size === 0) return 0;
  const total = hot.reduce((n, [a, b]) => n + Math.max(0, b - a), 0);
  if (r() < 0.8 && total > 0) {
    let k = int(r, total);
    for (const [a, b] of hot) {
      if (k < b - a) return Math.min(size - 1, a + k);
      k -= Math.max(0, b - a);
    }
  }
  return int(r, size);
}

function writeWord(buf: Uint8Array, at: number, size: 4 | 8, value: bigint): void {
  for (let i = 0; i < size && at + i < buf.length; i++)
    buf[at + i] = Number((value >> BigInt(8 * i)) & 0xffn);
}

function readWord(buf: Uint8Array, at: number, size: 4 | 8): bigint {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(buf[at + i] ?? 0);
  return v;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One binary mutation of `orig`. `hot` is the range most mutations land in; `fields` the header's counts. */
export function mutateOnce(orig: Uint8Array, r: Rand, hot: Hot, fields: readonly Field[]): Mutated {
  const size = orig.length;
  const b = new Uint8Array(orig);
  const ops = ['bitflip', 'byte', 'word', 'field', 'truncate', 'insert', 'delete', 'dup', 'zero'] as const;
  const op = fields.length > 0 && r() < 0.3 ? 'field' : pick(r, ops);
  switch (op) {
    case 'bitflip': {
      const n = 1 + int(r, 8);
      const at: number[] = [];
      for (let i = 0; i < n; i++) {
        const p = position(r, size, hot);
        const bit = int(r, 8);
        if (p < size) b[p]! ^= 1 << bit;
        at.push(p * 8 + bit);
      }
      return { bytes: b, desc: `flip bits ${at.join(',')}` };
    }
    case 'byte': {
      const p = position(r, size, hot);
      const v = r() < 0.7 ? pick(r, BYTES) : int(r, 256);
      if (p < size) b[p] = v;
      return { bytes: b, desc: `byte ${p} = 0x${v.toString(16)}` };
    }
    case 'word': {
      const p = position(r, size, hot);
      const w = r() < 0.5 ? 4 : 8;
      const v = w === 4 ? BigInt(pick(r, WORDS32)) : pick(r, WORDS64);
      writeWord(b, p, w, v);
      return { bytes: b, desc: `u${w * 8} at ${p} = ${v}` };
    }
    case 'field': {
      const f =
        fields.length > 0
          ? pick(r, fields)
          : { offset: position(r, size, hot), size: 8 as const, what: 'a word' };
      const old = readWord(orig, f.offset, f.size);
      const max = f.size === 4 ? 2n ** 32n - 1n : 2n ** 64n - 1n;
      const choices = [
        old + 1n,
        old - 1n,
        old * 2n,
        old + 8n,
        old + 32n,
        0n,
        1n,
        BigInt(size),
        BigInt(size) - old,
        f.size === 4 ? BigInt(pick(r, WORDS32)) : pick(r, WORDS64),
      ];
      let v = pick(r, choices);
      if (v < 0n) v += max + 1n;
      if (v > max) v &= max;
      writeWord(b, f.offset, f.size, v);
      return { bytes: b, desc: `${f.what} (u${f.size * 8} at ${f.offset}) ${old} -> ${v}` };
    }
    case 'truncate': {
      const p = position(r, size, hot);
      return { bytes: orig.slice(0, p), desc: `truncate to ${p} bytes` };
    }
    case 'insert': {
      const p = position(r, size, hot);
      const n = 1 + int(r, 32);
      const junk = Uint8Array.from({ length: n }, () => (r() < 0.5 ? pick(r, BYTES) : int(r, 256)));
      return {
        bytes: concat(orig.subarray(0, p), junk, orig.subarray(p)),
        desc: `insert ${n} bytes at ${p}`,
      };
    }
    case 'delete': {
      const p = position(r, size, hot);
      const n = 1 + int(r, 64);
      return { bytes: concat(orig.subarray(0, p), orig.subarray(p + n)), desc: `delete ${n} bytes at ${p}` };
    }
    case 'dup': {
      const p = position(r, size, hot);
      const n = 1 + int(r, 256);
      const from = position(r, size, hot);
      return {
        bytes: concat(orig.subarray(0, p), orig.subarray(from, from + n), orig.subarray(p)),
        desc: `copy ${n} bytes from ${from} to ${p}`,
      };
    }
    case 'zero': {
      const p = position(r, size, hot);
      const n = 1 + int(r, 64);
      b.fill(r() < 0.5 ? 0 : 0xff, p, p + n);
      return { bytes: b, desc: `fill ${n} bytes at ${p}` };
    }
  }
}

/** One to three stacked binary mutations. */
export function mutateBinary(orig: Uint8Array, r: Rand, hot: Hot, fields: readonly Field[] = []): Mutated {
  const n = r() < 0.7 ? 1 : 2 + int(r, 2);
  let cur = orig;
  const descs: string[] = [];
  for (let i = 0; i < n; i++) {
    // later mutations keep the fields' offsets only while the length is unchanged
    const m = mutateOnce(cur, r, hot, cur.length === orig.length ? fields : []);
    cur = m.bytes;
    descs.push(m.desc);
  }
  return { bytes: cur, desc: descs.join('; ') };
}

// ---------------------------------------------------------------------------------------- JSON

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const ODD_VALUES: Json[] = [
  null,
  true,
  false,
  0,
  -1,
  1.5,
  -0.5,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  2 ** 64,
  1e308,
  -1e308,
  '',
  'x',
  '1',
  'F32',
  'BF16',
  'toString',
  '__proto__',
  [],
  [0],
  [-1, 2],
  [1e300, 1e300],
  [2 ** 53, 2 ** 53 + 2],
  {},
  { a: 1 },
];

/** The paths of every value in a JSON tree (arrays and objects included). */
function paths(
  v: Json,
  at: (string | number)[] = [],
  out: (string | number)[][] = [],
): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v !== null && typeof v === 'object')
    for (const [k, x] of Object.entries(v)) paths(x, [...at, k], out);
  return out;
}

function getAt(v: Json, p: readonly (string | number)[]): Json {
  let cur = v;
  for (const k of p) cur = (cur as Record<string, Json>)[k as string]!;
  return cur;
}

/** Sets an own property (also one named __proto__, as JSON.parse makes them). */
function setKey(parent: Record<string, Json> | Json[], key: string | number, v: Json): void {
  Object.defineProperty(parent, key, { value: v, enumerable: true, writable: true, configurable: true });
}

/** A JSON value with one semantic mutation; the text may hold a duplicated key JSON.stringify cannot. */
export function mutateJson(value: Json, r: Rand): { text: string; desc: string } {
  const copy = JSON.parse(JSON.stringify(value)) as Json;
  const all = paths(copy);
  const p = pick(r, all);
  const where = p.length === 0 ? '(root)' : p.join('.');
  const op = pick(r, [
    'replace',
    'replace',
    'replace',
    'remove',
    'duplicate',
    'rename',
    'nest',
    'number',
  ] as const);
  if (p.length === 0) {
    const v = pick(r, ODD_VALUES);
    return { text: JSON.stringify(v), desc: `root = ${JSON.stringify(v)}` };
  }
  const parent = getAt(copy, p.slice(0, -1)) as Record<string, Json> | Json[];
  const key = p[p.length - 1]!;
  switch (op) {
    case 'replace': {
      const v = pick(r, ODD_VALUES);
      setKey(parent, key, v);
      return { text: JSON.stringify(copy), desc: `${where} = ${JSON.stringify(v)}` };
    }
    case 'number': {
      const old = getAt(copy, p);
      const v =
        typeof old === 'number' ? pick(r, [old + 1, old - 1, old * 2, -old, old + 0.5, old * 1e6]) : 7;
      setKey(parent, key, v);
      return { text: JSON.stringify(copy), desc: `${where} = ${v}` };
    }
    case 'remove': {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else Reflect.deleteProperty(parent, key);
      return { text: JSON.stringify(copy), desc: `remove ${where}` };
    }
    case 'rename': {
      if (Array.isArray(parent)) return { text: JSON.stringify(copy), desc: 'unchanged' };
      const v = parent[key as string]!;
      Reflect.deleteProperty(parent, key);
      const name = pick(r, [`${key}x`, '', '__proto__', 'constructor', String(key).toUpperCase()]);
      setKey(parent, name, v);
      return { text: JSON.stringify(copy), desc: `rename ${where} to ${JSON.stringify(name)}` };
    }
    case 'nest': {
      const old = getAt(copy, p);
      setKey(parent, key, pick(r, [[old], { v: old }]));
      return { text: JSON.stringify(copy), desc: `wrap ${where}` };
    }
    case 'duplicate': {
      // a key written twice: JSON.parse keeps the last, so the second carries the odd value
      if (Array.isArray(parent)) return { text: JSON.stringify(copy), desc: 'unchanged' };
      const v = pick(r, ODD_VALUES);
      return {
        text: stringify(copy, { obj: parent, key: String(key), value: v }),
        desc: `duplicate key ${where} = ${JSON.stringify(v)}`,
      };
    }
  }
}

/** JSON text, with `dup.key` written a second time (value `dup.value`) in the object `dup.obj`. */
function stringify(v: Json, dup: { obj: object; key: string; value: Json }): string {
  if (Array.isArray(v)) return `[${v.map((x) => stringify(x, dup)).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const parts = Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${stringify(x, dup)}`);
    if (v === dup.obj) parts.push(`${JSON.stringify(dup.key)}:${JSON.stringify(dup.value)}`);
    return `{${parts.join(',')}}`;
  }
  return JSON.stringify(v);
}

// ---------------------------------------------------------------------------------------- lines

/** One mutation of a text file's lines (JSONL, YAML); `yaml` adds indentation and YAML-only damage. */
export function mutateLines(text: string, r: Rand, yaml: boolean): { text: string; desc: string } {
  const lines = text.split('\n');
  const i = int(r, lines.length);
  const line = lines[i]!;
  const ops = [
    'drop',
    'dup',
    'swap',
    'cut',
    'char',
    'join',
    'blank',
    'junkline',
    ...(yaml ? (['indent', 'dedent', 'tab', 'yaml', 'yaml', 'colon', 'dupkey'] as const) : []),
  ] as const;
  const op = pick(r, ops);
  switch (op) {
    case 'drop':
      lines.splice(i, 1);
      return { text: lines.join('\n'), desc: `drop line ${i + 1}` };
    case 'dup':
      lines.splice(i, 0, line);
      return { text: lines.join('\n'), desc: `duplicate line ${i + 1}` };
    case 'swap': {
      const j = int(r, lines.length);
      [lines[i], lines[j]] = [lines[j]!, line];
      return { text: lines.join('\n'), desc: `swap lines ${i + 1} and ${j + 1}` };
    }
    case 'cut': {
      const at = int(r, line.length + 1);
      lines[i] = line.slice(0, at);
      return { text: lines.join('\n'), desc: `cut line ${i + 1} at ${at}` };
    }
    case 'char': {
      const at = int(r, line.length + 1);
      const c = pick(r, [
        '{',
        '}',
        '[',
        ']',
        '"',
        ',',
        ':',
        '\\',
        '\n',
        '#',
        '\u0000',
        '\ud800',
        '\u2028',
        "'",
        '&',
        '*',
        '!',
        '|',
        '>',
        '-',
        '%',
        '@',
        '`',
      ]);
      const del = r() < 0.3 ? 1 : 0;
      lines[i] = line.slice(0, at) + c + line.slice(at + del);
      return {
        text: lines.join('\n'),
        desc: `line ${i + 1}: ${del ? 'replace' : 'insert'} ${JSON.stringify(c)} at ${at}`,
      };
    }
    case 'join':
      lines.splice(i, 2, line + (lines[i + 1] ?? ''));
      return { text: lines.join('\n'), desc: `join lines ${i + 1} and ${i + 2}` };
    case 'blank':
      lines.splice(i, 0, pick(r, ['', '   ', '\t', '\r', '\ufeff']));
      return { text: lines.join('\n'), desc: `blank line before ${i + 1}` };
    case 'junkline': {
      const junk = pick(r, yaml ? YAML_JUNK : JSONL_JUNK);
      lines.splice(i, 0, junk);
      return { text: lines.join('\n'), desc: `insert line ${JSON.stringify(junk)} before ${i + 1}` };
    }
    case 'indent': {
      const pad = ' '.repeat(1 + int(r, 4));
      lines[i] = pad + line;
      return { text: lines.join('\n'), desc: `indent line ${i + 1} by ${pad.length}` };
    }
    case 'dedent':
      lines[i] = line.trimStart();
      for (let k = i + 1; k < lines.length && r() < 0.5; k++) lines[k] = ' ' + lines[k]!;
      return { text: lines.join('\n'), desc: `dedent line ${i + 1}, indent some after` };
    case 'tab':
      lines[i] = '\t' + line;
      return { text: lines.join('\n'), desc: `tab before line ${i + 1}` };
    case 'colon':
      lines[i] = line.replace(': ', pick(r, [':', ' : ', '::', ': : ', '=']));
      return { text: lines.join('\n'), desc: `damage the colon of line ${i + 1}` };
    case 'dupkey':
      lines.push(line);
      return { text: lines.join('\n'), desc: `repeat line ${i + 1} at the end` };
    case 'yaml': {
      const m = /^(\s*[\w.]+):\s*(.*)$/.exec(line);
      const v = pick(r, YAML_VALUES);
      if (m === null) {
        lines.splice(
          i,
          0,
          `${pick(r, ['batch_size', 'lr', 'model', 'lora_target_modules', 'toString', '__proto__'])}: ${v}`,
        );
        return { text: lines.join('\n'), desc: `insert a key with value ${JSON.stringify(v)}` };
      }
      lines[i] = `${m[1]}: ${v}`;
      return { text: lines.join('\n'), desc: `line ${i + 1}: ${m[1]} = ${JSON.stringify(v)}` };
    }
  }
}

const YAML_VALUES = [
  '~',
  'null',
  '[]',
  '{}',
  '[1, 2',
  '{a: 1',
  '.nan',
  '.inf',
  '-.inf',
  '1e999',
  '-1',
  '0',
  '0x10',
  '1_000',
  '2.5',
  '"str"',
  "'str",
  'yes',
  'true',
  '!!binary aGVsbG8=',
  '!!js/function "f"',
  '!!str 3',
  '&a [1, 2]',
  '*a',
  '*undefined_alias',
  '|\n  block',
  '>-',
  '- a\n- b',
  '? complex',
  '[a, [b, [c]]]',
  '2001-12-14t21:59:43.10-05:00',
  'a'.repeat(300),
];

const YAML_JUNK = [
  '---',
  '...',
  '%YAML 1.2',
  '%TAG ! tag:example.com,2000:',
  '- item',
  'a: &x [*x]',
  'a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]',
  '<<: {batch_size: 2}',
  '__proto__: {batch_size: 2}',
  'constructor: 1',
  '? [a, b]\n: c',
  '"unterminated: 1',
  '\ttabbed: 1',
  '{',
  ': no key',
];

const JSONL_JUNK = [
  '{',
  '}',
  '[]',
  '[{}]',
  'null',
  '1',
  '"text"',
  '{"instruction": 1, "output": 2}',
  '{"instruction": "q", "output": null}',
  '{"instruction": "", "output": "a"}',
  '{"instruction": "q", "output": "a", "input": []}',
  '{"messages": "x"}',
  '{"__proto__": {"output": "a"}, "instruction": "q"}',
  '{"instruction": "q", "output": "a"}{"x": 1}',
  '{"instruction": "q\\ud800", "output": "a"}',
  '{"instruction": "' + 'x'.repeat(5000) + '", "output": "a"}',
];
