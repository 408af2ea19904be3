/**
 * BackendManager: device listing and probed capabilities, selection by name, kind, alias and
 * environment, typed errors for missing devices, thread control, and moving tensors between devices.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BackendManager } from '../../src/backends/manager.js';
import { DeviceUnavailableError } from '../../src/errors.js';
import { QUANT_DTYPES } from '../../src/engine/dtype.js';
import { Graph, TensorStore, linear, sum } from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';
import { normals, relErr, rng } from '../helpers/ref.js';

const manager = new BackendManager();
const { devices } = testDevices();
const vulkan = devices.find((d) => d.name.startsWith('Vulkan'));

describe('BackendManager', () => {
  it('reports the CPU with memory and the types it runs forward and backward', () => {
    const cpu = manager.report().find((r) => r.kind === 'cpu');
    assert.ok(cpu, 'no cpu device');
    assert.equal(cpu.available, true);
    assert.ok(cpu.memory_total > 0 && cpu.memory_free > 0 && cpu.memory_free <= cpu.memory_total);
    assert.deepEqual(cpu.dtypes, ['f32', 'f16', 'bf16']);
    for (const t of ['q4_0', 'q8_0', 'q4_K', 'iq4_nl'] as const) {
      assert.ok(cpu.quant_types.includes(t), `cpu forward lacks ${t}`);
      assert.ok(cpu.train_quant_types.includes(t), `cpu backward lacks ${t}`);
    }
  });

  it('reports the Vulkan device when one is present', { skip: vulkan ? false : 'no Vulkan device' }, () => {
    const r = manager.report().find((x) => x.name === vulkan!.name);
    assert.ok(r);
    assert.equal(r.kind, 'vulkan');
    assert.equal(r.available, true);
    assert.ok(r.dtypes.includes('f32'));
    assert.ok(r.quant_types.includes('q4_0'));
  });

  it('every quantized type the CPU claims to train gives the exact input gradient', () => {
    const cpu = manager.select('cpu');
    const claimed = manager.report().find((r) => r.kind === 'cpu')!.train_quant_types;
    const rand = rng(5);
    for (const dtype of claimed) {
      if (dtype.startsWith('iq2') || dtype.startsWith('iq1') || dtype === 'iq3_xxs' || dtype === 'iq3_s')
        continue; // need an importance matrix to quantize
      const w = TensorStore.from(cpu, Float32Array.from(normals(4 * 256, rand, 0.1)), [4, 256], {
        dtype,
        name: 'w',
      });
      const xs = TensorStore.create(cpu, [{ name: 'x', shape: [2, 256], dtype: 'f32', requiresGrad: true }]);
      const x = xs.get('x');
      xs.write(x, Float32Array.from(normals(512, rand)));
      const g = new Graph(cpu);
      try {
        const grads = g.backward(
          g.build(() => sum(linear(x, w))),
          [x],
        );
        const dx = g.output(grads.get(x)!);
        g.compile();
        g.run();
        // d/dx Σ x·Wᵀ = column sums of W, with W as stored
        const wf = w.read();
        const expect = Array.from({ length: 512 }, (_, i) => {
          let s = 0;
          for (let n = 0; n < 4; n++) s += wf[n * 256 + (i % 256)]!;
          return s;
        });
        assert.ok(relErr(g.read(dx), expect) < 1e-5, `${dtype}: wrong input gradient`);
      } finally {
        g.dispose();
        xs.dispose();
        w.store!.dispose();
      }
    }
    assert.ok(claimed.length >= QUANT_DTYPES.length - 2);
  });

  it('selects by kind, name, alias and QTUNE_BACKEND; auto prefers a real GPU over software Vulkan', () => {
    assert.equal(manager.select('cpu').name, 'CPU');
    assert.equal(manager.select('CPU').name, 'CPU');
    const auto = manager.select('auto');
    const real = manager.devices().find((d) => d.type === 'gpu' && !d.software);
    assert.equal(auto.name, real?.name ?? 'CPU');
    if (vulkan) {
      assert.equal(manager.select('vulkan').name, vulkan.name);
      assert.equal(manager.select(vulkan.name.toLowerCase()).name, vulkan.name);
    }
    const saved = process.env['QTUNE_BACKEND'];
    process.env['QTUNE_BACKEND'] = 'cpu';
    try {
      assert.equal(manager.select().name, 'CPU');
    } finally {
      if (saved === undefined) delete process.env['QTUNE_BACKEND'];
      else process.env['QTUNE_BACKEND'] = saved;
    }
  });

  it('an unavailable device is a typed error listing the available ones; mps means metal', () => {
    // only requests this machine cannot satisfy (a GPU machine does have CUDA)
    const kinds = new Set(
      manager
        .report()
        .filter((d) => d.available)
        .map((d) => d.kind as string),
    );
    const missing = ['mps', 'metal', 'cuda', 'vulkan9'].filter(
      (r) => r === 'vulkan9' || !kinds.has(r === 'mps' ? 'metal' : r),
    );
    assert.ok(missing.length > 0);
    for (const req of missing) {
      assert.throws(
        () => manager.select(req),
        (e: unknown) =>
          e instanceof DeviceUnavailableError &&
          e.message.includes(`"${req}"`) &&
          e.message.includes('CPU (cpu)'),
      );
    }
  });

  it('sets the thread count', () => {
    const cpu = manager.select('cpu');
    manager.setThreads(1);
    assert.equal(cpu.threads, 1);
    manager.setThreads(2);
    assert.equal(cpu.threads, 2);
    assert.throws(() => manager.setThreads(0), /threads=0/);
  });

  it(
    'moves a set of parameters CPU → Vulkan → CPU keeping weights and outputs',
    { skip: vulkan ? false : 'no Vulkan device' },
    () => {
      const cpu = manager.select('cpu');
      const rand = rng(11);
      const store = TensorStore.create(cpu, [
        { name: 'w', shape: [6, 64], dtype: 'q4_0' },
        { name: 'b', shape: [6, 64], dtype: 'f16' },
        { name: 'x', shape: [3, 64], dtype: 'f32' },
      ]);
      for (const t of store.tensors) store.write(t, Float32Array.from(normals(t.numel, rand)));
      const onGpu = manager.transfer(store, vulkan!.backend);
      const back = manager.transfer(onGpu, cpu);
      const logits = (s: TensorStore) => {
        const g = new Graph(s.backend);
        try {
          const y = g.output(g.build(() => linear(s.get('x'), s.get('w'))));
          g.compile();
          g.run();
          return g.read(y);
        } finally {
          g.dispose();
        }
      };
      try {
        for (const t of store.tensors)
          assert.deepEqual(back.readBytes(back.get(t.name)), store.readBytes(t), `${t.name} changed`);
        assert.ok(relErr(logits(onGpu), logits(store)) < 2e-2);
        assert.deepEqual(logits(back), logits(store));
        const one = manager.copy(store.get('w'), vulkan!.backend);
        assert.equal(one.backend, vulkan!.backend);
        assert.deepEqual(one.store!.readBytes(one), store.readBytes(store.get('w')));
        one.store!.dispose();
      } finally {
        store.dispose();
        onGpu.dispose();
        back.dispose();
      }
    },
  );
});
