/**
 * GGUF (ggml's model file, version 3), read and written: a header of typed key-value metadata and
 * tensor descriptions (name, dims innermost first, ggml type, offset), then the tensor data, each
 * tensor aligned to `general.alignment` (default 32). Every count, length, type and offset is checked
 * against the file before it is used; a truncated or corrupt file gets a {@link FormatError}.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { dtypeFromId, GGML_TYPE_IDS, type DType } from '../engine/dtype.js';
import { getEngine } from '../engine/library.js';
import { FormatError, QtuneError, quote } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

const MAGIC = 0x46554747; // "GGUF" little-endian
const DEFAULT_ALIGNMENT = 32;

export const GgufType = {
  U8: 0,
  I8: 1,
  U16: 2,
  I16: 3,
  U32: 4,
  I32: 5,
  F32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  U64: 10,
  I64: 11,
  F64: 12,
} as const;
export type GgufType = (typeof GgufType)[keyof typeof GgufType];

/**
 * A key or tensor name as error messages show it: as is when it is short printable ASCII, else
 * quoted and cut (a corrupt header can hold any bytes there).
 */
export function shownName(s: string): string {
  return /^[\x21-\x7e]{1,100}$/.test(s) ? s : quote(s);
}

/** Bytes of one value of each scalar type (strings: their 8-byte length at least). */
const MIN_BYTES: Record<number, number> = {
  0: 1,
  1: 1,
  2: 2,
  3: 2,
  4: 4,
  5: 4,
  6: 4,
  7: 1,
  8: 8,
  10: 8,
  11: 8,
  12: 8,
};

function asGgufType(file: string, n: number, key: string): GgufType {
  if (!Number.isInteger(n) || n < 0 || n > 12)
    throw new FormatError(file, `metadata ${key} has unknown value type ${n}`, {
      hint: 'the header is corrupt',
    });
  return n as GgufType;
}

export type GgufScalar = number | bigint | boolean | string;
export type GgufValue = GgufScalar | GgufScalar[];

/** A metadata value with the GGUF type it is (or will be) stored as. */
export interface GgufKv {
  type: GgufType;
  /** For arrays, the element type. */
  itemType?: GgufType;
  value: GgufValue;
}

export interface GgufTensorInfo {
  name: string;
  /** Shape, outermost first (the reverse of GGUF's dims). */
  shape: number[];
  dtype: DType;
  /** Absolute byte offset of the data in the file. */
  offset: number;
  bytes: number;
}

const LIMITS = { tensors: 1_000_000, kvs: 1_000_000, string: 256 * 1024 * 1024, array: 64 * 1024 * 1024 };

