/**
 * The layers of src/ and the one direction of imports between them (DESIGN.md §4), checked on every
 * file. Each file's imports are read from its syntax tree, so comments and strings do not count:
 * `import … from`, `import type … from`, `export … from`, `import('…')` and `typeof import('…')`.
 * A layer is a top-level folder of src/ or a top-level file (index.ts, errors.ts). The test fails,
 * naming the file, the line and the import, on
 *   (a) an import cycle between layers,
 *   (b) an import of a layer that is not beneath the importer in {@link LAYERS},
 *   (c) koffi, imported or used, in a file outside src/engine ("nothing above imports koffi").
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import ts from 'typescript';
import { ROOT } from './helpers/cli.js';

/**
 * What each layer rests on directly. A layer may import the layers beneath it (these, what these rest
 * on, and so on down) and nothing else. From DESIGN.md §4 — cli → train → {models, peft, quant, optim,
 * data, io}; peft → quant → tensor → engine; backends → engine; models never import peft or quant —
 * with peft (src/peft) also resting on models, whose linear layers it wraps and whose config it reads,
 * and the folders DESIGN.md does not name put where what they do puts them.
 */
const LAYERS: Readonly<Record<string, readonly string[]>> = {
  'index.ts': ['report', 'demo', 'dist', 'train'], // the public API: everything but the CLI
  cli: ['bench', 'report', 'demo', 'dist', 'train'],
  bench: ['train'], // the training benchmark runs the Trainer
  report: ['train'], // log sinks: they read the trainer's LogRecord and TrainResult
  demo: ['optim'], // the QLoRA MLP demo: tensors and an optimizer, no model
  // the Trainer takes a communicator through its own Collectives interface, so train does not import dist
  dist: ['engine'],
  train: ['peft', 'models', 'quant', 'optim', 'data', 'io'],
  peft: ['quant', 'models'], // adapters wrap a model's linear layers; Llama-Pro copies its blocks
  quant: ['backends', 'io', 'tensor'],
  models: ['backends', 'io', 'tensor'],
  optim: ['tensor'],
  data: ['io'], // datasets, formats and packing; the Example the Trainer takes is declared here
  backends: ['tensor'],
  io: ['engine'], // file formats: safetensors, GGUF, tokenizer files, the Hub
  tensor: ['engine'],
  engine: ['util', 'errors.ts'], // the only layer that uses koffi
  util: ['errors.ts'],
  'errors.ts': [],
};

const SRC = path.join(ROOT, 'src');

/** Files whose one computed import('…') loads a user's module (GRPO's reward functions), not a part of src/. */
const USER_MODULES = new Set(['src/train/rewards.ts']);

/** One import in a file: its line and the module specifier as written. */
interface ImportSite {
  line: number;
  spec: string;
}

/** What the layering needs from one source file: its imports, and the lines that name koffi. */
function readSource(fileName: string, text: string): { imports: ImportSite[]; koffi: number[] } {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true);
  const imports: ImportSite[] = [];
  const koffi = new Set<number>();
  const lineOf = (n: ts.Node) => sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1;
  const add = (n: ts.Node, spec: ts.Node | undefined) => {
    if (spec === undefined) return;
    // a computed import('…') cannot be placed in a layer: it is reported as such
    const s = ts.isStringLiteralLike(spec) ? spec.text : `<computed: ${spec.getText(sf)}>`;
    imports.push({ line: lineOf(n), spec: s });
    if (s === 'koffi' || s.startsWith('koffi/')) koffi.add(lineOf(n));
  };
  const visit = (n: ts.Node): void => {
    if (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) add(n, n.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference))
      add(n, n.moduleReference.expression);
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword)
      add(n, n.arguments[0]);
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument)) add(n, n.argument.literal);
    if (ts.isIdentifier(n) && n.text === 'koffi') koffi.add(lineOf(n));
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return { imports, koffi: [...koffi].sort((a, b) => a - b) };
}

/** The layer of a path relative to src/: its top-level folder, or the file itself (as `.ts`). */
function layerOf(rel: string, isDir: (rel: string) => boolean): string {
  const first = rel.split('/')[0]!;
  if (rel.includes('/') || isDir(first)) return first;
  return first.replace(/\.[cm]?[jt]s$/, '.ts');
}

