/**
 * Every code sample in README.md and docs/*.md is checked for real, by the language of its fence:
 *
 * - `ts`, `typescript`: type-checked in-process by TypeScript's compiler API (strict, as this
 *   package compiles), each block an ES module whose `import ... from 'qtune'` resolves to the built
 *   package's declarations (dist/src/index.d.ts). A block names what it takes from elsewhere with
 *   `declare const x: Type;`. README.md's ts blocks are self-contained and also run, compiled, with
 *   node, in a folder that holds `tiny-model` (from `qtune init-tiny`) and the repository's `data/`.
 * - `yaml`: a `qtune train` config, read by qtune's own reader (`readConfigFile`) and validated by
 *   `resolveTrainConfig`, so an unknown key or a bad value fails; a snippet that names no `model` or
 *   `dataset` gets placeholders for them.
 * - `bash`, `sh`: every `qtune <command> ...` (after `npx`, `node bin/qtune.js`, `mpirun ... qtune`)
 *   must name a real command, and its flags must parse with that command's own parser (`qtune train`'s
 *   through `resolveTrainConfig`, over the `examples/` config it names); `qtune launch -- train ...`
 *   checks both. `npm run X` must name a script of package.json, `bash FILE` a file of the repository.
 *   Cheap commands are run: `--help` lines, `qtune quant methods`. Other programs' lines (apt-get,
 *   mpirun without qtune) are not checked. An unquoted `...` stands for elided arguments and is dropped.
 *   README.md's shell lines also run, in README order, in a folder holding copies of `examples/` and
 *   `data/` (as a clone's root): each `qtune` command verbatim, with flags added that shorten it
 *   ({@link SHORTEN}); the other lines are skipped, each with its reason ({@link README_SKIPPED}).
 * - `console`: a transcript; each `$ ` line is checked as a `bash` line, the others are output. A
 *   `$ ` line followed by `qtune: error: ...` may have arguments that fail the check only with
 *   exactly that error (otherwise the error comes at run time and the arguments must be valid).
 * - `text`: output or anything else that is not checked.
 *
 * Any other fence, or a fence without a language, fails: a sample cannot go unchecked by accident.
 * Also checked: every relative link in these pages (and BENCHMARKS.md) names a file that exists and,
 * with `#anchor`, a heading of it. The last test feeds a wrong import, a wrong flag, a wrong command
 * and a wrong config key through the same checks and requires each to fail.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, it } from 'node:test';
import ts from 'typescript';
import { parse, type CommandSpec } from '../src/cli/args.js';
import { readFlags } from '../src/cli/commands/train.js';
import { readConfigFile, resolveTrainConfig } from '../src/cli/train-config.js';
import { QtuneError } from '../src/errors.js';
import { qtune, ROOT } from './helpers/cli.js';

const CHECKED = ['ts', 'typescript', 'yaml', 'bash', 'sh', 'console'] as const;
const UNCHECKED = ['text'] as const;

interface Block {
  /** The page, relative to the repository root. */
  page: string;
  /** 1-based line of the opening fence. */
  line: number;
  lang: string;
  code: string;
}

