/**
 * Every op with a gradient, checked on every available device, on the cases of the op table
 * (src/tensor/ops/table.ts):
 * - forward against the float64 reference in tests/helpers/ref.ts;
 * - gradients against central finite differences of that reference, computed in float64
 *   (ε = 1e-5), for the loss Σ op(x)·R with a fixed random R;
 * - forward on each non-CPU device against the CPU.
 * Inputs are random, of odd sizes, seeded per case. A last check fails when an exported op of
 * src/tensor/ops/ records a gradient rule but has no entry with a case in the table.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import type { Backend } from '../../src/engine/device.js';
import { Graph } from '../../src/tensor/graph.js';
import * as tensorLayer from '../../src/tensor/index.js';
import { mul, sum } from '../../src/tensor/index.js';
import { OPS, type GradCheck, type Reference } from '../../src/tensor/ops/table.js';
import { TensorStore } from '../../src/tensor/store.js';
import { repackedCopy } from '../../src/train/frozen.js';
import type { Tensor } from '../../src/tensor/tensor.js';
import { ROOT } from '../helpers/cli.js';
import { testDevices } from '../helpers/devices.js';
import * as R from '../helpers/ref.js';

/** The table's cases compare with this float64 reference. */
const REFERENCE: Reference = R;

interface Result {
  out: Float32Array;
  grads: Float32Array[];
  inputs: R.Arr[];
  /** The op's float64 forward. */
  opRef: (x: R.Arr[]) => R.Arr;
  /** The projected forward Σ op(x)·R whose gradient is checked. */
  lossRef: (x: R.Arr[]) => R.Arr;
}

function runCase(c: GradCheck, backend: Backend): Result {
  const rand = R.rng(c.seed);
  const inputs = c.inputs.map((shape, i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = c.positive?.includes(i)
      ? Float64Array.from({ length: n }, () => 0.5 + 1.5 * rand())
      : R.normals(n, rand);
    return R.arr(shape, data);
  });
  const store = TensorStore.create(
    backend,
    c.inputs.map((shape, i) => ({
      name: `x${i}`,
      shape,
      dtype: 'f32' as const,
      requiresGrad: !c.frozen?.includes(i),
    })),
  );
  const extra: TensorStore[] = [];
  const g = new Graph(backend);
  try {
    const xs = store.tensors;
    xs.forEach((t, i) => store.write(t, Float32Array.from(inputs[i]!.data)));
    const keep = (t: Tensor): Tensor => (extra.push(t.store!), t);
    const built = g.build(() =>
      c.build(xs, {
        g,
        backend,
        store: keep,
        normals: (n, seed, scale) => Float32Array.from(R.normals(n, R.rng(seed), scale)),
        repacked: (w) => {
          const r = repackedCopy(w);
          return r === null ? null : keep(r.weight);
        },
      }),
    );
    const refFn = built.ref ?? c.ref!;
    const opRef = (x: R.Arr[]) => refFn(REFERENCE, x);
    const proj = R.arr([...built.out.shape], R.normals(built.out.numel, rand));
    const loss = sum(mul(built.out, g.constant(Float32Array.from(proj.data), built.out.shape, 'projection')));
    const trainable = xs.filter((t) => t.requiresGrad);
    const grads = trainable.length > 0 ? g.backward(loss, trainable) : new Map<Tensor, Tensor>();
    const outT = g.output(built.out);
    const gradT = trainable.map((t) => g.output(grads.get(t)!));
    g.compile();
    built.feed?.(g);
    g.run();
    return {
      out: g.read(outT),
      grads: gradT.map((t) => g.read(t)),
      inputs,
      opRef,
      lossRef: (x) => R.mul(opRef(x), proj),
    };
  } finally {
    g.dispose();
    store.dispose();
    for (const s of extra) s.dispose();
  }
}

/** Central differences of Σ ref(x) in float64. */
function finiteDifferences(ref: (x: R.Arr[]) => R.Arr, inputs: R.Arr[], which: number): Float64Array {
  const eps = 1e-5;
  const x = inputs[which]!;
  const out = new Float64Array(x.data.length);
  const total = () => ref(inputs).data.reduce((s, v) => s + v, 0);
  for (let i = 0; i < x.data.length; i++) {
    const v = x.data[i]!;
    x.data[i] = v + eps;
    const up = total();
    x.data[i] = v - eps;
    const down = total();
    x.data[i] = v;
    out[i] = (up - down) / (2 * eps);
  }
  return out;
}

