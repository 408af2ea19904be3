/**
 * QuantizationConfig: which method, at how many bits, for which modules. Validated once, returning
 * every problem with its field name; resolved per module with glob overrides.
 *
 * @example
 * const config: QuantizationConfig = { method: 'nf4', overrides: [{ pattern: '*.mlp.down_proj', method: 'int8' }] };
 * const problems = validateQuantizationConfig(config); // [] when valid
 */
import type { DType, FloatDType } from '../engine/dtype.js';
import { METHODS, isQuantMethod, methodDType, type QuantMethod } from './methods.js';

export interface QuantOverride {
  /** Glob over module names (`model.layers.0.self_attn.q_proj`): `*` any run of characters, `?` one. */
  pattern: string;
  method: QuantMethod;
  bits?: number;
}

export interface QuantizationConfig {
  method: QuantMethod;
  bits?: number;
  /** Only the format's own block size is allowed (32, or 256 for k-quants); given to state intent. */
  groupSize?: number;
  /** Modules left in full precision, by glob. Default: the embeddings and lm_head. */
  skipModules?: string[];
  overrides?: QuantOverride[];
  /** Type of activations and unquantized weights. */
  computeDtype?: FloatDType;
}

export interface ConfigProblem {
  field: string;
  message: string;
}

export const DEFAULT_SKIP = ['lm_head', 'model.embed_tokens'];

function globToRegExp(glob: string): RegExp {
  const escaped = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${escaped}$`);
}

export function matchesGlob(name: string, glob: string): boolean {
  return globToRegExp(glob).test(name);
}

function checkMethodBits(field: string, method: unknown, bits: unknown, problems: ConfigProblem[]): void {
  if (typeof method !== 'string' || !isQuantMethod(method)) {
    problems.push({
      field: `${field}method`,
      message: `"${String(method)}" is not a method; use one of ${Object.keys(METHODS).join(', ')}`,
    });
    return;
  }
  if (bits !== undefined) {
    const allowed = Object.keys(METHODS[method].dtypes).map(Number);
    if (typeof bits !== 'number' || methodDType(method, bits) === undefined) {
      problems.push({
        field: `${field}bits`,
        message: `${JSON.stringify(bits)} bits is not available for ${method}; use ${allowed.join(' or ')}`,
      });
    }
  }
}

/** Every problem of a config, each naming its field; empty when the config is valid. */
export function validateQuantizationConfig(c: QuantizationConfig): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const raw = c as unknown as Record<string, unknown>;
  const known = ['method', 'bits', 'groupSize', 'skipModules', 'overrides', 'computeDtype'];
  for (const k of Object.keys(raw))
    if (!known.includes(k)) problems.push({ field: k, message: `unknown field; known: ${known.join(', ')}` });
  checkMethodBits('', c.method, c.bits, problems);
  if (c.groupSize !== undefined && typeof c.method === 'string' && isQuantMethod(c.method)) {
    const block = METHODS[c.method].blockSize;
    if (c.groupSize !== block) {
      problems.push({
        field: 'groupSize',
        message: `${c.method} stores groups of ${block}; ${String(c.groupSize)} is not possible in its format (leave groupSize out or set ${block})`,
      });
    }
  }
  if (
    c.skipModules !== undefined &&
    (!Array.isArray(c.skipModules) || !c.skipModules.every((s) => typeof s === 'string'))
  ) {
    problems.push({ field: 'skipModules', message: 'must be a list of module-name globs' });
  }
  if (c.computeDtype !== undefined && !['f32', 'f16', 'bf16'].includes(c.computeDtype)) {
    problems.push({ field: 'computeDtype', message: `"${c.computeDtype}" is not f32, f16 or bf16` });
  }
  if (c.overrides !== undefined) {
    if (!Array.isArray(c.overrides))
      problems.push({ field: 'overrides', message: 'must be a list of { pattern, method, bits? }' });
    else
      c.overrides.forEach((o, i) => {
        if (typeof o.pattern !== 'string' || o.pattern.length === 0)
          problems.push({ field: `overrides[${i}].pattern`, message: 'must be a non-empty glob' });
        checkMethodBits(`overrides[${i}].`, o.method, o.bits, problems);
      });
  }
  return problems;
}

/** How a module's weight is stored: null when it stays in full precision. */
export function modulePlan(
  c: QuantizationConfig,
  module: string,
): { method: QuantMethod; bits: number; dtype: DType } | null {
  if ((c.skipModules ?? DEFAULT_SKIP).some((g) => matchesGlob(module, g))) return null;
  let method = c.method;
  let bits = c.bits;
  for (const o of c.overrides ?? []) {
    if (matchesGlob(module, o.pattern)) {
      method = o.method;
      bits = o.bits;
    }
  }
  if (method === 'none') return null;
  const b = bits ?? METHODS[method].defaultBits;
  const dtype = methodDType(method, b);
  return dtype === undefined ? null : { method, bits: b, dtype };
}
