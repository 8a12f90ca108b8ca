/**
 * Event files read back by a decoder written here from the format's
 * specification, sharing no code with the writer: CRC32C bit by bit from
 * its polynomial (checked against RFC 3720's examples), TFRecord framing,
 * and protobuf's wire format with TensorFlow's field numbers.
 */

import { join } from "node:path";
import {
  EventFile,
  eventFileName,
  FILE_VERSION,
  maskedCrc32c,
  PRETRAIN_SCALARS,
  PROBE_SCALARS,
  tfRecord,
} from "../tools/tensorboard.ts";
import { JsonLog } from "../tools/progress.ts";
import { assert, assertThrows } from "./assert.ts";

/** CRC32C one bit at a time: Castagnoli's polynomial, reflected. */
function crc32cBitwise(data: Uint8Array): number {
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
function mask(crc: number): number {
  const rotated = ((crc >>> 15) | ((crc << 17) >>> 0)) >>> 0;
  return (rotated + 0xa282ead8) % 2 ** 32;
}

/** RFC 3720 appendix B.4: 32 zeros, 32 0xff, 0..31, 31..0, a SCSI Read PDU. */
const RFC3720: [Uint8Array, number][] = [
  [new Uint8Array(32), 0x8a9136aa],
  [new Uint8Array(32).fill(0xff), 0x62a8ab43],
  [Uint8Array.from({ length: 32 }, (_, i) => i), 0x46dd794e],
  [Uint8Array.from({ length: 32 }, (_, i) => 31 - i), 0x113fdb5c],
  [
    Uint8Array.from([
      ...[0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      ...[0, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 0x04, 0],
      ...[0, 0, 0, 0x14, 0, 0, 0, 0x18, 0x28, 0, 0, 0],
      ...[0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0],
    ]),
    0xd9963a56,
  ],
];

/** The records of a TFRecord file, every CRC checked. */
function readRecords(bytes: Uint8Array): Uint8Array[] {
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
interface DecodedEvent {
  wallTime?: number;
  step: number;
  fileVersion?: string;
  sessionStatus?: number;
  values?: [string, number][];
}

function decodeEvent(bytes: Uint8Array): DecodedEvent {
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

Deno.test("CRC32C matches RFC 3720's examples, and the mask matches the format's formula", () => {
  for (const [data, crc] of RFC3720) {
    assert.equal(crc32cBitwise(data), crc, "the test's own CRC32C");
    assert.equal(maskedCrc32c(data), mask(crc));
  }
  // Lengths that exercise every path of a table-driven implementation.
  const bytes = Uint8Array.from({ length: 300 }, (_, i) => (i * 131 + 7) & 255);
  for (let n = 0; n <= bytes.length; n += 13) {
    const part = bytes.subarray(n % 5, n);
    assert.equal(maskedCrc32c(part), mask(crc32cBitwise(part)));
  }
});

Deno.test("tfRecord() frames the data with its length and both masked CRCs", () => {
  const data = new TextEncoder().encode("hello, tensorboard");
  const record = tfRecord(data);
  assert.equal(record.length, 8 + 4 + data.length + 4);
  assert.deepEqual(readRecords(record), [data]);
  assert.deepEqual(readRecords(tfRecord(new Uint8Array(0))), [
    new Uint8Array(0),
  ]);
});

Deno.test("an event file holds the version, a start at the first step, then each step's scalars", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mec_tb_" });
  try {
    let clock = 1_700_000_000.25;
    const events = await EventFile.open(join(dir, "run"), {
      startStep: 40,
      host: "node7",
      now: () => (clock += 0.5),
    });
    events.scalars(40, {
      "train/loss": -1234.5,
      "train/lr": 0.125,
      // Zero is a value: proto3 leaves defaults out, but not oneof members.
      "train/data_wait": 0,
    });
    events.scalars(41, { "train/loss": Math.PI, "knn/top1": 37.5 });
    events.scalars(42, {});
    events.close();
    assert.equal(
      events.path,
      join(dir, "run", "events.out.tfevents.1700000000.node7"),
    );
    const decoded = readRecords(await Deno.readFile(events.path)).map(
      decodeEvent,
    );
    assert.deepEqual(decoded.map((e) => e.wallTime), [
      1700000001.25,
      1700000001.75,
      1700000002.25,
      1700000002.75,
    ]);
    assert.deepEqual(decoded.map(({ wallTime: _, ...e }) => e), [
      { step: 0, fileVersion: FILE_VERSION },
      { step: 40, sessionStatus: 1 },
      {
        step: 40,
        values: [["train/loss", -1234.5], ["train/lr", 0.125], [
          "train/data_wait",
          0,
        ]],
      },
      {
        step: 41,
        values: [["train/loss", Math.fround(Math.PI)], ["knn/top1", 37.5]],
      },
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a corrupted byte anywhere in an event file is detected", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mec_tb_" });
  try {
    const events = await EventFile.open(dir, { host: "h" });
    events.scalars(7, { "train/loss": 1.5, "train/mec": 2.5 });
    events.close();
    const bytes = await Deno.readFile(events.path);
    assert.equal(readRecords(bytes).length, 3);
    for (let i = 0; i < bytes.length; i++) {
      const bad = bytes.slice();
      bad[i] ^= 0x10;
      assertThrows(() => readRecords(bad), /CRC|truncated/);
    }
    assertThrows(
      () => readRecords(bytes.subarray(0, bytes.length - 1)),
      /truncated/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("each process start gets its own event file, named as TensorFlow names them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mec_tb_" });
  try {
    const now = () => 1_600_000_000.9;
    const first = await EventFile.open(dir, { host: "gpu-1", now });
    first.scalars(0, { "train/loss": 1 });
    first.close();
    // A resume within the same second: a second file, the first untouched.
    const before = await Deno.readFile(first.path);
    const second = await EventFile.open(dir, {
      host: "gpu-1",
      now,
      startStep: 1,
    });
    second.scalars(1, { "train/loss": 2 });
    second.close();
    assert.deepEqual(await Deno.readFile(first.path), before);
    assert.equal(
      first.path,
      join(dir, "events.out.tfevents.1600000000.gpu-1"),
    );
    assert.equal(second.path, `${first.path}.1`);
    const steps = readRecords(await Deno.readFile(second.path)).map(
      decodeEvent,
    );
    assert.equal(steps[0].fileVersion, FILE_VERSION);
    assert.deepEqual(steps.at(-1)?.values, [["train/loss", 2]]);
    assert.equal(eventFileName(12.7, "x"), "events.out.tfevents.0000000012.x");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the JSON-lines log sends pretraining's and the probe's scalars to an event file beside it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mec_tb_" });
  try {
    const log = await JsonLog.open(dir, {
      tensorboard: { scalars: PRETRAIN_SCALARS, startStep: 6 },
    });
    log.write({ event: "start", args: { lr: 0.5 } });
    log.write({
      event: "step",
      epoch: 1,
      batch: 2,
      iteration: 6,
      loss: -40,
      mec: 5,
      lr: 0.25,
      lamdaInv: 16,
      teacherMomentum: 0.998,
      time: 0.5,
      data: 0.125,
      imagesPerSecond: 2048,
    });
    log.write({ event: "knn", epoch: 1, iteration: 7, acc1: 62.5 });
    log.write({ event: "checkpoint", path: "c", epoch: 2, batch: 0 });
    const path = log.eventFile!;
    log.close();
    assert.match(path, /\/events\.out\.tfevents\.\d{10}\.[^/]+$/);
    const events = readRecords(await Deno.readFile(path)).map(decodeEvent);
    assert.deepEqual(events.map(({ wallTime: _, ...e }) => e), [
      { step: 0, fileVersion: FILE_VERSION },
      { step: 6, sessionStatus: 1 },
      {
        step: 6,
        values: [
          ["train/loss", -40],
          ["train/mec", 5],
          ["train/lr", 0.25],
          ["train/lambda_inv", 16],
          ["train/teacher_momentum", Math.fround(0.998)],
          ["train/images_per_s", 2048],
          ["train/data_wait", 0.25],
        ],
      },
      { step: 7, values: [["knn/top1", 62.5]] },
    ]);
    // The log itself is unchanged by it: four whole records.
    const lines = (await Deno.readTextFile(join(dir, "log.jsonl"))).split("\n");
    assert.equal(lines.length, 5);
    assert.deepEqual(
      PROBE_SCALARS({
        event: "eval",
        epoch: 2,
        loss: 0.75,
        lr: 0.5,
        acc1: 50,
        acc2: 100,
        bestAcc1: 62.5,
      }),
      {
        step: 3,
        values: {
          "probe/loss": 0.75,
          "probe/lr": 0.5,
          "probe/top1": 50,
          "probe/top2": 100,
        },
      },
    );
    assert.equal(PROBE_SCALARS({ event: "step", epoch: 0, loss: 1 }), null);
    // Without the option there is no event file.
    const plain = await JsonLog.open(join(dir, "plain"));
    plain.write({ event: "step", iteration: 0, loss: 1 });
    assert.equal(plain.eventFile, null);
    plain.close();
    assert.deepEqual(
      [...Deno.readDirSync(join(dir, "plain"))].map((e) => e.name),
      ["log.jsonl"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
