/**
 * Checks shared by the optimizer and schedule configs: every failure is a {@link ConfigError} whose
 * message names the field, the value it got and what is allowed.
 */
import { ConfigError } from '../errors.js';
import { closestName } from '../util/names.js';

export interface NumberRule {
  /** Smallest allowed value (inclusive unless `minExclusive`). */
  min?: number;
  minExclusive?: boolean;
  /** Largest allowed value (inclusive unless `maxExclusive`). */
  max?: number;
  maxExclusive?: boolean;
  int?: boolean;
}

function describeRule(r: NumberRule): string {
  const kind = r.int === true ? 'an integer' : 'a finite number';
  const lo = r.min === undefined ? '' : `${r.minExclusive === true ? '>' : '≥'} ${r.min}`;
  const hi = r.max === undefined ? '' : `${r.maxExclusive === true ? '<' : '≤'} ${r.max}`;
  const range = [lo, hi].filter((s) => s !== '').join(' and ');
  return range === '' ? kind : `${kind} ${range}`;
}

/** `value` as a number satisfying `rule`, or a ConfigError naming `where`.`field`. */
export function checkNumber(where: string, field: string, value: unknown, rule: NumberRule): number {
  const ok =
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (rule.int !== true || Number.isInteger(value)) &&
    (rule.min === undefined || (rule.minExclusive === true ? value > rule.min : value >= rule.min)) &&
    (rule.max === undefined || (rule.maxExclusive === true ? value < rule.max : value <= rule.max));
  if (!ok) {
    throw new ConfigError(
      `${where}.${field} = ${fmt(value)} is not allowed: it must be ${describeRule(rule)}`,
      {
        hint: `set ${field} to ${describeRule(rule)}`,
        details: { field, value },
      },
    );
  }
  return value;
}

/** `value` as a boolean, or a ConfigError naming `where`.`field`. */
export function checkBoolean(where: string, field: string, value: unknown): boolean {
  if (typeof value !== 'boolean') {
    throw new ConfigError(`${where}.${field} = ${fmt(value)} is not allowed: it must be true or false`, {
      hint: `set ${field} to true or false`,
      details: { field, value },
    });
  }
  return value;
}

/** `value` as one of `allowed`, or a ConfigError listing them. */
export function checkChoice<T extends string>(
  where: string,
  field: string,
  value: unknown,
  allowed: readonly T[],
): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(
      `${where}.${field} = ${fmt(value)} is not allowed: it must be one of ${allowed.join(', ')}`,
      { hint: `set ${field} to one of ${allowed.join(', ')}`, details: { field, value, allowed } },
    );
  }
  return value as T;
}

/** Rejects keys of `config` other than `known` (a misspelt option would otherwise be ignored). */
export function checkKnownFields(
  where: string,
  config: object,
  known: readonly string[],
  context: string,
): void {
  for (const [key, value] of Object.entries(config)) {
    if (value === undefined || known.includes(key)) continue;
    const near = closestName(key, known);
    throw new ConfigError(
      `${where}.${key} = ${fmt(value)} is not allowed: ${context} takes only ${known.join(', ')}`,
      {
        hint: near === undefined ? `remove ${key}` : `did you mean ${near}?`,
        details: { field: key, value, allowed: known },
      },
    );
  }
}

function fmt(value: unknown): string {
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  return JSON.stringify(value) ?? String(value);
}
