/**
 * Independent decoders for the report tests, written from the formats' specifications (not from
 * src/report): TFRecord framing with a bitwise CRC-32C, protobuf wire format for tensorflow.Event,
 * and a minimal PNG reader (8-bit RGB, filter-0 scanlines) over zlib's inflate.
 */
import assert from 'node:assert/strict';
import { crc32, inflateSync } from 'node:zlib';

/** CRC-32C bit by bit (reflected polynomial 0x82F63B78). */
export function crc32cBitwise(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
  }
  return ~c >>> 0;
}

const mask = (crc: number): number => (((crc >>> 15) | (crc << 17)) + 0xa282ead8) >>> 0;

/** The records of a TFRecord file; every length and data CRC is checked. */
export function readTfRecords(buf: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let o = 0;
  while (o < buf.length) {
    assert.ok(o + 12 <= buf.length, 'truncated record header');
    const len = Number(view.getBigUint64(o, true));
    assert.equal(view.getUint32(o + 8, true), mask(crc32cBitwise(buf.subarray(o, o + 8))), 'length CRC');
    const data = buf.subarray(o + 12, o + 12 + len);
    assert.equal(data.length, len, 'truncated record data');
    assert.equal(view.getUint32(o + 12 + len, true), mask(crc32cBitwise(data)), 'data CRC');
    out.push(data);
    o += 16 + len;
  }
  return out;
}

type Field = { field: number; wire: number; varint?: bigint; bytes?: Uint8Array; fixed?: DataView };

export function protoFields(buf: Uint8Array): Field[] {
  const fields: Field[] = [];
  let o = 0;
  const varint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[o++]!;
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
    }
  };
  while (o < buf.length) {
    const key = Number(varint());
    const field = key >> 3;
    const wire = key & 7;
    if (wire === 0) fields.push({ field, wire, varint: varint() });
    else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      fields.push({ field, wire, fixed: new DataView(buf.buffer, buf.byteOffset + o, n) });
      o += n;
    } else if (wire === 2) {
      const n = Number(varint());
      fields.push({ field, wire, bytes: buf.subarray(o, o + n) });
      o += n;
    } else throw new Error(`unexpected wire type ${wire}`);
  }
  return fields;
}

export interface DecodedEvent {
  wallTime: number;
  step: number;
  fileVersion?: string;
  values: { tag: string; value: number }[];
}

/** tensorflow.Event: 1 wall_time double, 2 step int64, 3 file_version, 5 summary { 1 value { 1 tag, 2 simple_value } }. */
export function decodeEvent(buf: Uint8Array): DecodedEvent {
  const ev: DecodedEvent = { wallTime: NaN, step: 0, values: [] };
  for (const f of protoFields(buf)) {
    if (f.field === 1 && f.wire === 1) ev.wallTime = f.fixed!.getFloat64(0, true);
    else if (f.field === 2 && f.wire === 0) ev.step = Number(BigInt.asIntN(64, f.varint!));
    else if (f.field === 3 && f.wire === 2) ev.fileVersion = new TextDecoder().decode(f.bytes);
    else if (f.field === 5 && f.wire === 2)
      for (const v of protoFields(f.bytes!)) {
        assert.equal(v.field, 1);
        let tag = '';
        let value = NaN;
        for (const x of protoFields(v.bytes!)) {
          if (x.field === 1) tag = new TextDecoder().decode(x.bytes);
          if (x.field === 2 && x.wire === 5) value = x.fixed!.getFloat32(0, true);
        }
        ev.values.push({ tag, value });
      }
  }
  return ev;
}

export interface DecodedPng {
  width: number;
  height: number;
  /** RGB, row-major. */
  pixels: Uint8Array;
}

/** 8-bit RGB, non-interlaced, every scanline filter 0 (what the renderer writes). */
export function decodePng(buf: Uint8Array): DecodedPng {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'signature');
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let o = 8;
  let width = 0;
  let height = 0;
  const idat: Uint8Array[] = [];
  let sawEnd = false;
  while (o < buf.length) {
    const len = view.getUint32(o);
    const type = new TextDecoder().decode(buf.subarray(o + 4, o + 8));
    const data = buf.subarray(o + 8, o + 8 + len);
    assert.equal(view.getUint32(o + 8 + len), crc32(buf.subarray(o + 4, o + 8 + len)), `${type} CRC`);
    if (type === 'IHDR') {
      width = view.getUint32(o + 8);
      height = view.getUint32(o + 12);
      assert.equal(data[8], 8, 'bit depth');
      assert.equal(data[9], 2, 'colour type RGB');
      assert.equal(data[12], 0, 'not interlaced');
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') sawEnd = true;
    o += 12 + len;
  }
  assert.ok(sawEnd, 'IEND');
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 3;
  assert.equal(raw.length, (stride + 1) * height, 'inflated size');
  const pixels = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    assert.equal(raw[y * (stride + 1)], 0, `filter of row ${y}`);
    pixels.set(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)), y * stride);
  }
  return { width, height, pixels };
}

export interface DecodedText {
  tag: string;
  pluginName: string;
  dataClass: number;
  /** TensorProto: dtype (7 = DT_STRING), the number of shape dims, and string_val. */
  dtype: number;
  dims: number;
  strings: string[];
}

/**
 * The text summaries of a tensorflow.Event, read by tensorboard/compat/proto/summary.proto and
 * tensor.proto: Value { 1 tag, 9 metadata { 1 plugin_data { 1 plugin_name }, 4 data_class },
 * 8 tensor { 1 dtype, 2 tensor_shape { 2 dim }, 8 string_val } }.
 */
export function decodeTextSummaries(buf: Uint8Array): DecodedText[] {
  const out: DecodedText[] = [];
  const text = (b: Uint8Array | undefined) => new TextDecoder().decode(b);
  for (const f of protoFields(buf)) {
    if (!(f.field === 5 && f.wire === 2)) continue;
    for (const v of protoFields(f.bytes!)) {
      const d: DecodedText = { tag: '', pluginName: '', dataClass: 0, dtype: 0, dims: 0, strings: [] };
      let tensor = false;
      for (const x of protoFields(v.bytes!)) {
        if (x.field === 1) d.tag = text(x.bytes);
        if (x.field === 9)
          for (const m of protoFields(x.bytes!)) {
            if (m.field === 1)
              for (const p of protoFields(m.bytes!)) if (p.field === 1) d.pluginName = text(p.bytes);
            if (m.field === 4) d.dataClass = Number(m.varint);
          }
        if (x.field === 8) {
          tensor = true;
          for (const t of protoFields(x.bytes!)) {
            if (t.field === 1) d.dtype = Number(t.varint);
            if (t.field === 2) d.dims = protoFields(t.bytes!).filter((s) => s.field === 2).length;
            if (t.field === 8) d.strings.push(text(t.bytes));
          }
        }
      }
      if (tensor) out.push(d);
    }
  }
  return out;
}
