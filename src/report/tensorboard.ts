/**
 * TensorBoard event files, written without a protobuf dependency.
 *
 * A file `events.out.tfevents.<seconds>.<host>` is a sequence of TFRecords:
 *   uint64 length (little-endian), uint32 masked CRC32C of those 8 bytes, the data, uint32 masked
 *   CRC32C of the data
 * and each record's data is a protobuf `tensorflow.Event`:
 *   1 wall_time double   2 step int64   3 file_version string   5 summary Summary
 *   Summary: 1 repeated Value;  Value: 1 tag string, 2 simple_value float
 * The first event carries file_version "brain.Event:2"; every later one a summary of scalars, or a
 * text for TensorBoard's text plugin (tensorboard/compat/proto/summary.proto and tensor.proto):
 *   Value: 1 tag, 9 metadata SummaryMetadata, 8 tensor TensorProto
 *   SummaryMetadata: 1 plugin_data { 1 plugin_name "text", 2 content: TextPluginData{version 0},
 *   which serializes to no bytes }, 4 data_class DATA_CLASS_TENSOR (2)
 *   TensorProto: 1 dtype DT_STRING (7), 2 tensor_shape {} (rank 0), 8 string_val the text
 */
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

// ------------------------------------------------------------------------------ CRC32C

const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32C (Castagnoli), table-driven. */
export function crc32c(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of data) c = CRC32C_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotate right by 15 and add a constant. */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return (((c >>> 15) | (c << 17)) + 0xa282ead8) >>> 0;
}

/** One TFRecord around `data`. */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(16 + data.length);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

// ------------------------------------------------------------------------------ protobuf

class ProtoWriter {
  private bytes: number[] = [];

  private varint(v: bigint | number): void {
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.bytes.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.bytes.push(Number(x));
  }

  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int64(field: number, v: number): this {
    this.key(field, 0);
    this.varint(BigInt(Math.trunc(v)));
    return this;
  }

  double(field: number, v: number): this {
    this.key(field, 1);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    this.bytes.push(...b);
    return this;
  }

  float(field: number, v: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.bytes.push(...b);
    return this;
  }

  bytesField(field: number, v: Uint8Array): this {
    this.key(field, 2);
    this.varint(v.length);
    this.bytes.push(...v);
    return this;
  }

  string(field: number, v: string): this {
    return this.bytesField(field, new TextEncoder().encode(v));
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/** A `tensorflow.Event` with a file version. */
export function fileVersionEvent(wallTime: number, version = 'brain.Event:2'): Uint8Array {
  return new ProtoWriter().double(1, wallTime).int64(2, 0).string(3, version).finish();
}

/** A `tensorflow.Event` with a summary of scalar values. */
export function scalarsEvent(
  wallTime: number,
  step: number,
  scalars: readonly { tag: string; value: number }[],
): Uint8Array {
  const summary = new ProtoWriter();
  for (const s of scalars)
    summary.bytesField(1, new ProtoWriter().string(1, s.tag).float(2, s.value).finish());
  return new ProtoWriter().double(1, wallTime).int64(2, step).bytesField(5, summary.finish()).finish();
}

/** A `tensorflow.Event` with one text summary (markdown), as TensorBoard's text plugin reads it. */
export function textEvent(wallTime: number, step: number, tag: string, text: string): Uint8Array {
  const plugin = new ProtoWriter().string(1, 'text').finish();
  const metadata = new ProtoWriter().bytesField(1, plugin).int64(4, 2).finish();
  const tensor = new ProtoWriter().int64(1, 7).bytesField(2, new Uint8Array(0)).string(8, text).finish();
  const value = new ProtoWriter().string(1, tag).bytesField(9, metadata).bytesField(8, tensor).finish();
  const summary = new ProtoWriter().bytesField(1, value).finish();
  return new ProtoWriter().double(1, wallTime).int64(2, step).bytesField(5, summary).finish();
}

// ------------------------------------------------------------------------------ the writer

/** Appends events to one event file; every record is written whole as it comes. */
export class TensorBoardWriter {
  readonly file: string;
  private fd: number | null;

  constructor(logDir: string, options: { now?: () => number } = {}) {
    mkdirSync(logDir, { recursive: true });
    const now = (options.now ?? Date.now)() / 1000;
    const host = os.hostname().replace(/[^A-Za-z0-9._-]/g, '_') || 'localhost';
    this.file = path.join(logDir, `events.out.tfevents.${Math.floor(now)}.${host}.${process.pid}`);
    this.fd = openSync(this.file, 'a');
    this.write(fileVersionEvent(now));
  }

  addScalars(step: number, scalars: readonly { tag: string; value: number }[], wallTime?: number): void {
    const finite = scalars.filter((s) => Number.isFinite(s.value));
    if (finite.length === 0) return;
    this.write(scalarsEvent(wallTime ?? Date.now() / 1000, step, finite));
  }

  /** A text (markdown) under `tag` at `step`, for the text plugin. */
  addText(step: number, tag: string, text: string, wallTime?: number): void {
    this.write(textEvent(wallTime ?? Date.now() / 1000, step, tag, text));
  }

  private write(event: Uint8Array): void {
    if (this.fd === null) throw new Error(`${this.file} is closed`);
    const rec = tfRecord(event);
    let done = 0;
    while (done < rec.length) done += writeSync(this.fd, rec, done, rec.length - done);
  }

  close(): void {
    if (this.fd === null) return;
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = null;
  }
}
