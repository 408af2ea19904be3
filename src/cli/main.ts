/**
 * qtune's command line. Every command parses strictly; a mistake prints one line naming the flag or
 * value and how to fix it, and exits with code 2. Failures at run time exit with code 1.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { COMPUTING_COMMANDS, ensureNativeEngine } from '../engine/auto-build.js';
import { beforeEngineLoad } from '../engine/library.js';
import { QtuneError, fileSystemError } from '../errors.js';
import { closestName } from '../util/names.js';
import { UsageError, exitCodeOf, type CommandSpec } from './args.js';
import * as backends from './commands/backends.js';
import * as chat from './commands/chat.js';
import * as dashboard from './commands/dashboard.js';
import * as bench from './commands/bench.js';
import * as demo from './commands/demo.js';
import * as engine from './commands/engine.js';
import * as evalCommand from './commands/eval.js';
import * as expand from './commands/expand.js';
import * as exportCommand from './commands/export.js';
import * as generate from './commands/generate.js';
import * as initTiny from './commands/init-tiny.js';
import * as launch from './commands/launch.js';
import * as merge from './commands/merge.js';
import * as quant from './commands/quant.js';
import * as quantize from './commands/quantize.js';
import * as quickstart from './commands/quickstart.js';
import * as train from './commands/train.js';

interface Command {
  spec: CommandSpec;
  run(argv: string[], out: (s: string) => void): number | Promise<number>;
}

const COMMANDS: Record<string, Command> = {
  train,
  launch,
  eval: evalCommand,
  dashboard,
  quickstart,
  demo,
  generate,
  chat,
  'init-tiny': initTiny,
  quantize,
  quant,
  merge,
  expand,
  export: exportCommand,
  backends,
  engine,
  bench,
};

/** qtune's version, from the package.json above this file (dist/src/cli/ when built, src/cli/ in the tree). */
export function packageVersion(): string {
  for (let dir = path.dirname(fileURLToPath(import.meta.url)); ; dir = path.dirname(dir)) {
    const file = path.join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'qtune' && typeof pkg.version === 'string') return pkg.version;
    }
    if (path.dirname(dir) === dir) return 'unknown';
  }
}

function usage(): string {
  const lines = [
    'qtune: fine-tune Llama-family models from Node.js',
    '',
    'usage: qtune <command> [options]',
    '',
    'commands:',
  ];
  for (const [name, c] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(12)} ${c.spec.summary}`);
  lines.push(`  ${'version'.padEnd(12)} Print qtune's version (also --version).`);
  lines.push('', 'Run `qtune <command> --help` for its options.');
  return lines.join('\n');
}

export async function main(
  argv: string[],
  out: (s: string) => void = (s) => console.log(s),
): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    out(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-v' || name === 'version') {
    out(`qtune ${packageVersion()}`);
    return 0;
  }
  const command = COMMANDS[name];
  try {
    if (command === undefined) {
      const near = closestName(name, [...Object.keys(COMMANDS), 'version']);
      throw new UsageError(
        `unknown command "${name}"`,
        near === undefined ? `commands: ${Object.keys(COMMANDS).join(', ')}` : `did you mean ${near}?`,
      );
    }
    // the first computing command on a machine builds the native engine (src/engine/auto-build.ts),
    // when it first needs the engine: after its flags parsed, so that a mistake fails at once
    if (COMPUTING_COMMANDS.includes(name))
      beforeEngineLoad(() => ensureNativeEngine((line) => console.error(line)));
    return await command.run(rest, out);
  } catch (thrown) {
    // a file-system failure no command checked for (EISDIR, ENOSPC, ...) is one line too, naming the path
    const e = fileSystemError(thrown);
    if (e instanceof QtuneError) {
      console.error(`qtune: error: ${e.message}`);
      return exitCodeOf(e);
    }
    throw e;
  }
}
