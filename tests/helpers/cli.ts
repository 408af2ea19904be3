/** Runs the real `qtune` binary in a child process. */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = path.join(ROOT, 'bin', 'qtune.js');

export function qtune(
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 120_000,
): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: timeoutMs,
    maxBuffer: 64 * 1024 * 1024,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** `qtune train` over examples/lora-tiny.yaml with `model`, data/style.jsonl and `out`; add flags after. */
export function tinyTrainArgs(model: string, out: string): string[] {
  return [
    'train',
    '--config',
    path.join(ROOT, 'examples', 'lora-tiny.yaml'),
    '--model',
    model,
    '--dataset',
    path.join(ROOT, 'data', 'style.jsonl'),
    '--output_dir',
    out,
  ];
}
