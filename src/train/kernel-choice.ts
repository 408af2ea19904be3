/**
 * Type choices made by measuring on the machine, not by assumption (issue 14): whether a quantized
 * base's input gradient (dX = dY·W, W dequantized) multiplies faster in bf16 than in f32 on this
 * device — bitsandbytes' `bnb_4bit_compute_dtype`, chosen per machine. A bf16 product is ~2-4x an
 * f32 one on a CPU with AVX512_BF16 and can be slower on one without.
 *
 * The measurement (one mul_mat of a 1024×2048 weight and 256 rows per type, the fastest of 15
 * alternating runs, about 0.5 s) runs once per device, CPU and engine; the result is cached in
 * `<cache>/kernel-choices.json` (QTUNE_CACHE_DIR moves it), so later runs only read it.
 * QTUNE_QUANT_COMPUTE_DTYPE=f32|bf16 replaces the measurement.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Backend } from '../engine/device.js';
import { getEngine } from '../engine/library.js';
import { cacheRoot, cpuIdentity } from '../engine/paths.js';
import { ConfigError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readJsonObject } from '../io/json.js';
import { Graph } from '../tensor/graph.js';
import { linear } from '../tensor/ops/matmul.js';
import { TensorStore } from '../tensor/store.js';

export type ComputeDTypeChoice = 'auto' | 'f32' | 'bf16';
export const COMPUTE_DTYPES: readonly ComputeDTypeChoice[] = ['auto', 'f32', 'bf16'];

/** bf16 is chosen when its product is at least this much faster than f32's. */
const MIN_SPEEDUP = 1.15;

export interface MatmulSpeeds {
  /** GFLOP/s of the product with the weight in f32 */
  f32: number;
  /** ... and in bf16 (0 when the device cannot run it) */
  bf16: number;
}

export interface GradTypeChoice {
  type: 'f32' | 'bf16';
  speeds: MatmulSpeeds | null;
  /** Where the choice came from: the user's setting, the cache, or a measurement now. */
  source: 'setting' | 'cache' | 'measured';
}

export function checkComputeDType(v: string): ComputeDTypeChoice {
  if (!(COMPUTE_DTYPES as readonly string[]).includes(v))
    throw new ConfigError(`quant_compute_dtype: ${JSON.stringify(v)} is not one of auto, f32, bf16`, {
      hint: 'auto (measured on this machine), f32 (exact), or bf16',
    });
  return v as ComputeDTypeChoice;
}

/** The decision from measured speeds: bf16 when it runs and is clearly faster. */
export function decideGradType(s: MatmulSpeeds): 'f32' | 'bf16' {
  return s.bf16 >= MIN_SPEEDUP * s.f32 ? 'bf16' : 'f32';
}

/** The compute type for quantized weights' input gradients on `backend`. */
export function chooseGradType(backend: Backend, setting: ComputeDTypeChoice = 'auto'): GradTypeChoice {
  // QTUNE_QUANT_COMPUTE_DTYPE stands in for `auto` (the test suite pins f32: results that do not
  // depend on which machine measured what)
  const env = process.env['QTUNE_QUANT_COMPUTE_DTYPE'];
  if (setting === 'auto' && env !== undefined && env !== '' && env !== 'auto')
    return { type: checkComputeDType(env) as 'f32' | 'bf16', speeds: null, source: 'setting' };
  if (setting !== 'auto') return { type: setting, speeds: null, source: 'setting' };
  const file = path.join(cacheRoot(), 'kernel-choices.json');
  const key = cacheKey(backend);
  const cached = readCache(file)[key];
  if (isSpeeds(cached)) return { type: decideGradType(cached), speeds: cached, source: 'cache' };
  const speeds = measureSpeeds(backend);
  try {
    const all = readCache(file);
    all[key] = speeds;
    writeFileAtomic(file, [JSON.stringify(all, null, 2) + '\n']);
  } catch {
    // an unwritable cache only means measuring again next time
  }
  return { type: decideGradType(speeds), speeds, source: 'measured' };
}

function cacheKey(backend: Backend): string {
  const { info } = getEngine();
  const cpu = cpuIdentity().key;
  return `${info.kind}/${info.cpuVariant}/${info.ggmlCommit}/${backend.name}/${backend.device.description}/cpu-${cpu}/threads-${backend.threads}`;
}

function readCache(file: string): Record<string, unknown> {
  if (!existsSync(file)) return {};
  try {
    return readJsonObject(file);
  } catch {
    return {}; // a corrupt cache is measured again and rewritten
  }
}

function isSpeeds(v: unknown): v is MatmulSpeeds {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o.f32 === 'number' && typeof o.bf16 === 'number' && o.f32 > 0 && o.bf16 >= 0;
}

const OUT = 1024;
const IN = 2048;
const ROWS = 256;

/**
 * GFLOP/s of `linear` with the weight in f32 and in bf16 on `backend`: the two alternate, 2 warm-up
 * and 15 timed runs each, and the fastest run of each counts (on a shared machine the fastest is the
 * one least slowed by other processes, the same for both types).
 */
export function measureSpeeds(backend: Backend): MatmulSpeeds {
  const runs = [prepareType(backend, 'f32'), prepareType(backend, 'bf16')];
  try {
    const best = runs.map(() => Infinity);
    for (let i = 0; i < 17; i++) {
      runs.forEach((r, k) => {
        if (r === null) return;
        const t0 = performance.now();
        r.g.run();
        if (i >= 2) best[k] = Math.min(best[k]!, performance.now() - t0);
      });
    }
    const gflops = (ms: number) =>
      Number.isFinite(ms) ? (2 * OUT * IN * ROWS) / (Math.max(ms, 1e-3) / 1000) / 1e9 : 0;
    return { f32: gflops(best[0]!), bf16: gflops(best[1]!) };
  } finally {
    for (const r of runs) r?.dispose();
  }
}

/** A compiled graph of one product with the weight in `dtype`, or null when the device cannot run it. */
function prepareType(backend: Backend, dtype: 'f32' | 'bf16'): { g: Graph; dispose: () => void } | null {
  const store = TensorStore.create(backend, [{ name: 'w', shape: [OUT, IN], dtype }]);
  const g = new Graph(backend);
  const dispose = () => {
    g.dispose();
    store.dispose();
  };
  try {
    const w = store.get('w');
    const values = new Float32Array(OUT * IN);
    for (let i = 0; i < values.length; i++) values[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
    store.write(w, values);
    const x = g.input([ROWS, IN]);
    const y = g.build(() => linear(x, w));
    if (!backend.supportsOp(y.ptr)) {
      dispose();
      return null;
    }
    g.output(y);
    g.compile();
    g.set(x, values.subarray(0, ROWS * IN));
    return { g, dispose };
  } catch (e) {
    dispose();
    throw e;
  }
}