/** Reads the header lazily from the file, refilling a buffer as the cursor advances. */
class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  pos = 0;

  constructor(
    private readonly file: string,
    private readonly fd: number,
    readonly size: number,
  ) {}

  private need(n: number, what: string): number {
    if (this.pos + n > this.size) {
      throw new FormatError(this.file, `ends while reading ${what} (byte ${this.pos} of ${this.size})`, {
        hint: 'the file is truncated',
      });
    }
    const rel = this.pos - this.bufStart;
    if (rel < 0 || rel + n > this.buf.length) {
      const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
      this.buf = Buffer.alloc(len);
      readSync(this.fd, this.buf, 0, len, this.pos);
      this.bufStart = this.pos;
    }
    const at = this.pos - this.bufStart;
    this.pos += n;
    return at;
  }

  u8(w = 'a byte'): number {
    const at = this.need(1, w);
    return this.buf.readUInt8(at);
  }
  i8(): number {
    const at = this.need(1, 'an i8');
    return this.buf.readInt8(at);
  }
  u16(): number {
    const at = this.need(2, 'a u16');
    return this.buf.readUInt16LE(at);
  }
  i16(): number {
    const at = this.need(2, 'an i16');
    return this.buf.readInt16LE(at);
  }
  u32(w = 'a u32'): number {
    const at = this.need(4, w);
    return this.buf.readUInt32LE(at);
  }
  i32(): number {
    const at = this.need(4, 'an i32');
    return this.buf.readInt32LE(at);
  }
  f32(): number {
    const at = this.need(4, 'an f32');
    return this.buf.readFloatLE(at);
  }
  f64(): number {
    const at = this.need(8, 'an f64');
    return this.buf.readDoubleLE(at);
  }
  u64(w = 'a u64'): bigint {
    const at = this.need(8, w);
    return this.buf.readBigUInt64LE(at);
  }
  i64(): bigint {
    const at = this.need(8, 'an i64');
    return this.buf.readBigInt64LE(at);
  }
  // (each accessor calls need() before touching this.buf: need() may replace the buffer)
  /** A u64 count of items of at least `itemBytes` each, checked against the limit and the bytes left. */
  count(limit: number, what: string, itemBytes = 1): number {
    const v = this.u64(what);
    if (v > BigInt(limit))
      throw new FormatError(this.file, `declares ${v} ${what}, more than the ${limit} qtune accepts`, {
        hint: 'the header is corrupt',
      });
    const left = this.size - this.pos;
    if (Number(v) * itemBytes > left)
      throw new FormatError(
        this.file,
        `declares ${v} ${what} at byte ${this.pos - 8}, more than the ${left} bytes left can hold`,
        { hint: 'the file is truncated or its header is corrupt' },
      );
    return Number(v);
  }
  string(what: string): string {
    const len = this.count(LIMITS.string, `bytes in ${what}`);
    const at = this.need(len, what);
    return this.buf.toString('utf8', at, at + len);
  }
}

/** The shortest decimal that is the same f32 (1e-6 rather than 9.999999974752427e-7). */
function shortestF32(v: number): number {
  if (!Number.isFinite(v)) return v;
  for (let p = 1; p <= 9; p++) {
    const d = Number(v.toPrecision(p));
    if (Math.fround(d) === v) return d;
  }
  return v;
}

function readValue(c: Cursor, type: GgufType, file: string, key: string): GgufValue {
  switch (type) {
    case GgufType.U8:
      return c.u8();
    case GgufType.I8:
      return c.i8();
    case GgufType.U16:
      return c.u16();
    case GgufType.I16:
      return c.i16();
    case GgufType.U32:
      return c.u32();
    case GgufType.I32:
      return c.i32();
    case GgufType.F32:
      return shortestF32(c.f32());
    case GgufType.BOOL:
      return c.u8() !== 0;
    case GgufType.STRING:
      return c.string(`the value of ${key}`);
    case GgufType.U64:
      return c.u64();
    case GgufType.I64:
      return c.i64();
    case GgufType.F64:
      return c.f64();
    default:
      throw new FormatError(file, `metadata ${key} has unknown value type ${type}`, {
        hint: 'the header is corrupt',
      });
  }
}

export interface GgufFile {
  path: string;
  version: number;
  kv: Map<string, GgufKv>;
  tensors: Map<string, GgufTensorInfo>;
  alignment: number;
  dataStart: number;
}

