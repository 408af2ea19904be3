/**
 * safetensors, read and written: an 8-byte little-endian header length, a JSON header mapping each
 * tensor name to its dtype, shape and byte range, then the raw little-endian data. Reading opens the
 * file and reads one tensor at a time at its offset (files over 2 GiB work; nothing is mapped whole).
 * The header is validated before anything is trusted: offsets in bounds, ranges not overlapping and
 * covering the data, dtypes known, byte sizes equal to shape × dtype size. Sharded checkpoints
 * (`model.safetensors.index.json`) are read through {@link SafetensorsCheckpoint}.
 */
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import path from 'node:path';
import { FormatError, QtuneError, errorText, quote, shownValue } from '../errors.js';
import { f32ToHalfBytes, halfBytesToF32 } from './half.js';
import { writeFileAtomic } from './atomic.js';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  bytes: number;
  file: string;
}

const MAX_HEADER = 100 * 1024 * 1024;

/** One .safetensors file, open for reading tensor by tensor. */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly entries: Map<string, SafetensorsEntry>;
  private fd: number | null;

  private constructor(
    file: string,
    fd: number,
    metadata: Record<string, string>,
    entries: Map<string, SafetensorsEntry>,
  ) {
    this.path = file;
    this.fd = fd;
    this.metadata = metadata;
    this.entries = entries;
  }

  static open(file: string): SafetensorsFile {
    if (!existsSync(file)) throw new QtuneError('NOT_FOUND', `${file} does not exist`);
    const fd = openSync(file, 'r');
    try {
      const { metadata, entries } = parseHeader(file, fd);
      return new SafetensorsFile(file, fd, metadata, entries);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  entry(name: string): SafetensorsEntry {
    const e = this.entries.get(name);
    if (e === undefined) throw new FormatError(this.path, `has no tensor ${quote(name)}`);
    return e;
  }

  /** The raw little-endian bytes of one tensor, in a new array or at the start of `into`. */
  readRaw(name: string, into?: Uint8Array): Uint8Array {
    const e = this.entry(name);
    if (this.fd === null) throw new QtuneError('DISPOSED', `${this.path} was closed`);
    const out = into === undefined ? new Uint8Array(e.bytes) : into.subarray(0, e.bytes);
    let done = 0;
    while (done < e.bytes) {
      const n = readSync(this.fd, out, done, Math.min(e.bytes - done, 1 << 30), e.offset + done);
      if (n === 0)
        throw new FormatError(this.path, `ends inside tensor ${quote(name)}`, {
          hint: 'the file is truncated',
        });
      done += n;
    }
    return out;
  }

  /** One tensor as f32 values (F32, F16 and BF16 tensors). */
  readF32(name: string): Float32Array {
    return toF32(this.path, this.entry(name), this.readRaw(name));
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

export function toF32(file: string, e: SafetensorsEntry, raw: Uint8Array): Float32Array {
  switch (e.dtype) {
    case 'F32': {
      const out = new Float32Array(e.bytes / 4);
      new Uint8Array(out.buffer).set(raw);
      return out;
    }
    case 'F16':
      return halfBytesToF32(raw, 'f16');
    case 'BF16':
      return halfBytesToF32(raw, 'bf16');
    default:
      throw new FormatError(
        file,
        `tensor ${quote(e.name)} is ${e.dtype}; qtune reads F32, F16 and BF16 weights`,
      );
  }
}

function parseHeader(
  file: string,
  fd: number,
): { metadata: Record<string, string>; entries: Map<string, SafetensorsEntry> } {
  const size = fstatSync(fd).size;
  if (size < 8)
    throw new FormatError(file, `is ${size} bytes, too short to be safetensors`, {
      hint: 'the file is truncated or not safetensors',
    });
  const lenBuf = Buffer.alloc(8);
  readSync(fd, lenBuf, 0, 8, 0);
  const headerLen = Number(lenBuf.readBigUInt64LE(0));
  if (headerLen < 2 || headerLen > MAX_HEADER || 8 + headerLen > size) {
    throw new FormatError(file, `declares a header of ${headerLen} bytes in a file of ${size} bytes`, {
      hint: 'the file is truncated or not safetensors',
    });
  }
  const headerBuf = Buffer.alloc(headerLen);
  readSync(fd, headerBuf, 0, headerLen, 8);
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (e) {
    throw new FormatError(file, `has a header that is not valid JSON (${errorText(e)})`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new FormatError(file, 'has a header that is not a JSON object');
  }
  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  const metadata: Record<string, string> = {};
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw !== null && typeof raw === 'object') {
        for (const [k, v] of Object.entries(raw as Record<string, unknown>))
          if (typeof v === 'string') metadata[k] = v;
      }
      continue;
    }
    const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (t === null || typeof t !== 'object')
      throw new FormatError(file, `tensor ${quote(name)} has no description`, {
        hint: 'the header is corrupt',
      });
    if (typeof t.dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, t.dtype)) {
      throw new FormatError(file, `tensor ${quote(name)} has unknown dtype ${JSON.stringify(t.dtype)}`, {
        hint: `known: ${Object.keys(DTYPE_BYTES).join(', ')}`,
      });
    }
    const dtype = t.dtype as SafetensorsDType;
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new FormatError(file, `tensor ${quote(name)} has an invalid shape ${JSON.stringify(t.shape)}`, {
        hint: 'the header is corrupt',
      });
    }
    const shape = t.shape as number[];
    const off = t.data_offsets;
    if (
      !Array.isArray(off) ||
      off.length !== 2 ||
      !off.every((o) => Number.isSafeInteger(o) && (o as number) >= 0)
    ) {
      throw new FormatError(file, `tensor ${quote(name)} has invalid data_offsets ${JSON.stringify(off)}`, {
        hint: 'the header is corrupt',
      });
    }
    const [begin, end] = off as [number, number];
    if (begin > end || end > dataLen) {
      throw new FormatError(
        file,
        `tensor ${quote(name)} spans bytes [${begin}, ${end}) but the data holds ${dataLen}`,
        {
          hint: 'the file is truncated or its header is corrupt',
        },
      );
    }
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (end - begin !== expected) {
      throw new FormatError(
        file,
        `tensor ${quote(name)} ${dtype} [${shape.join(', ')}] needs ${expected} bytes but spans ${end - begin}`,
      );
    }
    entries.set(name, { name, dtype, shape, offset: dataStart + begin, bytes: end - begin, file });
  }
  const sorted = [...entries.values()].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.bytes) {
      throw new FormatError(file, `tensors ${quote(prev.name)} and ${quote(cur.name)} overlap`, {
        hint: 'the header is corrupt',
      });
    }
  }
  return { metadata, entries };
}