/** An import between two layers, with where it is written. */
interface LayerImport {
  /** The importing file, relative to the repository (src/data/dataset.ts). */
  file: string;
  line: number;
  spec: string;
  from: string;
  to: string;
}

/** The layers beneath `layer` in `table` (what it may import). */
function beneath(table: Readonly<Record<string, readonly string[]>>, layer: string): Set<string> {
  const out = new Set<string>();
  const walk = (l: string) => {
    for (const b of table[l] ?? []) {
      if (out.has(b)) continue;
      out.add(b);
      walk(b);
    }
  };
  walk(layer);
  return out;
}

/** One cycle through each strongly connected group of more than one node (Tarjan), as [a, b, …, a]. */
function findCycles(graph: ReadonlyMap<string, Iterable<string>>): string[][] {
  const succ = (v: string) => [...(graph.get(v) ?? [])].sort();
  const nodes = [...new Set([...graph.keys(), ...[...graph.values()].flatMap((s) => [...s])])].sort();
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const groups: string[][] = [];
  const strong = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of succ(v)) {
      if (!index.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const group: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        group.push(w);
      } while (w !== v);
      if (group.length > 1) groups.push(group.sort());
    }
  };
  for (const v of nodes) if (!index.has(v)) strong(v);
  // the shortest way round from the group's first node back to it, inside the group
  return groups.map((group) => {
    const inGroup = new Set(group);
    const start = group[0]!;
    const prev = new Map<string, string>();
    const queue = [start];
    search: while (queue.length > 0) {
      const v = queue.shift()!;
      for (const w of succ(v)) {
        if (!inGroup.has(w) || prev.has(w)) continue;
        prev.set(w, v);
        if (w === start) break search;
        queue.push(w);
      }
    }
    const cycle = [start];
    for (let v = prev.get(start)!; v !== start; v = prev.get(v)!) cycle.unshift(v);
    cycle.unshift(start);
    return cycle;
  });
}

/** The imports of `imports` that go against `table`, one line each, naming the file and the import. */
function orderProblems(imports: readonly LayerImport[], table: Readonly<Record<string, readonly string[]>>) {
  const problems: string[] = [];
  for (const i of imports) {
    const at = `${i.file}:${i.line} imports '${i.spec}'`;
    if (!(i.from in table)) problems.push(`${at}: ${i.from} is not a layer of the table in this test`);
    else if (!(i.to in table)) problems.push(`${at}: ${i.to} is not a layer of the table in this test`);
    else if (!beneath(table, i.from).has(i.to)) {
      const may = [...beneath(table, i.from)].join(', ') || 'nothing';
      problems.push(`${at}: ${i.from} may not import ${i.to} (it rests on ${may}; DESIGN.md §4)`);
    }
  }
  return problems;
}

/** The cycles between layers, each with the import behind every step. */
function cycleProblems(imports: readonly LayerImport[]): string[] {
  const graph = new Map<string, Set<string>>();
  const via = new Map<string, LayerImport>();
  for (const i of imports) {
    if (!graph.has(i.from)) graph.set(i.from, new Set());
    graph.get(i.from)!.add(i.to);
    if (!via.has(`${i.from} ${i.to}`)) via.set(`${i.from} ${i.to}`, i);
  }
  return findCycles(graph).map((cycle) => {
    const steps = cycle.slice(1).map((to, k) => {
      const i = via.get(`${cycle[k]!} ${to}`)!;
      return `\n  ${i.file}:${i.line} imports '${i.spec}'`;
    });
    return `import cycle ${cycle.join(' -> ')}:${steps.join('')}`;
  });
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) return sourceFiles(p);
      return /\.[cm]?[jt]s$/.test(e.name) && !e.name.endsWith('.d.ts') ? [p] : [];
    })
    .sort();
}

