/**
 * A stored tensor's layout and life are checked in TypeScript: `copyFrom` between tensors of equal
 * element count but different shape, and every use of a disposed store, are typed errors; token ids
 * outside an embedding table are refused when the ids are set (ggml's get_rows would abort).
 * Expected values are closed forms (a table row is what the lookup returns).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cpuBackend } from '../../src/engine/device.js';
import { DTypeError, QtuneError, ShapeError, TokenRangeError } from '../../src/errors.js';
import { Graph, TensorStore, add, embedding } from '../../src/tensor/index.js';

const backend = cpuBackend();

function throwsCode(fn: () => unknown, code: string, parts: string[] = []): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof QtuneError, `expected a QtuneError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(!e.message.includes('\n'), 'one line');
    for (const p of parts) assert.ok(e.message.includes(p), `"${e.message}" lacks "${p}"`);
    return true;
  });
}

describe('TensorStore: layout and disposal', () => {
  it('copyFrom needs the same shape, not only the same element count', () => {
    const store = TensorStore.create(backend, [
      { name: 'a', shape: [2, 3], dtype: 'f32' },
      { name: 'b', shape: [3, 2], dtype: 'f32' },
      { name: 'c', shape: [2, 3], dtype: 'f32' },
      { name: 'h', shape: [2, 3], dtype: 'f16' },
    ]);
    try {
      store.write(store.get('a'), Float32Array.of(1, 2, 3, 4, 5, 6));
      assert.throws(() => store.copyFrom(store.get('b'), store.get('a')), ShapeError);
      assert.throws(
        () => store.copyFrom(store.get('b'), store.get('a')),
        /\[2, 3\].*\[3, 2\]|layouts differ/,
      );
      assert.throws(() => store.copyFrom(store.get('h'), store.get('a')), ShapeError);
      store.copyFrom(store.get('c'), store.get('a'));
      assert.deepEqual([...store.read(store.get('c'))], [1, 2, 3, 4, 5, 6]);
    } finally {
      store.dispose();
    }
  });

  it('copyFrom from a disposed store, or of a graph tensor, is refused', () => {
    const dst = TensorStore.create(backend, [{ name: 'd', shape: [4], dtype: 'f32' }]);
    const src = TensorStore.from(backend, Float32Array.of(1, 2, 3, 4), [4]);
    const g = new Graph(backend);
    try {
      throwsCode(() => dst.copyFrom(dst.get('d'), g.input([4])), 'INVALID_ARGUMENT', ['not a stored tensor']);
      src.store!.dispose();
      throwsCode(() => dst.copyFrom(dst.get('d'), src), 'DISPOSED', ['disposed']);
    } finally {
      g.dispose();
      dst.dispose();
    }
  });

  it('every operation on a disposed store is a DISPOSED error', () => {
    const t = TensorStore.from(backend, Float32Array.of(1, 2, 3, 4), [4], { name: 'w' });
    const ids = TensorStore.from(backend, Int32Array.of(1, 2), [2], { name: 'ids' });
    const store = t.store!;
    store.dispose();
    ids.store!.dispose();
    store.dispose(); // twice is harmless
    assert.equal(t.alive, false);
    for (const fn of [
      () => store.get('w'),
      () => store.zero(),
      () => store.write(t, Float32Array.of(1, 2, 3, 4)),
      () => store.read(t),
      () => store.read(t, new Float32Array(3)),
      () => store.readBytes(t),
      () => ids.store!.readInt32(ids),
      () => t.read(),
      () => store.to(backend),
    ])
      throwsCode(fn, 'DISPOSED', ['disposed']);
    const g = new Graph(backend);
    try {
      throwsCode(() => add(g.input([4]), t), 'DISPOSED', ['disposed']);
      throwsCode(() => g.assign(t, g.input([4])), 'DISPOSED', ['disposed']);
    } finally {
      g.dispose();
    }
  });
});

describe('embedding ids are checked against the table when they are set', () => {
  const table = Float32Array.from({ length: 5 * 3 }, (_, i) => i); // row r = [3r, 3r+1, 3r+2]

  it('an id outside [0, rows) names the id, its position and sequence, and the vocabulary size', () => {
    const w = TensorStore.from(backend, table, [5, 3], { name: 'embed' });
    const g = new Graph(backend);
    try {
      const ids = g.input([2, 3], 'i32', 'ids');
      const out = g.output(g.build(() => embedding(w, ids)));
      g.compile();
      g.set(ids, Int32Array.of(0, 4, 2, 1, 1, 3));
      g.run();
      assert.deepEqual(
        [...g.read(out)],
        [0, 4, 2, 1, 1, 3].flatMap((r) => [3 * r, 3 * r + 1, 3 * r + 2]),
      );
      for (const [data, id, pos, seq] of [
        [Int32Array.of(0, 1, 2, 3, 5, 0), 5, 1, 1],
        [Int32Array.of(-1, 0, 0, 0, 0, 0), -1, 0, 0],
        [Int32Array.of(0, 0, 2 ** 31 - 1, 0, 0, 0), 2 ** 31 - 1, 2, 0],
      ] as const) {
        assert.throws(
          () => g.set(ids, data),
          (e: unknown) =>
            e instanceof TokenRangeError &&
            e.id === id &&
            e.position === pos &&
            e.sequence === seq &&
            e.vocabSize === 5 &&
            e.message.includes(`token id ${id} at position ${pos} of sequence ${seq}`),
        );
      }
      // the refused data never reached the device: the last good ids still give their rows
      g.run();
      assert.deepEqual([...g.read(out)].slice(0, 6), [0, 1, 2, 12, 13, 14]);
    } finally {
      g.dispose();
      w.store!.dispose();
    }
  });

  it('a constant id outside the table is refused while the graph is built', () => {
    const w = TensorStore.from(backend, table, [5, 3], { name: 'embed' });
    const g = new Graph(backend);
    try {
      const ids = g.constant(Int32Array.of(1, 9), [2], 'ids');
      assert.throws(() => g.build(() => embedding(w, ids)), TokenRangeError);
      assert.throws(() => g.build(() => embedding(w, g.input([2]))), DTypeError);
    } finally {
      g.dispose();
      w.store!.dispose();
    }
  });
});
