/**
 * Where the length and count fields of real safetensors and GGUF files are, found by walking the
 * bytes with the formats' specifications (safetensors: README of huggingface/safetensors; GGUF:
 * ggml/docs/gguf.md), independently of qtune's readers. The fuzz tests set these fields to absurd
 * values and aim most other mutations at the headers.
 */
import type { Field, Hot } from './mutate.js';

/** The 8-byte header length of a safetensors file, and its header as a range. */
export function safetensorsLayout(b: Uint8Array): { fields: Field[]; hot: Hot; headerLen: number } {
  const headerLen = Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(0, true));
  return { fields: [{ offset: 0, size: 8, what: 'header length' }], hot: [[0, 8 + headerLen]], headerLen };
}

const SCALAR_BYTES: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  10: 8,
  11: 8,
  12: 8,
};
const STRING = 8;
const ARRAY = 9;

/**
 * Every count, length, type and offset field of a GGUF header (string lengths of long arrays only
 * for their first items), and the header as ranges without string payloads over `longText` bytes.
 */
export function ggufLayout(b: Uint8Array, longText = 4096): { fields: Field[]; hot: Hot; dataStart: number } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const fields: Field[] = [];
  const skipped: [number, number][] = [];
  let pos = 0;
  const u32 = (what: string): number => {
    fields.push({ offset: pos, size: 4, what });
    pos += 4;
    return v.getUint32(pos - 4, true);
  };
  const u64 = (what: string, record = true): number => {
    if (record) fields.push({ offset: pos, size: 8, what });
    pos += 8;
    return Number(v.getBigUint64(pos - 8, true));
  };
  const str = (what: string, record = true): void => {
    const n = u64(`length of ${what}`, record);
    if (n > longText) skipped.push([pos, pos + n]);
    pos += n;
  };
  pos = 8; // magic, version
  fields.push({ offset: 4, size: 4, what: 'version' });
  const nTensors = u64('tensor count');
  const nKv = u64('metadata count');
  for (let i = 0; i < nKv; i++) {
    str(`key ${i}`);
    const type = u32(`type of key ${i}`);
    if (type === STRING) str(`value of key ${i}`);
    else if (type === ARRAY) {
      const item = u32(`item type of key ${i}`);
      const n = u64(`item count of key ${i}`);
      for (let j = 0; j < n; j++) {
        if (item === STRING) str(`item ${j} of key ${i}`, j < 4);
        else pos += SCALAR_BYTES[item]!;
      }
    } else pos += SCALAR_BYTES[type]!;
  }
  for (let i = 0; i < nTensors; i++) {
    str(`name of tensor ${i}`);
    const dims = u32(`rank of tensor ${i}`);
    for (let d = 0; d < dims; d++) u64(`dim ${d} of tensor ${i}`);
    u32(`ggml type of tensor ${i}`);
    u64(`offset of tensor ${i}`);
  }
  const dataStart = Math.ceil(pos / 32) * 32;
  const hot: [number, number][] = [];
  let at = 0;
  for (const [a, z] of skipped.sort((x, y) => x[0] - y[0])) {
    if (a > at) hot.push([at, a]);
    at = z;
  }
  if (dataStart > at) hot.push([at, dataStart]);
  return { fields, hot, dataStart };
}
