/**
 * Mistakes raise typed errors in TypeScript, with the shapes and a hint, before ggml could abort the
 * process: every case below would hit a GGML_ASSERT (an abort) if it reached ggml. The test process
 * surviving all of them is part of the check.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BackendManager } from '../../src/backends/manager.js';
import { cpuBackend } from '../../src/engine/device.js';
import { DTypeError, QtuneError, ShapeError, UnsupportedOpError } from '../../src/errors.js';
import {
  Graph,
  TensorStore,
  add,
  cast,
  concat,
  crossEntropy,
  embedding,
  linear,
  matmul,
  permute,
  reshape,
  rope,
  slice,
  softmax,
  sum,
} from '../../src/tensor/index.js';
import { testDevices } from '../helpers/devices.js';

type ErrorClass = new (...args: never[]) => Error;

function expectError(fn: () => unknown, cls: ErrorClass, includes: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(
      e instanceof cls,
      `expected ${cls.name}, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`,
    );
    for (const s of includes) assert.ok(e.message.includes(s), `message "${e.message}" lacks "${s}"`);
    return true;
  });
}

describe('bad input gets a typed error, never an abort', () => {
  const backend = cpuBackend();
  const withGraph = (fn: (g: Graph) => unknown) => () => {
    const g = new Graph(backend, { maxNodes: 256 });
    try {
      g.build(() => fn(g));
    } finally {
      g.dispose();
    }
  };

  const cases: [string, () => unknown, ErrorClass, string[]][] = [
    [
      'linear with mismatched inner size',
      withGraph((g) => linear(g.input([4, 7]), g.input([5, 8]))),
      ShapeError,
      ['[4, 7]', '[5, 8]'],
    ],
    [
      'add of shapes that do not broadcast',
      withGraph((g) => add(g.input([3, 4]), g.input([5, 4]))),
      ShapeError,
      ['[3, 4]', '[5, 4]'],
    ],
    [
      'reshape to another element count',
      withGraph((g) => reshape(g.input([3, 4]), [5, 3])),
      ShapeError,
      ['[3, 4]', '[5, 3]'],
    ],
    [
      'matmul with mismatched inner dimensions',
      withGraph((g) => matmul(g.input([2, 3]), g.input([4, 2]))),
      ShapeError,
      ['[2, 3]', '[4, 2]'],
    ],
    [
      'concat of different shapes',
      withGraph((g) => concat(g.input([2, 3]), g.input([4, 5]), 0)),
      ShapeError,
      ['[2, 3]', '[4, 5]'],
    ],
    [
      'slice out of range',
      withGraph((g) => slice(g.input([4, 5]), 0, 2, 9)),
      ShapeError,
      ['[2, 9)', 'size 4'],
    ],
    [
      'permute that is not a permutation',
      withGraph((g) => permute(g.input([2, 3, 4]), [0, 0, 1])),
      ShapeError,
      ['[2, 3, 4]'],
    ],
    ['too many dimensions', withGraph((g) => g.input([2, 2, 2, 2, 2])), ShapeError, ['5 dimensions']],
    ['non-scalar loss', withGraph((g) => g.backward(g.input([3]))), ShapeError, ['scalar', '[3]']],
    [
      'rope with the wrong number of positions',
      withGraph((g) => rope(g.input([5, 2, 8]), g.input([4], 'i32'), { mode: 'neox', base: 10000 })),
      ShapeError,
      ['T = 4', '[5, 2, 8]'],
    ],
    [
      'rope with float positions',
      withGraph((g) => rope(g.input([5, 2, 8]), g.input([5]), { mode: 'neox', base: 10000 })),
      DTypeError,
      ['i32'],
    ],
    [
      'embedding with float ids',
      withGraph((g) => embedding(g.input([10, 4]), g.input([3]))),
      DTypeError,
      ['i32'],
    ],
    [
      'softmax mask of the wrong size',
      withGraph((g) => softmax(g.input([4, 6]), { mask: g.input([4, 5]) })),
      ShapeError,
      ['[4, 5]', '[4, 6]'],
    ],
    [
      'linear on f16 activations',
      withGraph((g) => linear(cast(g.input([2, 32]), 'f16'), g.input([4, 32]))),
      DTypeError,
      ['f16'],
    ],
    ['cast to an integer type', withGraph((g) => cast(g.input([2, 3]), 'i32')), DTypeError, ['i32']],
    [
      'crossEntropy with labels that are not an input',
      withGraph((g) => crossEntropy(g.input([3, 5]), g.input([3]))),
      DTypeError,
      ['i32'],
    ],
    [
      'graph node limit',
      () => {
        const g = new Graph(backend, { maxNodes: 8 });
        try {
          let x = g.input([4]);
          for (let i = 0; i < 20; i++) x = add(x, x);
        } finally {
          g.dispose();
        }
      },
      QtuneError,
      ['limit of 8 nodes'],
    ],
    [
      'q4_0 rows that are not whole blocks',
      () => TensorStore.create(backend, [{ name: 'w', shape: [4, 33], dtype: 'q4_0' }]),
      ShapeError,
      ['blocks of 32', '33'],
    ],
    [
      'q4_K rows that are not whole blocks',
      () => TensorStore.create(backend, [{ name: 'w', shape: [4, 64], dtype: 'q4_K' }]),
      ShapeError,
      ['blocks of 256'],
    ],
    [
      'quantizing iq2_xxs without an importance matrix',
      () => TensorStore.from(backend, new Float32Array(256 * 2), [2, 256], { dtype: 'iq2_xxs' }),
      DTypeError,
      ['importance matrix'],
    ],
    [
      'writing the wrong amount of data',
      () => TensorStore.from(backend, new Float32Array(5), [2, 3]),
      ShapeError,
      ['[2, 3]'],
    ],
  ];
  for (const [name, fn, cls, includes] of cases) it(name, () => expectError(fn, cls, includes));

  it('label outside the vocabulary is reported with its position', () => {
    const g = new Graph(backend);
    try {
      const labels = g.input([3], 'i32');
      g.output(crossEntropy(g.input([3, 5]), labels));
      g.compile();
      expectError(() => g.set(labels, Int32Array.of(1, 7, -100)), QtuneError, ['label 7', 'position 1']);
    } finally {
      g.dispose();
    }
  });

  it('a stored tensor used after dispose', () => {
    const t = TensorStore.from(backend, new Float32Array(4), [4]);
    t.store!.dispose();
    expectError(() => t.read(), QtuneError, ['disposed']);
  });

  it('operands from two graphs', () => {
    const g1 = new Graph(backend);
    const g2 = new Graph(backend);
    try {
      expectError(() => add(g1.input([2]), g2.input([2])), QtuneError, ['different graphs']);
    } finally {
      g1.dispose();
      g2.dispose();
    }
  });

  it('reading a node that was not marked as an output', () => {
    const g = new Graph(backend);
    try {
      const x = g.input([2]);
      const y = add(x, x);
      g.output(sum(y));
      g.compile();
      g.set(x, Float32Array.of(1, 2));
      g.run();
      expectError(() => g.read(y), QtuneError, ['not an output']);
    } finally {
      g.dispose();
    }
  });

  const gpu = testDevices().devices.find((d) => !d.backend.isCpu);
  it(
    'an op the device cannot run (sum of f16 on Vulkan) is refused before compute',
    { skip: gpu ? false : 'no non-CPU device' },
    () => {
      const g = new Graph(gpu!.backend);
      try {
        g.output(sum(cast(g.input([4, 32]), 'f16')));
        expectError(() => g.compile(), UnsupportedOpError, [gpu!.name, 'SUM']);
      } finally {
        g.dispose();
      }
    },
  );

  it('a tensor on another device than the graph', { skip: gpu ? false : 'no non-CPU device' }, () => {
    const w = TensorStore.from(gpu!.backend, new Float32Array(8), [2, 4]);
    const g = new Graph(backend);
    try {
      expectError(() => linear(g.input([3, 4]), w), QtuneError, [gpu!.name, backend.name]);
    } finally {
      g.dispose();
      w.store!.dispose();
    }
  });

  it('an unknown device name lists the available ones', () => {
    expectError(() => new BackendManager().select('cuda7'), QtuneError, ['cuda7', 'CPU']);
  });
});
