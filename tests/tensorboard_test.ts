/**
 * Event files read back by an independent decoder (tests/tfevents.ts),
 * its CRC32C checked against RFC 3720's examples first.
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
import { parseCommand } from "../tools/flags.ts";
import { LINCLS_FLAGS, OFFICIAL } from "../tools/lincls_args.ts";
import { PAPER, PRETRAIN_FLAGS } from "../tools/pretrain_args.ts";
import { assert, assertThrows } from "./assert.ts";
import { crc32cBitwise, decodeEvent, mask, readRecords } from "./tfevents.ts";

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
    assert.deepEqual(
      PROBE_SCALARS({ event: "test", epoch: 9, acc1: 81.5, acc5: 99 }),
      { step: 10, values: { "probe/test_top1": 81.5, "probe/test_top5": 99 } },
    );
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

Deno.test("both tools write event files by default, and --no-tensorboard turns them off", () => {
  assert.equal(PAPER.tensorboard, true);
  assert.equal(OFFICIAL.tensorboard, true);
  for (const flags of [PRETRAIN_FLAGS, LINCLS_FLAGS]) {
    const off = parseCommand<{ tensorboard: boolean }>(
      ["--no-tensorboard"],
      flags,
    );
    assert.equal(off.given.tensorboard, false);
    assert.equal(
      parseCommand<{ tensorboard: boolean }>(["--tensorboard"], flags).given
        .tensorboard,
      true,
    );
  }
});