/** Every file of src/ read once: the imports between layers, and where koffi appears outside engine. */
function readSrc(): { imports: LayerImport[]; outside: string[]; koffi: string[]; files: number } {
  const isDir = (rel: string) =>
    statSync(path.join(SRC, rel), { throwIfNoEntry: false })?.isDirectory() ?? false;
  const imports: LayerImport[] = [];
  const outside: string[] = [];
  const koffi: string[] = [];
  const files = sourceFiles(SRC);
  for (const abs of files) {
    const rel = path.relative(SRC, abs).split(path.sep).join('/');
    const file = `src/${rel}`;
    const from = layerOf(rel, isDir);
    const facts = readSource(abs, readFileSync(abs, 'utf8'));
    if (from !== 'engine') for (const line of facts.koffi) koffi.push(`${file}:${line} uses koffi`);
    for (const { line, spec } of facts.imports) {
      if (spec.startsWith('<computed')) {
        if (USER_MODULES.has(file)) continue; // a user's own module, not a layer of src/
        outside.push(`${file}:${line} imports ${spec}: only a written path can be checked`);
        continue;
      }
      if (!spec.startsWith('.')) continue; // node: builtins and packages
      const target = path
        .relative(SRC, path.resolve(path.dirname(abs), spec))
        .split(path.sep)
        .join('/');
      if (target.startsWith('..') || path.isAbsolute(target)) {
        outside.push(`${file}:${line} imports '${spec}', which is outside src/`);
        continue;
      }
      const to = layerOf(target, isDir);
      if (to !== from) imports.push({ file, line, spec, from, to });
    }
  }
  return { imports, outside, koffi, files: files.length };
}

describe('the checker itself', () => {
  it('reads imports from the syntax tree: every kind, and not comments or strings', () => {
    const text = [
      "import { a } from './a.js';",
      "import type { B } from '../b/b.js';",
      "export { c } from './c.js';",
      "export * from '../d/index.js';",
      "// import { no } from '../comment.js';",
      'const s = "import { no } from \'../string.js\'";',
      "type T = typeof import('../e/e.js');",
      "const m = await import('../f/f.js');",
      "import fs from 'node:fs';",
      'koffi.decode(p, S); // koffi',
      '/* koffi */ const k = 1;',
      'const mod = await import(name);',
    ].join('\n');
    const r = readSource('x.ts', text);
    assert.deepEqual(r.imports, [
      { line: 1, spec: './a.js' },
      { line: 2, spec: '../b/b.js' },
      { line: 3, spec: './c.js' },
      { line: 4, spec: '../d/index.js' },
      { line: 7, spec: '../e/e.js' },
      { line: 8, spec: '../f/f.js' },
      { line: 9, spec: 'node:fs' },
      { line: 12, spec: '<computed: name>' },
    ]);
    assert.deepEqual(r.koffi, [10]);
    assert.deepEqual(readSource('y.ts', "import koffi from 'koffi';\n").koffi, [1]);
    assert.deepEqual(readSource('z.ts', "import type { LibraryHandle } from 'koffi';\n").koffi, [1]);
  });

  it('names a layer by its top-level folder or file', () => {
    const isDir = (rel: string) => rel === 'tensor';
    assert.equal(layerOf('tensor/ops/common.ts', isDir), 'tensor');
    assert.equal(layerOf('tensor', isDir), 'tensor');
    assert.equal(layerOf('errors.js', isDir), 'errors.ts');
    assert.equal(layerOf('index.ts', isDir), 'index.ts');
  });

  it('finds the cycles of a small hand-made import map, and none in one without', () => {
    const map = (o: Record<string, string[]>) => new Map(Object.entries(o));
    assert.deepEqual(findCycles(map({ a: ['b'], b: ['c'], c: ['a', 'd'], d: [] })), [['a', 'b', 'c', 'a']]);
    assert.deepEqual(findCycles(map({ a: ['b'], b: ['a'], c: ['d'], d: ['e'], e: ['c'], f: ['a'] })), [
      ['a', 'b', 'a'],
      ['c', 'd', 'e', 'c'],
    ]);
    assert.deepEqual(findCycles(map({ a: ['b', 'c'], b: ['c'], c: [] })), []);
    const cycle = cycleProblems([
      { file: 'src/data/x.ts', line: 3, spec: '../train/t.js', from: 'data', to: 'train' },
      { file: 'src/train/t.ts', line: 9, spec: '../data/x.js', from: 'train', to: 'data' },
    ]);
    assert.deepEqual(cycle, [
      "import cycle data -> train -> data:\n  src/data/x.ts:3 imports '../train/t.js'\n  src/train/t.ts:9 imports '../data/x.js'",
    ]);
  });

  it('refuses an import against the table, naming the file and the import', () => {
    const problems = orderProblems(
      [
        { file: 'src/models/llama.ts', line: 5, spec: '../quant/linear.js', from: 'models', to: 'quant' },
        { file: 'src/data/dataset.ts', line: 14, spec: '../train/trainer.js', from: 'data', to: 'train' },
        { file: 'src/train/trainer.ts', line: 57, spec: '../data/example.js', from: 'train', to: 'data' },
        { file: 'src/cli/main.ts', line: 2, spec: '../engine/device.js', from: 'cli', to: 'engine' },
        { file: 'src/nn/linear.ts', line: 1, spec: '../tensor/index.js', from: 'nn', to: 'tensor' },
      ],
      LAYERS,
    );
    assert.equal(problems.length, 3, problems.join('\n'));
    assert.match(
      problems[0]!,
      /^src\/models\/llama\.ts:5 imports '\.\.\/quant\/linear\.js': models may not import quant/,
    );
    assert.match(problems[1]!, /^src\/data\/dataset\.ts:14 imports '\.\.\/train\/trainer\.js': data may not/);
    assert.match(problems[2]!, /^src\/nn\/linear\.ts:1 .*nn is not a layer of the table/);
  });

  it('the table has no cycle and keeps the rules DESIGN.md §4 states', () => {
    assert.deepEqual(findCycles(new Map(Object.entries(LAYERS))), []);
    for (const [layer, rests] of Object.entries(LAYERS))
      for (const r of rests) assert.ok(r in LAYERS, `${layer} rests on ${r}, which is not in the table`);
    const below = (l: string) => beneath(LAYERS, l);
    for (const l of ['train', 'peft', 'models', 'quant', 'optim', 'data', 'io'])
      assert.ok(below('cli').has(l));
    for (const l of ['peft', 'models', 'quant', 'optim', 'data', 'io']) assert.ok(below('train').has(l), l);
    assert.ok(below('peft').has('quant'));
    assert.ok(below('quant').has('tensor'));
    assert.ok(below('tensor').has('engine'));
    assert.ok(below('backends').has('engine'));
    for (const l of ['peft', 'quant', 'train']) assert.ok(!below('models').has(l), `models rests on ${l}`);
    for (const l of ['peft', 'models', 'train']) assert.ok(!below('quant').has(l), `quant rests on ${l}`);
    assert.ok(!below('data').has('train'));
    assert.deepEqual([...below('engine')].sort(), ['errors.ts', 'util']);
    for (const l of Object.keys(LAYERS)) assert.ok(!below(l).has('cli') && !below(l).has('index.ts'), l);
  });
});

