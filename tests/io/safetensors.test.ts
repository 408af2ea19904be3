/**
 * safetensors: round trips in f32/f16/bf16, shards with an index, a tensor past 2 GiB in a sparse
 * file, and corrupt files that must give a one-line FormatError (never a crash).
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
  ftruncateSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { FormatError } from '../../src/errors.js';
import { f16ToF32, f32ToBf16, f32ToF16 } from '../../src/io/half.js';
import {
  SafetensorsCheckpoint,
  SafetensorsFile,
  encodeSafetensors,
  writeSafetensors,
} from '../../src/io/safetensors.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'qtune-st-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function header(obj: unknown, data = new Uint8Array(0)): Buffer {
  const json = Buffer.from(JSON.stringify(obj));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

describe('safetensors', () => {
  it('round-trips f32, f16 and bf16 tensors and metadata', () => {
    const file = path.join(tmp, 'a.safetensors');
    const values = Float32Array.from([0, 1, -2.5, 1 / 3, 65504, 1e-8, -0.1, 3.14159]);
    writeSafetensors(
      file,
      [
        { name: 'f32', shape: [2, 4], data: values, dtype: 'F32' },
        { name: 'f16', shape: [8], data: values, dtype: 'F16' },
        { name: 'bf16', shape: [4, 2], data: values, dtype: 'BF16' },
      ],
      { format: 'pt' },
    );
    const f = SafetensorsFile.open(file);
    try {
      assert.deepEqual(f.metadata, { format: 'pt' });
      assert.deepEqual(f.entry('bf16').shape, [4, 2]);
      assert.deepEqual(f.readF32('f32'), values);
      // IEEE half and bfloat16, rounded to nearest even (closed-form bit patterns)
      assert.equal(f32ToF16(1 / 3), 0x3555);
      assert.equal(f32ToF16(65504), 0x7bff);
      assert.equal(f32ToF16(1e-8), 0x0000);
      assert.equal(f32ToBf16(1 / 3), 0x3eab);
      assert.equal(f32ToBf16(3.14159), 0x4049);
      const f16 = f.readF32('f16');
      values.forEach((v, i) => assert.equal(f16[i], f16ToF32(f32ToF16(v))));
      const bf = f.readF32('bf16');
      assert.equal(bf[3], 0.333984375);
    } finally {
      f.close();
    }
    // the header is padded so the data starts 8-byte aligned
    assert.equal(Number(readFileSync(file).readBigUInt64LE(0)) % 8, 0);
  });

  it('reads shards through model.safetensors.index.json', () => {
    const dir = path.join(tmp, 'sharded');
    writeSafetensors(path.join(dir, 'model-00001-of-00002.safetensors'), [
      { name: 'a', shape: [3], data: Float32Array.of(1, 2, 3), dtype: 'F32' },
    ]);
    writeSafetensors(path.join(dir, 'model-00002-of-00002.safetensors'), [
      { name: 'b', shape: [2], data: Float32Array.of(4, 5), dtype: 'F32' },
    ]);
    writeFileSync(
      path.join(dir, 'model.safetensors.index.json'),
      JSON.stringify({
        metadata: {},
        weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' },
      }),
    );
    const ckpt = SafetensorsCheckpoint.open(dir);
    try {
      assert.deepEqual(ckpt.names().sort(), ['a', 'b']);
      assert.deepEqual(ckpt.readF32('b'), Float32Array.of(4, 5));
    } finally {
      ckpt.close();
    }
  });

  it('reads a tensor stored past 2 GiB (sparse file)', () => {
    const file = path.join(tmp, 'big.safetensors');
    const gap = 2 ** 31 + 4096; // a zero tensor of this many bytes, then a small one
    const head = header({
      zeros: { dtype: 'U8', shape: [gap], data_offsets: [0, gap] },
      tail: { dtype: 'F32', shape: [4], data_offsets: [gap, gap + 16] },
    });
    const fd = openSync(file, 'w');
    try {
      writeSync(fd, head, 0, head.length, 0);
      ftruncateSync(fd, head.length + gap + 16);
      const tail = Buffer.from(Float32Array.of(1.5, -2, 3, 4).buffer);
      writeSync(fd, tail, 0, 16, head.length + gap);
    } finally {
      closeSync(fd);
    }
    const f = SafetensorsFile.open(file);
    try {
      assert.equal(f.entry('tail').offset, head.length + gap);
      assert.deepEqual(f.readF32('tail'), Float32Array.of(1.5, -2, 3, 4));
    } finally {
      f.close();
    }
  });

  const good = encodeSafetensors([
    { name: 'w', shape: [2, 2], data: Float32Array.of(1, 2, 3, 4), dtype: 'F32' },
  ]);
  const goodBytes = Buffer.concat(good);
  const corrupt: [string, Buffer, string][] = [
    ['an empty file', Buffer.alloc(0), 'too short'],
    ['a truncated data section', goodBytes.subarray(0, goodBytes.length - 3), 'spans bytes'],
    [
      'a header length larger than the file',
      (() => {
        const b = Buffer.from(goodBytes);
        b.writeBigUInt64LE(10n ** 6n, 0);
        return b;
      })(),
      'declares a header',
    ],
    [
      'a header that is not JSON',
      (() => {
        const b = Buffer.alloc(8 + 5);
        b.writeBigUInt64LE(5n, 0);
        b.write('{"w":', 8);
        return b;
      })(),
      'not valid JSON',
    ],
    ['a header that is not an object', header([1, 2]), 'not a JSON object'],
    [
      'an unknown dtype',
      header({ w: { dtype: 'F7', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)),
      'unknown dtype',
    ],
    [
      'a byte size that does not match the shape',
      header({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)),
      'needs 12 bytes',
    ],
    [
      'overlapping tensors',
      header(
        {
          a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
          b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
        },
        new Uint8Array(12),
      ),
      'overlap',
    ],
    [
      'a negative offset',
      header({ w: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, new Uint8Array(4)),
      'invalid data_offsets',
    ],
    [
      'a bad shape',
      header({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }, new Uint8Array(4)),
      'invalid shape',
    ],
  ];
  for (const [what, bytes, message] of corrupt) {
    it(`refuses ${what} with a one-line FormatError`, () => {
      const file = path.join(tmp, `bad-${what.replace(/\W+/g, '-')}.safetensors`);
      writeFileSync(file, bytes);
      assert.throws(
        () => SafetensorsFile.open(file).close(),
        (e: unknown) =>
          e instanceof FormatError &&
          e.message.includes(message) &&
          e.message.includes(file) &&
          !e.message.includes('\n'),
      );
    });
  }

  it('writes atomically: no partial file is left when writing fails', () => {
    const file = path.join(tmp, 'atomic.safetensors');
    assert.throws(() =>
      writeSafetensors(file, [{ name: 'w', shape: [3], data: Float32Array.of(1, 2), dtype: 'F32' }]),
    );
    assert.throws(() => readFileSync(file));
  });
});
