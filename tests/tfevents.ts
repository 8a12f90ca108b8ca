/**
 * A reader of TensorBoard event files written from the format's
 * specification, sharing no code with tools/tensorboard.ts: CRC32C bit by
 * bit from its polynomial, TFRecord framing with every CRC checked, and
 * protobuf's wire format with TensorFlow's field numbers (event.proto,
 * summary.proto).
 */

import { assert } from "./assert.ts";

/** CRC32C one bit at a time: Castagnoli's polynomial, reflected. */
export function crc32cBitwise(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) {
      crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
    }
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** TFRecord's mask, as the format's documentation writes it. */
export function mask(crc: number): number {
  const rotated = ((crc >>> 15) | ((crc << 17) >>> 0)) >>> 0;
  return (rotated + 0xa282ead8) % 2 ** 32;
}

/** The records of a TFRecord file, every CRC checked. */
export function readRecords(bytes: Uint8Array): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const records: Uint8Array[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (at + 12 > bytes.length) throw new Error(`truncated header at ${at}`);
    const length = Number(view.getBigUint64(at, true));
    if (
      mask(crc32cBitwise(bytes.subarray(at, at + 8))) !==
        view.getUint32(at + 8, true)
    ) {
      throw new Error(`bad length CRC at ${at}`);
    }
    const data = bytes.subarray(at + 12, at + 12 + length);
    if (data.length < length || at + 16 + length > bytes.length) {
      throw new Error(`truncated record at ${at}`);
    }
    if (mask(crc32cBitwise(data)) !== view.getUint32(at + 12 + length, true)) {
      throw new Error(`bad data CRC at ${at}`);
    }
    records.push(data);
    at += 16 + length;
  }
  return records;
}

/** A protobuf field: number, wire type and payload. */
interface Field {
  number: number;
  wire: number;
  varint?: bigint;
  bytes?: Uint8Array;
  fixed?: DataView;
}

/** The fields of one protobuf message, in order. */
function readFields(bytes: Uint8Array): Field[] {
  const fields: Field[] = [];
  let at = 0;
  const varint = (): bigint => {
    let value = 0n;
    for (let shift = 0n;; shift += 7n) {
      const b = bytes[at++];
      if (b === undefined) throw new Error("truncated varint");
      value |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return value;
    }
  };
  while (at < bytes.length) {
    const key = Number(varint());
    const field: Field = { number: key >>> 3, wire: key & 7 };
    if (field.wire === 0) field.varint = varint();
    else if (field.wire === 1 || field.wire === 5) {
      const n = field.wire === 1 ? 8 : 4;
      field.fixed = new DataView(bytes.slice(at, at + n).buffer);
      at += n;
    } else if (field.wire === 2) {
      const n = Number(varint());
      field.bytes = bytes.subarray(at, at + n);
      at += n;
    } else throw new Error(`wire type ${field.wire}`);
    fields.push(field);
  }
  return fields;
}

/** An Event as TensorFlow's event.proto and summary.proto number it. */
export interface DecodedEvent {
  wallTime?: number;
  step: number;
  fileVersion?: string;
  sessionStatus?: number;
  values?: [string, number][];
}

export function decodeEvent(bytes: Uint8Array): DecodedEvent {
  const event: DecodedEvent = { step: 0 };
  const text = new TextDecoder();
  for (const f of readFields(bytes)) {
    if (f.number === 1 && f.wire === 1) {
      event.wallTime = f.fixed!.getFloat64(0, true);
    } else if (f.number === 2 && f.wire === 0) event.step = Number(f.varint);
    else if (f.number === 3 && f.wire === 2) {
      event.fileVersion = text.decode(f.bytes);
    } else if (f.number === 5 && f.wire === 2) {
      event.values = [];
      for (const v of readFields(f.bytes!)) {
        assert.equal(v.number, 1, "Summary.value is field 1");
        let tag: string | undefined;
        let value: number | undefined;
        for (const g of readFields(v.bytes!)) {
          if (g.number === 1) tag = text.decode(g.bytes);
          if (g.number === 2 && g.wire === 5) {
            value = g.fixed!.getFloat32(0, true);
          }
        }
        assert.ok(tag !== undefined && value !== undefined, "tag and value");
        event.values.push([tag, value]);
      }
    } else if (f.number === 7 && f.wire === 2) {
      const status = readFields(f.bytes!).find((g) => g.number === 1);
      event.sessionStatus = Number(status?.varint ?? 0n);
    } else throw new Error(`unexpected field ${f.number}`);
  }
  return event;
}