const { devices, skipped } = testDevices();
const cpuOutputs = new Map<string, Float32Array>();
/** Tolerance of a non-CPU device's forward against the CPU's, and against the reference. */
const DEVICE_TOL = 2e-2;
const GPU_FWD_TOL = 2e-3;

for (const device of devices) {
  describe(`gradient checks on ${device.name}`, () => {
    for (const c of OPS.flatMap((op) => op.checks)) {
      it(c.name, () => {
        const r = runCase(c, device.backend);
        const fwdErr = R.relErr(r.out, r.opRef(r.inputs).data);
        // GPU backends may round matmul inputs to f16 (ggml-vulkan does): 2e-3 there
        const fwdTol = Math.max(c.fwdTol ?? 1e-4, device.backend.isCpu ? 0 : GPU_FWD_TOL);
        assert.ok(
          fwdErr <= fwdTol,
          `${c.name} forward: relative error ${fwdErr.toExponential(2)} on ${device.name}`,
        );
        let gi = 0;
        r.inputs.forEach((_, i) => {
          if (c.frozen?.includes(i)) return;
          const err = R.relErr(r.grads[gi++]!, finiteDifferences(r.lossRef, r.inputs, i));
          assert.ok(
            err <= (c.gradTol ?? 1e-3),
            `${c.name} gradient of input ${i}: relative error ${err.toExponential(2)} on ${device.name}`,
          );
        });
        if (device.backend.isCpu) cpuOutputs.set(c.name, r.out);
        const cpu = cpuOutputs.get(c.name);
        if (!device.backend.isCpu && cpu !== undefined) {
          const err = R.relErr(r.out, cpu);
          assert.ok(
            err <= DEVICE_TOL,
            `${c.name}: ${device.name} forward differs from CPU by ${err.toExponential(2)}`,
          );
        }
      });
    }
  });
}
for (const reason of skipped)
  describe(`gradient checks: ${reason.split(':')[0]!}`, { skip: reason }, () => undefined);

/**
 * Names exported by `source` (a file of src/tensor/ops/) whose function records a gradient rule:
 * calls `.record(`, or calls a function of the same file that does (crossEntropy's body is a helper).
 */
function recordingExports(source: string): string[] {
  // a top-level declaration or comment starts at column 0; a declaration runs until the next one
  const chunks = source.split(
    /\n(?=export |function |const |let |class |interface |type |import |\/\*\*|\/\/)/,
  );
  const decls = chunks.flatMap((body) => {
    const m = /^(export )?(?:function |const |let )(\w+)/.exec(body);
    return m === null ? [] : [{ name: m[2]!, exported: m[1] !== undefined, body }];
  });
  const records = new Set(decls.filter((d) => d.body.includes('.record(')).map((d) => d.name));
  for (let grew = true; grew;) {
    grew = false;
    for (const d of decls) {
      if (records.has(d.name) || ![...records].some((r) => new RegExp(`\\b${r}\\(`).test(d.body))) continue;
      records.add(d.name);
      grew = true;
    }
  }
  return decls.filter((d) => d.exported && records.has(d.name)).map((d) => d.name);
}

describe('the op table', () => {
  it('has an entry with a gradient check for every exported op of src/tensor/ops/ that records a gradient rule', async () => {
    const dir = path.join(ROOT, 'src', 'tensor', 'ops');
    const missing: string[] = [];
    const found: string[] = [];
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.ts'))) {
      const names = recordingExports(readFileSync(path.join(dir, file), 'utf8'));
      if (names.length === 0) continue;
      const mod = (await import(`../../src/tensor/ops/${file.replace(/\.ts$/, '.js')}`)) as Record<
        string,
        unknown
      >;
      for (const name of names) {
        found.push(name);
        if (!OPS.some((op) => op.forward === mod[name] && op.checks.length > 0))
          missing.push(`${file}: ${name}`);
      }
    }
    // the scan itself works: it finds ops of every kind, direct (add) and through a helper or another op
    for (const name of ['add', 'sum', 'mean', 'linear', 'matmul', 'rmsNorm', 'crossEntropy'])
      assert.ok(found.includes(name), `the scan of src/tensor/ops/ missed ${name}`);
    assert.deepEqual(
      missing,
      [],
      'ops without an entry (or without a check case) in src/tensor/ops/table.ts',
    );
  });

  it("names each entry after the tensor layer's export of its forward, and each case once", () => {
    for (const op of OPS)
      assert.equal((tensorLayer as Record<string, unknown>)[op.name], op.forward, op.name);
    const names = OPS.flatMap((op) => op.checks.map((c) => c.name));
    assert.equal(new Set(names).size, names.length);
  });
});