/**
 * A checkpoint: one `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
 */
export class SafetensorsCheckpoint {
  readonly files: SafetensorsFile[];
  private readonly byName = new Map<string, SafetensorsFile>();

  private constructor(files: SafetensorsFile[]) {
    this.files = files;
    for (const f of files) {
      for (const n of f.names()) {
        if (this.byName.has(n))
          throw new FormatError(f.path, `tensor ${quote(n)} also appears in ${this.byName.get(n)!.path}`);
        this.byName.set(n, f);
      }
    }
  }

  /** Opens a folder (single file or shard index) or a .safetensors file. */
  static open(location: string): SafetensorsCheckpoint {
    if (existsSync(location) && statSync(location).isFile())
      return new SafetensorsCheckpoint([SafetensorsFile.open(location)]);
    const index = path.join(location, 'model.safetensors.index.json');
    if (existsSync(index)) {
      let weightMap: Record<string, string>;
      try {
        weightMap = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map: Record<string, string> })
          .weight_map;
        if (weightMap === null || typeof weightMap !== 'object') throw new Error('no weight_map');
        for (const [k, v] of Object.entries(weightMap))
          if (typeof v !== 'string') throw new Error(`weight_map lists ${quote(k)} in ${shownValue(v)}`);
      } catch (e) {
        throw new FormatError(index, `is not a valid shard index (${errorText(e)})`);
      }
      const shards = [...new Set(Object.values(weightMap))];
      const files: SafetensorsFile[] = [];
      try {
        for (const s of shards) files.push(SafetensorsFile.open(path.join(location, s)));
      } catch (e) {
        for (const f of files) f.close();
        throw e;
      }
      const ckpt = new SafetensorsCheckpoint(files);
      for (const [name, shard] of Object.entries(weightMap)) {
        if (ckpt.byName.get(name)?.path !== path.join(location, shard)) {
          ckpt.close();
          throw new FormatError(index, `lists ${quote(name)} in ${quote(shard)}, which does not hold it`);
        }
      }
      return ckpt;
    }
    const single = path.join(location, 'model.safetensors');
    if (existsSync(single)) return new SafetensorsCheckpoint([SafetensorsFile.open(single)]);
    throw new QtuneError(
      'NOT_FOUND',
      `${location} has no model.safetensors or model.safetensors.index.json`,
      {
        hint: 'point at a Hugging Face model folder',
      },
    );
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  entry(name: string): SafetensorsEntry {
    const f = this.byName.get(name);
    if (f === undefined) throw new QtuneError('NOT_FOUND', `the checkpoint has no tensor ${quote(name)}`);
    return f.entry(name);
  }

  readRaw(name: string, into?: Uint8Array): Uint8Array {
    this.entry(name);
    return this.byName.get(name)!.readRaw(name, into);
  }

  readF32(name: string): Float32Array {
    this.entry(name);
    return this.byName.get(name)!.readF32(name);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

export interface TensorToWrite {
  name: string;
  shape: readonly number[];
  /** f32 values (converted to `dtype`), or raw bytes already in `dtype`. */
  data: Float32Array | Uint8Array;
  dtype: 'F32' | 'F16' | 'BF16';
}

/** Encodes a safetensors file in memory (header padded to 8 bytes). */
export function encodeSafetensors(
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = {},
): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header['__metadata__'] = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const bytes =
      t.data instanceof Uint8Array
        ? t.data
        : t.dtype === 'F32'
          ? new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
          : f32ToHalfBytes(t.data, t.dtype === 'F16' ? 'f16' : 'bf16');
    const expected = t.shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[t.dtype];
    if (bytes.byteLength !== expected) {
      throw new QtuneError(
        'INVALID_ARGUMENT',
        `tensor "${t.name}" [${t.shape.join(', ')}] ${t.dtype} needs ${expected} bytes, got ${bytes.byteLength}`,
      );
    }
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    chunks.push(bytes);
    offset += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, 'utf8');
  return [head, ...chunks];
}

/** Writes a safetensors file atomically (a temporary file, then a rename). */
export function writeSafetensors(
  file: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = {},
): void {
  writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}
