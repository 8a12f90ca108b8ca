/**
 * Progress for the tools, shared so that no tool copies another's meters:
 * running averages (PyTorch's ImageNet example's AverageMeter), a timer that
 * splits each step into data wait and compute, the human-readable progress
 * line, and the JSON-lines log (with its scalars in a TensorBoard event
 * file beside it).
 *
 * @module
 */

import { join } from "node:path";
import { appendWhole, errorText } from "./append.ts";
import { EventFile, type ScalarsOf } from "./tensorboard.ts";

/** Current value, sum, count and average of a quantity. */
export class AverageMeter {
  value = 0;
  sum = 0;
  count = 0;

  update(value: number, n = 1): void {
    this.value = value;
    this.sum += value * n;
    this.count += n;
  }

  get average(): number {
    return this.count === 0 ? 0 : this.sum / this.count;
  }

  reset(): void {
    this.value = this.sum = this.count = 0;
  }
}

/** "1h02m", "4m05s", "12s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

/**
 * Throughput at steady state: the first `skip` steps (allocation, kernel
 * choice, workers warming up) are left out of the averages.
 */
export class StepTimer {
  readonly batchTime = new AverageMeter();
  readonly dataTime = new AverageMeter();
  #steady = { seconds: 0, dataSeconds: 0, images: 0, steps: 0 };
  #steps = 0;

  constructor(readonly skip = 3) {}

  /** Records one step: its total and data-wait seconds and its images. */
  record(seconds: number, dataSeconds: number, images: number): void {
    this.batchTime.update(seconds);
    this.dataTime.update(dataSeconds);
    if (this.#steps++ >= this.skip) {
      this.#steady.seconds += seconds;
      this.#steady.dataSeconds += dataSeconds;
      this.#steady.images += images;
      this.#steady.steps++;
    }
  }

  /** Steady-state images per second and share of time spent waiting for data. */
  steady(): { imagesPerSecond: number; dataShare: number; steps: number } {
    const s = this.#steady;
    return {
      imagesPerSecond: s.seconds > 0 ? s.images / s.seconds : 0,
      dataShare: s.seconds > 0 ? s.dataSeconds / s.seconds : 0,
      steps: s.steps,
    };
  }
}

/** Options of {@link JsonLog.open}. */
export interface JsonLogOptions {
  /** The log's file name (default `log.jsonl`). */
  name?: string;
  /**
   * Also write each record's scalars (as `scalars` picks them) to a new
   * TensorBoard event file in the folder; `startStep` is the step this
   * process starts at (see EventFile in tensorboard.ts).
   */
  tensorboard?: { scalars: ScalarsOf; startStep: number } | null;
}

/**
 * One JSON object per line, appended to `<dir>/<name>`. The file only ever
 * holds whole records: each is written with one write call, and a write
 * that fails or stops short (a full disk) is cut back to the last whole
 * record before the error, which names the file, is thrown. A half record
 * left by a process killed mid-write is cut off when the log is reopened.
 * With `tensorboard`, the records' scalars also go to an event file.
 */
export class JsonLog {
  readonly path: string;
  #file: Deno.FsFile;
  #encoder = new TextEncoder();
  /** Bytes of whole records in the file. */
  #length: number;
  #events: { file: EventFile; scalars: ScalarsOf } | null;

  private constructor(
    path: string,
    file: Deno.FsFile,
    length: number,
    events: { file: EventFile; scalars: ScalarsOf } | null,
  ) {
    this.path = path;
    this.#file = file;
    this.#length = length;
    this.#events = events;
  }

  /** The TensorBoard event file's path, or null when there is none. */
  get eventFile(): string | null {
    return this.#events?.file.path ?? null;
  }

  /** Opens (creating the folder, appending to an existing log). */
  static async open(
    dir: string,
    options: JsonLogOptions = {},
  ): Promise<JsonLog> {
    await Deno.mkdir(dir, { recursive: true });
    const path = join(dir, options.name ?? "log.jsonl");
    let file: Deno.FsFile;
    let length: number;
    try {
      file = await Deno.open(path, {
        create: true,
        append: true,
        read: true,
      });
      length = await wholeRecords(file);
    } catch (e) {
      throw new Error(`cannot open the log ${path}: ${errorText(e)}`, {
        cause: e,
      });
    }
    const tb = options.tensorboard;
    if (tb === undefined || tb === null) {
      return new JsonLog(path, file, length, null);
    }
    try {
      const events = await EventFile.open(dir, { startStep: tb.startStep });
      return new JsonLog(path, file, length, {
        file: events,
        scalars: tb.scalars,
      });
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Writes one record, whole, or throws naming the file and leaves none of it. */
  write(record: Record<string, unknown>): void {
    const bytes = this.#encoder.encode(JSON.stringify(record) + "\n");
    appendWhole(this.#file, bytes, this.#length, `the log ${this.path}`);
    this.#length += bytes.length;
    if (this.#events !== null) {
      const scalars = this.#events.scalars(record);
      if (scalars !== null) {
        this.#events.file.scalars(scalars.step, scalars.values);
      }
    }
  }

  close(): void {
    this.#file.close();
    this.#events?.file.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The length of the file's whole records: up to and including its last
 * newline. Anything after it (half a record) is cut off.
 */
async function wholeRecords(file: Deno.FsFile): Promise<number> {
  const size = (await file.stat()).size;
  const chunk = new Uint8Array(64 * 1024);
  let end = size;
  while (end > 0) {
    const start = Math.max(0, end - chunk.length);
    await file.seek(start, Deno.SeekMode.Start);
    const part = chunk.subarray(0, end - start);
    let done = 0;
    while (done < part.length) {
      const n = await file.read(part.subarray(done));
      if (n === null) break;
      done += n;
    }
    const last = part.subarray(0, done).lastIndexOf(0x0a);
    if (last >= 0) {
      end = start + last + 1;
      break;
    }
    end = start;
  }
  if (end < size) await file.truncate(end);
  return end;
}

/** A number with `digits` significant digits, without exponent for common sizes. */
export function fmt(x: number, digits = 4): string {
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 1e5) {
    const s = x.toPrecision(digits);
    return s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  }
  return x.toExponential(digits - 1);
}

/**
 * The progress line both tools print, as PyTorch's ImageNet example does:
 * `Epoch: [e][i/n]` then the fields, two spaces apart; `i` is padded to the
 * width of `n` so that the columns line up.
 */
export function progressLine(
  epoch: number,
  index: number,
  count: number,
  fields: readonly string[],
): string {
  const i = String(index).padStart(String(count).length);
  return [`Epoch: [${epoch}][${i}/${count}]`, ...fields].join("  ");
}
