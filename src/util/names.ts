/**
 * Names a user types: the closest known one to a mistyped option, for a "did you mean" hint. The CLI
 * (config keys, flags) and the library (Trainer options) share it, so a typo gets the same hint
 * everywhere.
 */

/** A name compared without case, `_` or `-`: `max_steps`, `max-steps` and `maxSteps` are one name. */
export function nameKey(name: string): string {
  return name.toLowerCase().replace(/[-_]/g, '');
}

/** Edit distance (insertions, deletions, substitutions) between `a` and `b`. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++)
      row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = row;
  }
  return prev[b.length]!;
}

/**
 * The known name closest to `name` (compared as {@link nameKey}s), or undefined when none is within
 * three edits, or when every one differs in all its letters (`foo` is not a typo of `lr`).
 *
 * @example
 * closestName('lora_rnak', ['lora_rank', 'lora_alpha']); // 'lora_rank'
 * closestName('maxStep', ['maxSteps', 'epochs']); // 'maxSteps'
 */
export function closestName(name: string, known: Iterable<string>): string | undefined {
  const key = nameKey(name);
  let best: string | undefined;
  let bestD = 4;
  for (const k of known) {
    const other = nameKey(k);
    const d = editDistance(key, other);
    if (d < bestD && d < Math.max(key.length, other.length)) [best, bestD] = [k, d];
  }
  return best;
}
