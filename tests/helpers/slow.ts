/**
 * Long variants of tests: they run in `npm run test:slow` (QTUNE_SLOW=1) and are reported as skipped,
 * with this reason, in `npm test`, which must stay within 20 minutes on 2 cores.
 */
export const SLOW = process.env['QTUNE_SLOW'] === '1';

/** `false` under QTUNE_SLOW=1, else the skip reason: for `it(name, { skip: slow('what') }, ...)`. */
export function slow(what: string): string | false {
  return SLOW ? false : `long variant (${what}): runs in npm run test:slow`;
}