/** Parses and validates a GGUF header. Tensor data stays on disk; read it with {@link readGgufTensor}. */
export function readGguf(file: string): GgufFile {
  if (!existsSync(file)) throw new QtuneError('NOT_FOUND', `${file} does not exist`);
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const c = new Cursor(file, fd, size);
    const magic = c.u32('the magic number');
    if (magic !== MAGIC) throw new FormatError(file, 'is not a GGUF file (bad magic number)');
    const version = c.u32('the version');
    if (version !== 2 && version !== 3)
      throw new FormatError(file, `is GGUF version ${version}; qtune reads versions 2 and 3`);
    // a tensor description takes at least 28 bytes, a metadata entry 13
    const nTensors = c.count(LIMITS.tensors, 'tensors', 28);
    const nKv = c.count(LIMITS.kvs, 'metadata entries', 13);
    const kv = new Map<string, GgufKv>();
    for (let i = 0; i < nKv; i++) {
      const rawKey = c.string(`metadata key ${i}`);
      const key = shownName(rawKey);
      const type = asGgufType(file, c.u32(`the type of ${key}`), key);
      if (type === GgufType.ARRAY) {
        const itemType = asGgufType(file, c.u32(`the item type of ${key}`), key);
        if (itemType === GgufType.ARRAY)
          throw new FormatError(file, `metadata ${key} is an array of arrays, which qtune does not read`);
        const n = c.count(LIMITS.array, `items of ${key}`, MIN_BYTES[itemType]);
        const items: GgufScalar[] = new Array<GgufScalar>(n);
        for (let j = 0; j < n; j++) items[j] = readValue(c, itemType, file, key) as GgufScalar;
        kv.set(rawKey, { type, itemType, value: items });
      } else {
        kv.set(rawKey, { type, value: readValue(c, type, file, key) });
      }
    }
    const alignKv = kv.get('general.alignment')?.value;
    const alignment = typeof alignKv === 'number' ? alignKv : DEFAULT_ALIGNMENT;
    if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) {
      throw new FormatError(file, `general.alignment is ${String(alignKv)}, not a power of two`);
    }
    const { api } = getEngine();
    const infos: { name: string; shape: number[]; dtype: DType; rel: number; bytes: number }[] = [];
    for (let i = 0; i < nTensors; i++) {
      const rawName = c.string(`the name of tensor ${i}`);
      const name = shownName(rawName);
      const nDims = c.u32(`the rank of ${name}`);
      if (nDims < 1 || nDims > 4)
        throw new FormatError(file, `tensor ${name} has ${nDims} dimensions`, {
          hint: 'the header is corrupt',
        });
      const ne: number[] = [];
      for (let d = 0; d < nDims; d++) {
        const v = c.u64(`the dimensions of ${name}`);
        if (v < 1n || v > BigInt(Number.MAX_SAFE_INTEGER))
          throw new FormatError(file, `tensor ${name} has a dimension of ${v}`);
        ne.push(Number(v));
      }
      const typeId = c.u32(`the type of ${name}`);
      let dtype: DType;
      try {
        dtype = dtypeFromId(typeId);
      } catch {
        throw new FormatError(
          file,
          `tensor ${name} has ggml type ${typeId}, which this engine does not know`,
        );
      }
      const rel = c.u64(`the offset of ${name}`);
      const blk = api.blck_size(GGML_TYPE_IDS[dtype]);
      if (ne[0]! % blk !== 0)
        throw new FormatError(
          file,
          `tensor ${name} has rows of ${ne[0]} ${dtype} values, not whole blocks of ${blk}`,
        );
      const bytes = api.row_size(GGML_TYPE_IDS[dtype], ne[0]!) * ne.slice(1).reduce((a, b) => a * b, 1);
      if (rel % BigInt(alignment) !== 0n)
        throw new FormatError(file, `tensor ${name} starts at ${rel}, not aligned to ${alignment}`);
      infos.push({ name: rawName, shape: [...ne].reverse(), dtype, rel: Number(rel), bytes });
    }
    const dataStart = Math.ceil(c.pos / alignment) * alignment;
    const tensors = new Map<string, GgufTensorInfo>();
    for (const t of infos) {
      if (tensors.has(t.name)) throw new FormatError(file, `tensor ${shownName(t.name)} appears twice`);
      if (dataStart + t.rel + t.bytes > size) {
        throw new FormatError(
          file,
          `tensor ${shownName(t.name)} ends at byte ${dataStart + t.rel + t.bytes} but the file has ${size}`,
          {
            hint: 'the file is truncated',
          },
        );
      }
      tensors.set(t.name, {
        name: t.name,
        shape: t.shape,
        dtype: t.dtype,
        offset: dataStart + t.rel,
        bytes: t.bytes,
      });
    }
    const sorted = [...tensors.values()].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.offset < sorted[i - 1]!.offset + sorted[i - 1]!.bytes) {
        throw new FormatError(
          file,
          `tensors ${shownName(sorted[i - 1]!.name)} and ${shownName(sorted[i]!.name)} overlap`,
          {
            hint: 'the header is corrupt',
          },
        );
      }
    }
    return { path: file, version, kv, tensors, alignment, dataStart };
  } finally {
    closeSync(fd);
  }
}

