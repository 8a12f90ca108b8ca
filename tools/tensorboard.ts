/**
 * TensorBoard event files, written without TensorFlow: `tensorboard
 * --logdir runs` shows the scalars a run folder's event file holds.
 *
 * The format: a TFRecord file (each record is its length as a
 * little-endian uint64, the masked CRC32C of those 8 bytes, the data, and
 * the data's masked CRC32C) whose records are `tensorflow.Event` protocol
 * buffers. The first event carries the file version, `brain.Event:2`; each
 * later one a `Summary` of simple (float) scalar values at one step.
 *
 * Protocol buffers are encoded by protobufjs, the most used protobuf
 * library for JavaScript, from the schema below, which is TensorFlow's own
 * (`tensorflow/core/util/event.proto`, `.../framework/summary.proto`)
 * restricted to the fields written here, with their field numbers. CRC32C
 * comes from SheetJS's `crc-32` package (its `crc32c.js`): plain
 * JavaScript, table-driven, without dependencies, where the other CRC32C
 * packages bring a native addon or a cloud SDK's type packages.
 *
 * @module
 */

import { join } from "node:path";
import protobuf from "protobufjs";
import CRC32C from "crc-32/crc32c.js";
import { appendWhole, errorText } from "./append.ts";

/** TensorFlow's event and summary messages, the fields this file writes. */
const SCHEMA = `
syntax = "proto3";
package tensorflow;

message Event {
  double wall_time = 1;
  int64 step = 2;
  oneof what {
    string file_version = 3;
    Summary summary = 5;
    SessionLog session_log = 7;
  }
}

message SessionLog {
  enum SessionStatus {
    STATUS_UNSPECIFIED = 0;
    START = 1;
    STOP = 2;
    CHECKPOINT = 3;
  }
  SessionStatus status = 1;
  string checkpoint_path = 2;
  string msg = 3;
}

message Summary {
  message Value {
    string node_name = 7;
    string tag = 1;
    oneof value {
      float simple_value = 2;
    }
  }
  repeated Value value = 1;
}
`;

const EVENT = protobuf.parse(SCHEMA).root.lookupType("tensorflow.Event");

/** The version string TensorBoard expects in a file's first event. */
export const FILE_VERSION = "brain.Event:2";