const PAGES = [
  'README.md',
  ...readdirSync(path.join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];

/** The fenced blocks of a Markdown text (``` or ~~~, indented under a list item or not). */
function fencedBlocks(page: string, text: string): Block[] {
  const lines = text.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*([^`\s]*)/.exec(lines[i]!);
    if (open === null) continue;
    const [, indent = '', fence = '', lang = ''] = open;
    const close = new RegExp(`^\\s*${fence[0]}{${fence.length},}\\s*$`);
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && !close.test(lines[j]!); j++) {
      const l = lines[j]!;
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l);
    }
    assert.ok(j < lines.length, `${page}:${i + 1}: a fence that is never closed`);
    blocks.push({ page, line: i + 1, lang, code: body.join('\n') });
    i = j;
  }
  return blocks;
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-docs-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------- TypeScript

/** Type-checks the blocks as ES modules against qtune's declarations; one message per error. */
let checks = 0;
function typeCheck(blocks: Block[]): { block: Block; message: string }[] {
  const run = checks++;
  const files = blocks.map((b, i) => {
    const file = path.join(tmp, `sample-${run}-${i}.mts`);
    writeFileSync(file, b.code);
    return file;
  });
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ['lib.es2023.d.ts'],
    types: ['node'],
    typeRoots: [path.join(ROOT, 'node_modules', '@types')],
    strict: true,
    noUncheckedIndexedAccess: true,
    exactOptionalPropertyTypes: true,
    skipLibCheck: true,
    noEmit: true,
    paths: { qtune: [path.join(ROOT, 'dist', 'src', 'index.d.ts')] },
  };
  const program = ts.createProgram(files, options);
  const errors: { block: Block; message: string }[] = [];
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
    const i = d.file === undefined ? -1 : files.indexOf(path.resolve(d.file.fileName));
    if (i < 0) {
      // a problem outside the samples (the options, qtune's declarations): counted against the first
      errors.push({ block: blocks[0]!, message: `TS${d.code}: ${text}` });
      continue;
    }
    const at = d.file!.getLineAndCharacterOfPosition(d.start ?? 0).line;
    const b = blocks[i]!;
    errors.push({ block: b, message: `${b.page}:${b.line + 1 + at}: TS${d.code}: ${text}` });
  }
  return errors;
}

// ---------------------------------------------------------------- YAML

/** Reads a config block with qtune's reader and validates it; throws what qtune would print. */
function checkConfig(code: string, name: string): void {
  const file = path.join(tmp, `${name}.yaml`);
  writeFileSync(file, code);
  const values = readConfigFile(file);
  resolveTrainConfig({ model: 'placeholder-model', dataset: 'placeholder.jsonl', ...values });
}

// ---------------------------------------------------------------- shell

const PACKAGE = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
  scripts: Record<string, string>;
};

/** The commands `qtune --help` lists, read from the real binary once. */
let commandNames: string[] | undefined;
function qtuneCommands(): string[] {
  if (commandNames === undefined) {
    const r = qtune(['--help']);
    assert.equal(r.code, 0, r.stderr);
    const list = r.stdout.split('commands:')[1] ?? '';
    commandNames = [...list.matchAll(/^ {2}(\S+)/gm)].map((m) => m[1]!);
    assert.ok(commandNames.includes('train'), r.stdout);
  }
  return commandNames;
}

const specs = new Map<string, CommandSpec>();
async function commandSpec(name: string): Promise<CommandSpec> {
  let spec = specs.get(name);
  if (spec === undefined) {
    const url = pathToFileURL(path.join(ROOT, 'dist', 'src', 'cli', 'commands', `${name}.js`)).href;
    spec = ((await import(url)) as { spec: CommandSpec }).spec;
    assert.equal(spec.name, name);
    specs.set(name, spec);
  }
  return spec;
}

/**
 * Words of a shell line: quotes joined, a `#` comment dropped, split at `&&`, `||`, `;` and `|`; an
 * unquoted `...` (elided arguments) dropped.
 */
function shellCommands(line: string): string[][] {
  const commands: string[][] = [[]];
  let word: string | null = null;
  let quoted = false;
  const end = (): void => {
    if (word !== null && (quoted || word !== '...')) commands[commands.length - 1]!.push(word);
    word = null;
    quoted = false;
  };
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === '"' || c === "'") {
      const close = line.indexOf(c, i + 1);
      if (close < 0) throw new Error(`unbalanced ${c} in: ${line}`);
      word = (word ?? '') + line.slice(i + 1, close);
      quoted = true;
      i = close;
    } else if (/\s/.test(c)) {
      end();
    } else if (c === '#' && word === null) {
      break;
    } else if (c === ';' || c === '|' || (c === '&' && line[i + 1] === '&')) {
      end();
      if (line[i + 1] === c) i++;
      commands.push([]);
    } else word = (word ?? '') + c;
  }
  end();
  return commands.filter((c) => c.length > 0);
}

/** What a usage line allows before its flags: literal subcommands (`info`) or placeholders (`DIR`). */
function positionalForms(spec: CommandSpec): string[][] {
  return spec.usage.split(' | ').map((alt) => {
    const words = alt.trim().split(/\s+/);
    const start = words.indexOf(spec.name) + 1;
    const out: string[] = [];
    for (const w of words.slice(start)) {
      if (w.startsWith('-') || w.startsWith('[')) break;
      out.push(w);
    }
    return out;
  });
}

/** Checks one `qtune ...` argument list; returns the argument lists that are cheap enough to run. */
async function checkQtune(argv: string[], where: string): Promise<string[][]> {
  const [name, ...rest] = argv;
  assert.ok(name !== undefined, `${where}: qtune without a command`);
  assert.ok(qtuneCommands().includes(name), `${where}: "${name}" is not a qtune command`);
  const cheap = rest.includes('--help') || (name === 'quant' && rest[0] === 'methods') ? [argv] : [];
  if (name === 'train') {
    const { config, help, flags } = readFlags(rest);
    if (help) return cheap;
    let file: Record<string, unknown> = {};
    if (config !== undefined && (config.startsWith('examples/') || existsSync(path.join(ROOT, config))))
      file = readConfigFile(path.join(ROOT, config));
    resolveTrainConfig({ model: 'placeholder-model', dataset: 'placeholder.jsonl', ...file }, flags);
    return cheap;
  }
  const spec = await commandSpec(name);
  if (name === 'launch') {
    const dash = rest.indexOf('--');
    const { values } = parse(spec, dash < 0 ? rest : rest.slice(0, dash));
    assert.ok(values['np'] !== undefined || values['help'] === true, `${where}: launch without -n`);
    if (dash < 0) return cheap;
    return [...cheap, ...(await checkQtune(rest.slice(dash + 1), where))];
  }
  const { positionals } = parse(spec, rest);
  const forms = positionalForms(spec);
  const fits = forms.some(
    (form) =>
      positionals.length <= form.length &&
      positionals.every((p, k) => !/^[a-z]/.test(form[k]!) || form[k] === p),
  );
  assert.ok(
    fits,
    `${where}: qtune ${name} takes ${forms.map((f) => f.join(' ') || '(no positional argument)').join(' | ')}, not ${positionals.join(' ')}`,
  );
  return cheap;
}

/** Checks a shell block (or a console transcript's `$ ` lines); returns the cheap commands to run. */
async function checkShell(block: Block): Promise<string[][]> {
  const raw = block.code.split('\n');
  const lines: { text: string; line: number; error?: string }[] = [];
  for (let i = 0; i < raw.length; i++) {
    let text = raw[i]!;
    const line = block.line + 1 + i;
    if (block.lang === 'console') {
      if (!text.startsWith('$ ')) continue;
      text = text.slice(2);
    }
    while (text.endsWith('\\') && i + 1 < raw.length) text = text.slice(0, -1) + ' ' + raw[++i]!;
    // a transcript's command followed by qtune's error line: the error it documents
    const next = raw[i + 1];
    if (block.lang === 'console' && next !== undefined && next.startsWith('qtune: error: '))
      lines.push({ text, line, error: next });
    else lines.push({ text, line });
  }
  const toRun: string[][] = [];
  for (const { text, line, error } of lines) {
    const where = `${block.page}:${line}`;
    for (const words of shellCommands(text)) {
      if (words[0] === 'npm') {
        if (words[1] === 'run')
          assert.ok(Object.hasOwn(PACKAGE.scripts, words[2] ?? ''), `${where}: no npm script "${words[2]}"`);
        if (words[1] === 'test') assert.ok(Object.hasOwn(PACKAGE.scripts, 'test'), where);
      }
      if (words[0] === 'bash' && words[1] !== undefined)
        assert.ok(existsSync(path.join(ROOT, words[1])), `${where}: ${words[1]} does not exist`);
      const at = words.findIndex((w) => w === 'qtune' || /(^|\/)qtune(\.js)?$/.test(w));
      if (at < 0) continue;
      try {
        toRun.push(...(await checkQtune(words.slice(at + 1), where)));
      } catch (e) {
        // a documented error that the arguments alone cause must be the one qtune gives; one that
        // comes at run time (a full device, a missing mpirun) leaves the arguments valid
        if (error === undefined || !(e instanceof QtuneError))
          throw new Error(`${where}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
        assert.equal(`qtune: error: ${e.message}`, error, `${where}: the error qtune gives`);
      }
    }
  }
  return toRun;
}

// ---------------------------------------------------------------- README commands, run

/** Flags appended to a README command to make it a smoke run; its own words stay as written. */
const SHORTEN: Record<string, (rest: string[]) => string[]> = {
  quickstart: () => ['--pretrain-steps', '2', '--finetune-steps', '2', '--answer-tokens', '4'],
  train: (rest) => {
    const { config } = readFlags(rest);
    const file = config === undefined ? {} : readConfigFile(path.join(ROOT, config));
    return [
      ...['--max_steps', '2', '--eval_steps', '0', '--save_steps', '0', '--context_length', '64'],
      ...['--max_samples', '24', ...(file['warmup_steps'] === undefined ? [] : ['--warmup_steps', '0'])],
    ];
  },
  generate: () => ['--max-new-tokens', '4'],
};

/** README shell lines that are not run here, and why. */
const README_SKIPPED: Record<string, string> = {
  'npm ci': 'installs the dependencies this suite already runs on',
  'npm test': 'the suite this test is part of',
  'npm run quickstart': 'the same as `npx qtune quickstart`, which runs here',
};

// ---------------------------------------------------------------- links

/** GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen. */
function slug(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\p{M}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  let inFence = false;
  for (const l of text.split('\n')) {
    if (/^\s*(```|~~~)/.test(l)) inFence = !inFence;
    const h = inFence ? null : /^#{1,6}\s+(.*)$/.exec(l);
    if (h === null) continue;
    const s = slug(h[1]!);
    const n = seen.get(s) ?? 0;
    seen.set(s, n + 1);
    out.add(n === 0 ? s : `${s}-${n}`);
  }
  return out;
}

/** Relative links outside code: `[text](target)`. */
function links(text: string): { target: string; line: number }[] {
  const out: { target: string; line: number }[] = [];
  let inFence = false;
  text.split('\n').forEach((l, i) => {
    if (/^\s*(```|~~~)/.test(l)) inFence = !inFence;
    if (inFence) return;
    for (const m of l.replace(/`[^`]*`/g, '').matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!;
      if (!/^[a-z]+:/.test(target)) out.push({ target, line: i + 1 });
    }
  });
  return out;
}

// ---------------------------------------------------------------- the tests

const blocks = PAGES.flatMap((p) => fencedBlocks(p, readFileSync(path.join(ROOT, p), 'utf8')));

describe(`docs: every code sample of ${PAGES.join(', ')} (checked fences: ${CHECKED.join(', ')}; not checked: ${UNCHECKED.join(', ')})`, () => {
  it('fences only languages that are checked, or text', () => {
    const known: readonly string[] = [...CHECKED, ...UNCHECKED];
    const wrong = blocks.filter((b) => !known.includes(b.lang));
    assert.deepEqual(
      wrong.map((b) => `${b.page}:${b.line}: \`\`\`${b.lang}`),
      [],
      `fence each sample as one of ${known.join(', ')} (text for output and anything not checked)`,
    );
    for (const lang of ['ts', 'yaml', 'bash', 'console'])
      assert.ok(
        blocks.some((b) => b.lang === lang),
        `the pages have ${lang} samples`,
      );
  });

  it('type-checks every ts sample against qtune', () => {
    const samples = blocks.filter((b) => b.lang === 'ts' || b.lang === 'typescript');
    const errors = typeCheck(samples);
    assert.deepEqual(
      errors.map((e) => e.message),
      [],
    );
  });

  it("reads every yaml sample with qtune's config reader and validates it", () => {
    const failures: string[] = [];
    blocks
      .filter((b) => b.lang === 'yaml')
      .forEach((b, i) => {
        try {
          checkConfig(b.code, `config-${i}`);
        } catch (e) {
          failures.push(`${b.page}:${b.line}: ${e instanceof Error ? e.message : String(e)}`);
        }
      });
    assert.deepEqual(failures, []);
  });

  it('every qtune line of the shell samples names a real command and real flags; cheap ones run', async () => {
    const failures: string[] = [];
    const toRun = new Map<string, string[]>();
    for (const b of blocks.filter((x) => ['bash', 'sh', 'console'].includes(x.lang))) {
      try {
        for (const argv of await checkShell(b)) toRun.set(argv.join(' '), argv);
      } catch (e) {
        failures.push(e instanceof Error ? e.message : String(e));
      }
    }
    assert.deepEqual(failures, []);
    assert.ok(toRun.size > 0, 'some sample is cheap enough to run');
    for (const argv of toRun.values()) {
      const r = qtune(argv);
      assert.equal(r.code, 0, `qtune ${argv.join(' ')}: ${r.stderr}`);
      assert.ok(r.stdout.trim() !== '', `qtune ${argv.join(' ')} printed something`);
    }
  });

  it('every relative link names a file that exists and a heading of it', () => {
    const broken: string[] = [];
    for (const page of [...PAGES, 'BENCHMARKS.md']) {
      const text = readFileSync(path.join(ROOT, page), 'utf8');
      for (const { target, line } of links(text)) {
        const [file = '', anchor] = target.split('#');
        const resolved = file === '' ? path.join(ROOT, page) : path.resolve(ROOT, path.dirname(page), file);
        if (!existsSync(resolved)) {
          broken.push(`${page}:${line}: ${target}: no such file`);
          continue;
        }
        if (anchor !== undefined && !anchors(readFileSync(resolved, 'utf8')).has(anchor))
          broken.push(`${page}:${line}: ${target}: no such heading`);
      }
    }
    assert.deepEqual(broken, []);
  });

  it("runs README.md's ts samples in a folder with a tiny model and data/", () => {
    const samples = blocks.filter(
      (b) => b.page === 'README.md' && (b.lang === 'ts' || b.lang === 'typescript'),
    );
    assert.ok(samples.length > 0, 'the README has a TypeScript sample');
    const dir = path.join(tmp, 'run');
    mkdirSync(dir);
    cpSync(path.join(ROOT, 'data'), path.join(dir, 'data'), { recursive: true });
    const init = spawnSync(
      process.execPath,
      [path.join(ROOT, 'bin', 'qtune.js'), 'init-tiny', 'tiny-model'],
      {
        cwd: dir,
        encoding: 'utf8',
      },
    );
    assert.equal(init.status, 0, init.stderr);
    const qtuneUrl = pathToFileURL(path.join(ROOT, 'dist', 'src', 'index.js')).href;
    samples.forEach((b, i) => {
      const js = ts
        .transpileModule(b.code, {
          compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
        })
        .outputText.replace(/from 'qtune'/g, `from '${qtuneUrl}'`);
      const file = path.join(dir, `sample-${i}.mjs`);
      writeFileSync(file, js);
      const r = spawnSync(process.execPath, [file], {
        cwd: dir,
        encoding: 'utf8',
        timeout: 300_000,
        // as npm test runs (scripts/run-tests.sh): no native build in the middle of the suite
        env: { QTUNE_ENGINE: 'prebuilt', QTUNE_THREADS: '1', ...process.env },
      });
      assert.equal(r.status, 0, `${b.page}:${b.line}: ${r.stderr}`);
    });
  });

  it("runs README.md's shell commands in README order, in a folder laid out as a clone (shortened)", (t) => {
    const dir = path.join(tmp, 'readme');
    mkdirSync(dir);
    for (const f of ['examples', 'data']) cpSync(path.join(ROOT, f), path.join(dir, f), { recursive: true });
    const env = {
      ...process.env,
      QTUNE_CACHE_DIR: path.join(tmp, 'cache'),
      QTUNE_ENGINE: process.env['QTUNE_ENGINE'] ?? 'prebuilt',
      QTUNE_THREADS: process.env['QTUNE_THREADS'] ?? '1',
    };
    const ran: string[] = [];
    const skipped: string[] = [];
    for (const b of blocks.filter(
      (x) => x.page === 'README.md' && ['bash', 'sh', 'console'].includes(x.lang),
    ))
      for (const raw of b.code.split('\n')) {
        const text = b.lang === 'console' ? (raw.startsWith('$ ') ? raw.slice(2) : '') : raw;
        for (const words of shellCommands(text)) {
          const at = words.findIndex((w) => w === 'qtune' || /(^|\/)qtune(\.js)?$/.test(w));
          if (at < 0) {
            const line = words.join(' ');
            assert.ok(
              Object.hasOwn(README_SKIPPED, line),
              `README.md: "${line}" is neither run nor listed as skipped`,
            );
            skipped.push(`${line}: ${README_SKIPPED[line]!}`);
            continue;
          }
          const argv = words.slice(at + 1);
          const [name = '', ...rest] = argv;
          const full = [...argv, ...(SHORTEN[name]?.(rest) ?? [])];
          const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'qtune.js'), ...full], {
            cwd: dir,
            encoding: 'utf8',
            env,
            timeout: 300_000,
            maxBuffer: 64 * 1024 * 1024,
          });
          assert.equal(r.status, 0, `README.md:${b.line}: qtune ${full.join(' ')}: ${r.stderr}`);
          ran.push(`qtune ${full.join(' ')}`);
        }
      }
    t.diagnostic(`ran: ${ran.join(' | ')}`);
    t.diagnostic(`skipped: ${skipped.join(' | ')}`);
    assert.ok(
      ran.some((c) => c.startsWith('qtune train --config examples/quickstart.yaml')),
      'step 2 ran verbatim',
    );
    assert.ok(existsSync(path.join(dir, 'out', 'quickstart', 'adapter_model.safetensors')));
  });

  it('fails a sample with a wrong import, a wrong flag, a wrong command or a wrong config key', async () => {
    const fake = (lang: string, code: string): Block => ({ page: 'docs/fake.md', line: 1, lang, code });
    const good = fake('ts', "import { Trainer } from 'qtune';\nexport const t: typeof Trainer = Trainer;\n");
    const badImport = fake('ts', "import { NoSuchExport } from 'qtune';\nconsole.log(NoSuchExport);\n");
    const badCall = fake(
      'ts',
      "import { createSchedule } from 'qtune';\ncreateSchedule({ name: 'cosine' });\n",
    );
    const errors = typeCheck([good, badImport, badCall]);
    assert.ok(!errors.some((e) => e.block === good), errors.map((e) => e.message).join('\n'));
    assert.ok(
      errors.some((e) => e.block === badImport && /NoSuchExport/.test(e.message)),
      'a wrong import fails',
    );
    assert.ok(
      errors.some((e) => e.block === badCall && /^docs\/fake\.md:3: /.test(e.message)),
      'a wrong call fails, at its line',
    );

    await checkShell(fake('bash', 'npx qtune generate --model m --prompt "Hi" # fine'));
    for (const line of [
      'npx qtune generate --model m --prompt Hi --no-such-flag 1',
      'npx qtune trian --config examples/lora-tiny.yaml',
      'npx qtune train --config examples/lora-tiny.yaml --lora_rnak 8',
      'npx qtune train --config examples/no-such.yaml',
      'npx qtune engine biuld',
      'node bin/qtune.js launch -n 2 -- train --max_step 3',
      'npm run no-such-script',
    ])
      await assert.rejects(
        checkShell(fake('bash', line)),
        (e: unknown) => e instanceof Error,
        `${line} fails`,
      );
    await assert.rejects(checkShell(fake('console', '$ npx qtune quant matrix --jsn\nqtune: error: ...')));
    await assert.rejects(
      checkShell(fake('console', '$ npx qtune train --config run.yaml --lr -1\n(no error)')),
    );

    assert.throws(() => checkConfig('lora_rnak: 8\n', 'bad-key'), /lora_rnak: unknown option/);
    assert.throws(() => checkConfig('lr: -1\n', 'bad-value'), /lr: -1 is out of range/);
  });
});
