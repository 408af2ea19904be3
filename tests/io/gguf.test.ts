/** GGUF: metadata and tensors round-trip; truncated and corrupt files give one-line FormatErrors. */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { FormatError } from '../../src/errors.js';
import { GgufType, ggufGet, kv, readGguf, readGgufTensor, writeGguf } from '../../src/io/gguf.js';
import { encode } from '../../src/tensor/host.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-gguf-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function sample(file: string): void {
  const w = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
  writeGguf(
    file,
    new Map([
      ['general.architecture', kv.str('llama')],
      ['llama.block_count', kv.u32(2)],
      ['llama.rope.freq_base', kv.f32(10000)],
      ['flag', kv.bool(true)],
      ['tokens', kv.strings(['<s>', 'héllo', ''])],
      ['scores', kv.f32s([0, -1.5, -2])],
      ['big', { type: GgufType.U64, value: 2n ** 40n }],
    ]),
    [
      { name: 'a.weight', shape: [4, 64], dtype: 'f32', data: encode('f32', w, [4, 64]) },
      { name: 'b.weight', shape: [4, 64], dtype: 'q4_0', data: encode('q4_0', w, [4, 64]) },
      { name: 'c.weight', shape: [3], dtype: 'f16', data: encode('f16', Float32Array.of(1, 2, 3), [3]) },
    ],
  );
}

describe('GGUF', () => {
  it('round-trips metadata of every kind and tensors of several types', () => {
    const file = path.join(tmp, 'a.gguf');
    sample(file);
    const g = readGguf(file);
    assert.equal(g.version, 3);
    assert.equal(ggufGet(g, 'general.architecture', 'string'), 'llama');
    assert.equal(ggufGet(g, 'llama.block_count', 'number'), 2);
    assert.equal(ggufGet(g, 'llama.rope.freq_base', 'number'), 10000);
    assert.equal(ggufGet(g, 'flag', 'boolean'), true);
    assert.deepEqual(ggufGet(g, 'tokens', 'array'), ['<s>', 'héllo', '']);
    assert.deepEqual(ggufGet(g, 'scores', 'array'), [0, -1.5, -2]);
    assert.equal(g.kv.get('big')!.value, 2n ** 40n);
    assert.deepEqual(g.tensors.get('b.weight')!.shape, [4, 64]);
    assert.equal(g.tensors.get('b.weight')!.dtype, 'q4_0');
    for (const t of g.tensors.values()) assert.equal(t.offset % 32, 0, `${t.name} is not aligned`);
    const w = Float32Array.from({ length: 4 * 64 }, (_, i) => Math.sin(i));
    assert.deepEqual(readGgufTensor(g, 'b.weight'), encode('q4_0', w, [4, 64]));
    assert.deepEqual(new Float32Array(readGgufTensor(g, 'a.weight').slice().buffer), w);
    assert.throws(() => ggufGet(g, 'flag', 'string'), /expected a string/);
  });

  const file = path.join(tmp, 'ref.gguf');
  sample(file);
  const bytes = readFileSync(file);
  const variants: [string, Buffer, string][] = [
    ['a file that is not GGUF', Buffer.from('not a gguf file at all'), 'bad magic'],
    [
      'an unknown version',
      (() => {
        const b = Buffer.from(bytes);
        b.writeUInt32LE(7, 4);
        return b;
      })(),
      'version 7',
    ],
    [
      'an absurd tensor count',
      (() => {
        const b = Buffer.from(bytes);
        b.writeBigUInt64LE(2n ** 50n, 8);
        return b;
      })(),
      'tensors',
    ],
    ['a header cut short', bytes.subarray(0, 60), 'truncated'],
    ['truncated tensor data', bytes.subarray(0, bytes.length - 30), 'truncated'],
    [
      'an unknown value type',
      (() => {
        const b = Buffer.from(bytes);
        // the first key is "general.architecture" (8-byte length + 20 bytes) after the 24-byte prelude
        b.writeUInt32LE(99, 24 + 8 + 20);
        return b;
      })(),
      'unknown value type 99',
    ],
  ];
  for (const [what, data, message] of variants) {
    it(`refuses ${what} with a one-line FormatError`, () => {
      const p = path.join(tmp, `bad-${what.replace(/\W+/g, '-')}.gguf`);
      writeFileSync(p, data);
      assert.throws(
        () => readGguf(p),
        (e: unknown) =>
          e instanceof FormatError &&
          e.message.includes(message) &&
          e.message.includes(p) &&
          !e.message.includes('\n'),
      );
    });
  }
});