/** TFRecord's masked CRC32C: the CRC rotated right by 15 bits plus a constant. */
export function maskedCrc32c(data: Uint8Array): number {
  const crc = CRC32C.buf(data) >>> 0;
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: length, length's masked CRC, data, data's masked CRC. */
export function tfRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

/** One event, as a `tensorflow.Event` message's bytes. */
export type EventBody =
  | { fileVersion: string }
  | { summary: { value: { tag: string; simpleValue: number }[] } }
  | { sessionLog: { status: "START" | "STOP" | "CHECKPOINT" } };

/** The protobuf bytes of an event at a step and wall time (seconds). */
export function encodeEvent(
  wallTime: number,
  step: number,
  body: EventBody,
): Uint8Array {
  const message = EVENT.fromObject({ wallTime, step, ...body });
  return EVENT.encode(message).finish();
}

/**
 * The file name TensorFlow's event writer gives: `events.out.tfevents.`,
 * the creation time in whole seconds (ten digits) and the host name.
 */
export function eventFileName(seconds: number, host: string): string {
  return `events.out.tfevents.${
    String(Math.floor(seconds)).padStart(10, "0")
  }.${host}`;
}

/** Whether a file name is an event file's, as {@link eventFileName} names them. */
export function isEventFile(name: string): boolean {
  return name.startsWith("events.out.tfevents.");
}

/** Options of {@link EventFile.open}. */
export interface EventFileOptions {
  /**
   * The step this process starts at (an iteration; 0 for a fresh run).
   * A `SessionLog.START` event there tells TensorBoard that the run
   * restarted, so that it drops what an earlier process of the run logged
   * from that step on (the steps a resumed run repeats).
   */
  startStep?: number;
  /** Wall clock in seconds since 1970 (default: the system's). */
  now?: () => number;
  /** The host name in the file's name (default: this machine's). */
  host?: string;
}

/**
 * A new event file in a run folder, one per process start as TensorFlow
 * does: a resumed run adds a file beside the earlier ones instead of
 * appending to one that a killed process may have left with half a record.
 * Each event is written with one write call as soon as it is given, so a
 * crash loses at most the event being written.
 */
export class EventFile {
  readonly path: string;
  #file: Deno.FsFile;
  #now: () => number;
  /** Bytes of whole records in the file. */
  #length = 0;

  private constructor(path: string, file: Deno.FsFile, now: () => number) {
    this.path = path;
    this.#file = file;
    this.#now = now;
  }

  /** Creates the folder and a new event file in it, with its version event. */
  static async open(
    dir: string,
    options: EventFileOptions = {},
  ): Promise<EventFile> {
    const now = options.now ?? (() => Date.now() / 1000);
    const host = options.host ?? hostName();
    await Deno.mkdir(dir, { recursive: true });
    const base = eventFileName(now(), host);
    // Two processes started in the same second (a quick resume) must not
    // share a file: the later one takes the next free suffix.
    for (let n = 0;; n++) {
      const path = join(dir, n === 0 ? base : `${base}.${n}`);
      let file: Deno.FsFile;
      try {
        file = await Deno.open(path, { append: true, createNew: true });
      } catch (e) {
        if (e instanceof Deno.errors.AlreadyExists) continue;
        throw new Error(
          `cannot create the event file ${path}: ${errorText(e)}`,
          { cause: e },
        );
      }
      const events = new EventFile(path, file, now);
      events.#write(0, { fileVersion: FILE_VERSION });
      events.#write(options.startStep ?? 0, {
        sessionLog: { status: "START" },
      });
      return events;
    }
  }

  /**
   * Writes scalars at a step (an iteration, or an epoch for per-epoch
   * values) as one event. Tags name what they are, `train/loss` say;
   * TensorBoard groups them by the part before the slash.
   */
  scalars(step: number, values: Record<string, number>): void {
    const value = Object.entries(values).map(([tag, simpleValue]) => ({
      tag,
      simpleValue,
    }));
    if (value.length > 0) this.#write(step, { summary: { value } });
  }

  #write(step: number, body: EventBody): void {
    const bytes = tfRecord(encodeEvent(this.#now(), step, body));
    appendWhole(this.#file, bytes, this.#length, `the event file ${this.path}`);
    this.#length += bytes.length;
  }

  close(): void {
    this.#file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A log record's scalars for TensorBoard and their step, or null for none. */
export type ScalarsOf = (
  record: Record<string, unknown>,
) => { step: number; values: Record<string, number> } | null;

/**
 * Pretraining's scalars, step = iteration: each step's loss, MEC, the
 * schedules (lr, λ⁻¹, teacher momentum), images/s and the share of the
 * step spent waiting for data; the kNN monitor's top-1 where it runs.
 */
export const PRETRAIN_SCALARS: ScalarsOf = (r) => {
  const step = r.iteration;
  if (typeof step !== "number") return null;
  if (r.event === "step") {
    return {
      step,
      values: numbers({
        "train/loss": r.loss,
        "train/mec": r.mec,
        "train/lr": r.lr,
        "train/lambda_inv": r.lambdaInv ?? r.lamdaInv,
        "train/teacher_momentum": r.teacherMomentum,
        "train/images_per_s": r.imagesPerSecond,
        "train/data_wait": typeof r.data === "number" &&
            typeof r.time === "number" && r.time > 0
          ? r.data / r.time
          : undefined,
      }),
    };
  }
  if (r.event === "knn") {
    return { step, values: numbers({ "knn/top1": r.top1 ?? r.acc1 }) };
  }
  return null;
};

/**
 * The probe's scalars, once per epoch at step = epochs done: the epoch's
 * mean training loss, its lr, and top-1 and top-k on the validation split
 * (k = 5, or the number of classes where fewer); `probe/test_top1` and
 * `_top<k>` where the final probe is also measured on a test split.
 */
export const PROBE_SCALARS: ScalarsOf = (r) => {
  if (typeof r.epoch !== "number") return null;
  // The final probe measured once on a held-out test split (the demo).
  const prefix = r.event === "eval"
    ? "probe/"
    : r.event === "test"
    ? "probe/test_"
    : null;
  if (prefix === null) return null;
  const values: Record<string, unknown> = r.event === "eval"
    ? { "probe/loss": r.loss, "probe/lr": r.lr }
    : {};
  for (const [key, value] of Object.entries(r)) {
    const k = /^acc(\d+)$/.exec(key)?.[1];
    if (k !== undefined) values[`${prefix}top${k}`] = value;
  }
  return { step: r.epoch + 1, values: numbers(values) };
};

/** The entries whose values are numbers. */
function numbers(values: Record<string, unknown>): Record<string, number> {
  return Object.fromEntries(
    Object.entries(values).filter(([, v]) => typeof v === "number"),
  ) as Record<string, number>;
}

/**
 * This machine's name, as the file name carries it; "localhost" where the
 * process may not ask (no `--allow-sys=hostname`), rather than a prompt.
 */
function hostName(): string {
  const sys = { name: "sys", kind: "hostname" } as const;
  if (Deno.permissions.querySync(sys).state !== "granted") return "localhost";
  return Deno.hostname();
}