/** The raw bytes of one tensor (in its ggml type), in a new array or at the start of `into`. */
export function readGgufTensor(g: GgufFile, name: string, into?: Uint8Array): Uint8Array {
  const t = g.tensors.get(name);
  if (t === undefined) throw new FormatError(g.path, `has no tensor ${shownName(name)}`);
  const fd = openSync(g.path, 'r');
  try {
    const out = into === undefined ? new Uint8Array(t.bytes) : into.subarray(0, t.bytes);
    let done = 0;
    while (done < t.bytes) {
      const n = readSync(fd, out, done, Math.min(t.bytes - done, 1 << 30), t.offset + done);
      if (n === 0)
        throw new FormatError(g.path, `ends inside tensor ${shownName(name)}`, {
          hint: 'the file is truncated',
        });
      done += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** A metadata value, checked to be of the expected JavaScript kind. */
export function ggufGet(g: GgufFile, key: string, kind: 'number'): number | undefined;
export function ggufGet(g: GgufFile, key: string, kind: 'string'): string | undefined;
export function ggufGet(g: GgufFile, key: string, kind: 'boolean'): boolean | undefined;
export function ggufGet(g: GgufFile, key: string, kind: 'array'): GgufScalar[] | undefined;
export function ggufGet(
  g: GgufFile,
  key: string,
  kind: 'number' | 'string' | 'boolean' | 'array',
): GgufValue | undefined {
  const e = g.kv.get(key);
  if (e === undefined) return undefined;
  let v = e.value;
  if (typeof v === 'bigint') v = Number(v);
  const ok = kind === 'array' ? Array.isArray(v) : typeof v === kind;
  if (!ok)
    throw new FormatError(
      g.path,
      `metadata ${shownName(key)} is ${Array.isArray(v) ? 'an array' : typeof v}, expected a ${kind}`,
    );
  return v;
}

export interface GgufTensorToWrite {
  name: string;
  shape: readonly number[];
  dtype: DType;
  /** Bytes in `dtype`'s layout. */
  data: Uint8Array;
}

function encodeString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const out = Buffer.alloc(8 + b.length);
  out.writeBigUInt64LE(BigInt(b.length), 0);
  b.copy(out, 8);
  return out;
}

function encodeScalar(type: GgufType, v: GgufScalar): Buffer {
  const b = Buffer.alloc(type === GgufType.STRING ? 0 : 8);
  switch (type) {
    case GgufType.U8:
      b.writeUInt8(Number(v));
      return b.subarray(0, 1);
    case GgufType.I8:
      b.writeInt8(Number(v));
      return b.subarray(0, 1);
    case GgufType.U16:
      b.writeUInt16LE(Number(v));
      return b.subarray(0, 2);
    case GgufType.I16:
      b.writeInt16LE(Number(v));
      return b.subarray(0, 2);
    case GgufType.U32:
      b.writeUInt32LE(Number(v));
      return b.subarray(0, 4);
    case GgufType.I32:
      b.writeInt32LE(Number(v));
      return b.subarray(0, 4);
    case GgufType.F32:
      b.writeFloatLE(Number(v));
      return b.subarray(0, 4);
    case GgufType.BOOL:
      b.writeUInt8(v === true ? 1 : 0);
      return b.subarray(0, 1);
    case GgufType.STRING:
      return encodeString(String(v));
    case GgufType.U64:
      b.writeBigUInt64LE(BigInt(v));
      return b;
    case GgufType.I64:
      b.writeBigInt64LE(BigInt(v));
      return b;
    case GgufType.F64:
      b.writeDoubleLE(Number(v));
      return b;
    default:
      throw new QtuneError('INVALID_ARGUMENT', `cannot encode GGUF type ${type}`);
  }
}

/** Writes a GGUF v3 file atomically. */
export function writeGguf(
  file: string,
  kv: Map<string, GgufKv>,
  tensors: readonly GgufTensorToWrite[],
  alignment = DEFAULT_ALIGNMENT,
): void {
  const { api } = getEngine();
  const head: Buffer[] = [];
  const fixed = Buffer.alloc(24);
  fixed.writeUInt32LE(MAGIC, 0);
  fixed.writeUInt32LE(3, 4);
  fixed.writeBigUInt64LE(BigInt(tensors.length), 8);
  const entries = new Map(kv);
  if (alignment !== DEFAULT_ALIGNMENT)
    entries.set('general.alignment', { type: GgufType.U32, value: alignment });
  fixed.writeBigUInt64LE(BigInt(entries.size), 16);
  head.push(fixed);
  for (const [key, e] of entries) {
    head.push(encodeString(key));
    const t = Buffer.alloc(4);
    t.writeUInt32LE(e.type);
    head.push(t);
    if (e.type === GgufType.ARRAY) {
      if (!Array.isArray(e.value) || e.itemType === undefined)
        throw new QtuneError(
          'INVALID_ARGUMENT',
          `metadata ${key}: an array needs itemType and an array value`,
        );
      const h = Buffer.alloc(12);
      h.writeUInt32LE(e.itemType, 0);
      h.writeBigUInt64LE(BigInt(e.value.length), 4);
      head.push(h);
      for (const v of e.value) head.push(encodeScalar(e.itemType, v));
    } else {
      head.push(encodeScalar(e.type, e.value as GgufScalar));
    }
  }
  let offset = 0;
  const dataChunks: Uint8Array[] = [];
  for (const t of tensors) {
    const ne = [...t.shape].reverse();
    const expected = api.row_size(GGML_TYPE_IDS[t.dtype], ne[0]!) * ne.slice(1).reduce((a, b) => a * b, 1);
    if (t.data.byteLength !== expected) {
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `tensor ${t.name} [${t.shape.join(', ')}] ${t.dtype} needs ${expected} bytes, got ${t.data.byteLength}`,
      );
    }
    head.push(encodeString(t.name));
    const info = Buffer.alloc(4 + 8 * ne.length + 4 + 8);
    info.writeUInt32LE(ne.length, 0);
    ne.forEach((d, i) => info.writeBigUInt64LE(BigInt(d), 4 + 8 * i));
    info.writeUInt32LE(GGML_TYPE_IDS[t.dtype], 4 + 8 * ne.length);
    info.writeBigUInt64LE(BigInt(offset), 8 + 8 * ne.length);
    head.push(info);
    const pad = (alignment - (t.data.byteLength % alignment)) % alignment;
    dataChunks.push(t.data);
    if (pad > 0) dataChunks.push(new Uint8Array(pad));
    offset += t.data.byteLength + pad;
  }
  const headLen = head.reduce((s, b) => s + b.length, 0);
  const headPad = (alignment - (headLen % alignment)) % alignment;
  writeFileAtomic(file, [...head, new Uint8Array(headPad), ...dataChunks]);
}

/** Shorthands for building metadata. */
export const kv = {
  str: (value: string): GgufKv => ({ type: GgufType.STRING, value }),
  u32: (value: number): GgufKv => ({ type: GgufType.U32, value }),
  i32: (value: number): GgufKv => ({ type: GgufType.I32, value }),
  f32: (value: number): GgufKv => ({ type: GgufType.F32, value }),
  bool: (value: boolean): GgufKv => ({ type: GgufType.BOOL, value }),
  strings: (value: string[]): GgufKv => ({ type: GgufType.ARRAY, itemType: GgufType.STRING, value }),
  f32s: (value: number[]): GgufKv => ({ type: GgufType.ARRAY, itemType: GgufType.F32, value }),
  i32s: (value: number[]): GgufKv => ({ type: GgufType.ARRAY, itemType: GgufType.I32, value }),
};