describe('the layers of src/ (DESIGN.md §4)', () => {
  const src = readSrc();

  it('every file of src/ is in a layer of the table, and imports only from src/', () => {
    assert.ok(src.files > 50, `read only ${src.files} files under ${SRC}`);
    const isDir = (rel: string) => statSync(path.join(SRC, rel)).isDirectory();
    const unknown = readdirSync(SRC)
      .filter((e) => isDir(e) || /\.[cm]?[jt]s$/.test(e))
      .map((e) => layerOf(e, isDir))
      .filter((l) => !(l in LAYERS));
    assert.deepEqual(
      unknown,
      [],
      `src/ has layers the table in this test does not place: ${unknown.join(', ')}`,
    );
    assert.deepEqual(src.outside, [], src.outside.join('\n'));
  });

  it('(a) no import cycle between layers', () => {
    const problems = cycleProblems(src.imports);
    assert.deepEqual(problems, [], problems.join('\n'));
  });

  it('(b) every import goes down the table', () => {
    const problems = orderProblems(src.imports, LAYERS);
    assert.deepEqual(problems, [], problems.join('\n'));
  });

  it('(c) koffi only in src/engine', () => {
    assert.deepEqual(
      src.koffi,
      [],
      `nothing above src/engine imports or uses koffi:\n${src.koffi.join('\n')}`,
    );
  });
});
