/**
 * The parallel loader: a pool of Deno Workers decodes and augments batches
 * that arrive as float32 NCHW arrays with their labels, transferred without
 * copying, shuffled per epoch from the seed, several batches in flight.
 *
 * Determinism: the order of epoch e is a permutation drawn from
 * `Generator(seed, e, -1)`, and sample i's views in epoch e are drawn from
 * `Generator(seed, e, i)`, whichever worker makes them. Batches therefore do
 * not depend on the number of workers, or on whether there are any.
 *
 * Unreadable images: a sample whose file cannot be read or decoded is
 * replaced, so that every batch keeps its size (as training with `dropLast`
 * expects). The replacement for sample i is drawn deterministically: index
 * `Generator(seed, e, i, a).integer(0, length)` for attempt a = 1, 2, ...,
 * augmented with `Generator(seed, e, i, a)`. Each epoch ends with a summary
 * naming every skipped file.
 *
 * @module
 */

import { tensor, type TensorOptions } from "../nn/creation.ts";
import { Generator } from "../nn/random.ts";
import type { Tensor } from "../nn/tensor.ts";
import type { Dataset, SampleSource } from "./dataset.ts";
import {
  type JpegDecoder,
  noteJpegFallback,
  resolveJpegDecoder,
  sniffFormat,
} from "./decode.ts";
import { turboJpegMissing } from "./turbojpeg.ts";
import type { ViewRecipe } from "./pipelines.ts";
import { shardLength, shardOrder, type ShardTail } from "./sampler.ts";
import {
  type BatchJob,
  type BatchResult,
  BatchRunner,
  type SampleJob,
  sharedClock,
} from "./task.ts";

/** Options of {@link DataLoader}. */
export interface DataLoaderOptions {
  dataset: Dataset;
  /** The view pipelines: one view per recipe (two for MEC pretraining). */
  views: ViewRecipe[];
  batchSize: number;
  /** Seeds the shuffling and the augmentations (default 0). */
  seed?: number;
  /** Visit the samples in a new random order each epoch (default true). */
  shuffle?: boolean;
  /** Drop the last batch when it would be smaller (default true). */
  dropLast?: boolean;
  /** Worker threads; 0 runs everything in this thread (default 0). */
  workers?: number;
  /** Batches in flight per worker (default 2, as PyTorch's prefetch_factor). */
  prefetch?: number;
  /** Called with each epoch's summary once its last batch is handed out. */
  onEpochEnd?: (summary: EpochSummary) => void;
  /**
   * This rank's share of each epoch in a data-parallel run: PyTorch's
   * `DistributedSampler` over the epoch's order (see data/sampler.ts), with
   * `batchSize` the per-rank batch. The tail (see data/sampler.ts) is
   * dropped by default with `dropLast`, so that every rank has as many
   * batches as one process with the global batch, and padded without, so
   * that every rank's batches have the same sizes; "uneven" (for
   * evaluation) visits each sample once. Omitted: the whole epoch.
   */
  shard?: { rank: number; size: number; tail?: ShardTail };
  /**
   * The JPEG decoder (default "auto": TurboJPEG where libturbojpeg loads,
   * otherwise jpeg-js, said once on stderr when the first JPEG is met).
   * Resolved once here, so every worker uses the same one.
   */
  jpeg?: JpegDecoder;
  /**
   * Decode each JPEG at 1/2, 1/4 or 1/8 of its size when every view's crop
   * is at least that much larger than the view (libjpeg's DCT scaling, see
   * data/fast_decode.ts): several times less decoding and resampling for
   * large photographs, slightly different pixels. Needs TurboJPEG.
   * Default false.
   */
  fastDecode?: boolean;
}

/** One batch: each view as float32 NCHW, and the samples' labels. */
export interface Batch {
  epoch: number;
  /** The batch's number within the epoch. */
  index: number;
  /** The dataset indices of the samples (replacements included). */
  indices: Int32Array;
  labels: Int32Array;
  /** One array per view recipe, `shapes[k]` = [n, 3, size, size]. */
  views: Float32Array[];
  shapes: [number, number, number, number][];
}

/** A sample that could not be read or decoded, and what took its place. */
export interface SkippedSample {
  index: number;
  name: string;
  reason: string;
  /** The index of the sample used instead. */
  replacement: number;
}

/** Where the loader's time went, in milliseconds summed over threads. */
export interface LoaderTiming {
  /** Reading files (main thread, asynchronous, overlapping the rest). */
  readMs: number;
  /** Decoding images (workers). */
  decodeMs: number;
  /** Augmenting (workers). */
  augmentMs: number;
  /**
   * Handing jobs to the workers and batches back: from posting a job to
   * the worker starting it, and from the worker finishing to the main
   * thread taking the batch (which waits while the main thread is busy).
   * Zero without workers.
   */
  transferMs: number;
  /** Time the consumer waited for a batch. */
  waitMs: number;
}

/**
 * One line for a log saying where the loader's time went in an epoch of
 * `samples` images that took `seconds`, and how many cores its decoding
 * and augmenting kept busy.
 */
export function formatLoaderTiming(
  timing: LoaderTiming,
  samples: number,
  seconds: number,
): string {
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  const per = (ms: number) =>
    samples > 0 ? ` (${(ms / samples).toFixed(2)} ms/image)` : "";
  const work = (timing.decodeMs + timing.augmentMs) / 1000;
  const busy = seconds > 0 ? `, ${(work / seconds).toFixed(1)} cores busy` : "";
  return `loader: read ${s(timing.readMs)}, decode ${s(timing.decodeMs)}${
    per(timing.decodeMs)
  }, augment ${s(timing.augmentMs)}${per(timing.augmentMs)}, transfer ${
    s(timing.transferMs)
  }${busy}; training waited ${s(timing.waitMs)} for data`;
}

/** What happened in one epoch. */
export interface EpochSummary {
  epoch: number;
  batches: number;
  samples: number;
  /** Skipped samples in index order. */
  skipped: SkippedSample[];
  timing: LoaderTiming;
}

/**
 * One line for a log: the epoch's unreadable files, each named once (a
 * file can be skipped more than once in an epoch, as itself and as a
 * drawn replacement), or that there were none.
 */
export function formatEpochSummary(summary: EpochSummary): string {
  const { epoch, skipped } = summary;
  if (skipped.length === 0) {
    return `epoch ${epoch}: ${summary.samples} images, none skipped`;
  }
  const files = unreadableFiles(summary);
  const list = files.map((s) => `${s.name} (${s.reason})`).join(", ");
  const times = skipped.length === files.length
    ? ""
    : ` (${skipped.length} samples replaced)`;
  return `epoch ${epoch}: skipped ${files.length} unreadable image${
    files.length === 1 ? "" : "s"
  }${times}: ${list}`;
}

/** The distinct unreadable samples of an epoch, in index order, with the first reason. */
export function unreadableFiles(
  summary: EpochSummary,
): { index: number; name: string; reason: string }[] {
  const seen = new Map<
    number,
    { index: number; name: string; reason: string }
  >();
  for (const s of summary.skipped) {
    if (!seen.has(s.index)) {
      seen.set(s.index, { index: s.index, name: s.name, reason: s.reason });
    }
  }
  return [...seen.values()].sort((a, b) => a.index - b.index);
}

/** The views of a batch as tensors (copied to the device). */
export function batchTensors(
  batch: Batch,
  options: TensorOptions = {},
): Tensor[] {
  return batch.views.map((v, k) => tensor(v, batch.shapes[k], options));
}

/** Replacement draws per unreadable sample before giving up. */
const MAX_ATTEMPTS = 10;

/** A job waiting for or running on a worker. */
interface Pending {
  job: BatchJob;
  transfer: Transferable[];
  resolve: (result: BatchResult) => void;
  reject: (error: Error) => void;
}

type WorkerReply =
  | { ok: true; result: BatchResult }
  | { ok: false; id: number; message: string };

/** Workers that take one job at a time from a shared queue. */
class WorkerPool {
  #idle: Worker[] = [];
  #all: Worker[] = [];
  #queue: Pending[] = [];
  #running = new Map<Worker, Pending>();
  #closed = false;

  constructor(count: number) {
    const url = new URL("./worker.ts", import.meta.url).href;
    for (let i = 0; i < count; i++) {
      const worker = new Worker(url, { type: "module" });
      worker.onmessage = (event: MessageEvent<WorkerReply>) =>
        this.#reply(worker, event.data);
      worker.onerror = (event: ErrorEvent) => {
        event.preventDefault();
        this.#fail(new Error(`a data worker failed: ${event.message}`));
      };
      this.#all.push(worker);
      this.#idle.push(worker);
    }
  }

  run(job: BatchJob, transfer: Transferable[]): Promise<BatchResult> {
    if (this.#closed) {
      return Promise.reject(new Error("the data loader is closed"));
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ job, transfer, resolve, reject });
      this.#dispatch();
    });
  }

  #dispatch(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop()!;
      const pending = this.#queue.shift()!;
      this.#running.set(worker, pending);
      pending.job.postedAt = sharedClock();
      worker.postMessage(pending.job, pending.transfer);
    }
  }

  #reply(worker: Worker, reply: WorkerReply): void {
    const pending = this.#running.get(worker);
    this.#running.delete(worker);
    this.#idle.push(worker);
    if (pending !== undefined) {
      if (reply.ok) pending.resolve(reply.result);
      else pending.reject(new Error(`a data worker failed: ${reply.message}`));
    }
    this.#dispatch();
  }

  #fail(error: Error): void {
    for (const pending of [...this.#running.values(), ...this.#queue]) {
      pending.reject(error);
    }
    this.#running.clear();
    this.#queue = [];
    this.close();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const worker of this.#all) worker.terminate();
    const error = new Error("the data loader was closed");
    for (const pending of [...this.#running.values(), ...this.#queue]) {
      pending.reject(error);
    }
    this.#running.clear();
    this.#queue = [];
  }
}

/**
 * Batches of augmented views from a dataset, epoch by epoch.
 *
 * ```ts ignore
 * await using loader = new DataLoader({
 *   dataset: await imageFolder("DATA/train"),
 *   views: mecViews(224),
 *   batchSize: 64,
 *   workers: 4,
 * });
 * for await (const batch of loader.epoch(0)) {
 *   const [x1, x2] = batchTensors(batch);
 *   // ... one training step ...
 *   loader.recycle(batch);
 * }
 * ```
 */
export class DataLoader {
  readonly dataset: Dataset;
  readonly views: ViewRecipe[];
  readonly batchSize: number;
  readonly seed: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  readonly workers: number;
  /** This rank's share of each epoch, or null for all of it. */
  readonly shard: { rank: number; size: number; tail: ShardTail } | null;
  /** The JPEG decoder every sample is decoded with. */
  readonly jpeg: "turbojpeg" | "jpeg-js";
  /** Whether JPEGs are decoded at a reduced size where the crops allow. */
  readonly fastDecode: boolean;
  /** The summary of the last finished epoch. */
  lastSummary: EpochSummary | null = null;
  #pool: WorkerPool | null;
  #runner: BatchRunner | null;
  #depth: number;
  #free: ArrayBuffer[][] = [];
  #onEpochEnd?: (summary: EpochSummary) => void;
  #nextJob = 0;
  /** Whether the first JPEG met should say that jpeg-js decodes it. */
  #noteFallback: boolean;

  constructor(options: DataLoaderOptions) {
    const { dataset, views, batchSize } = options;
    const workers = options.workers ?? 0;
    const prefetch = options.prefetch ?? 2;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new RangeError(
        `The batch size must be a positive integer, not ${batchSize}.`,
      );
    }
    if (!Number.isInteger(workers) || workers < 0) {
      throw new RangeError(
        `The number of workers must be 0 or more, not ${workers}.`,
      );
    }
    if (!Number.isInteger(prefetch) || prefetch < 1) {
      throw new RangeError(
        `The prefetch depth must be 1 or more, not ${prefetch}.`,
      );
    }
    if (views.length === 0) {
      throw new RangeError("The loader needs at least one view recipe.");
    }
    this.dataset = dataset;
    this.views = views;
    this.batchSize = batchSize;
    this.seed = options.seed ?? 0;
    this.shuffle = options.shuffle ?? true;
    this.dropLast = options.dropLast ?? true;
    this.workers = workers;
    this.shard = options.shard === undefined ? null : {
      ...options.shard,
      tail: options.shard.tail ?? (this.dropLast ? "drop" : "pad"),
    };
    if (this.shard !== null) {
      shardOrder(new Int32Array(0), this.shard.rank, this.shard.size);
    }
    this.jpeg = resolveJpegDecoder(options.jpeg, true);
    this.#noteFallback = (options.jpeg ?? "auto") === "auto" &&
      this.jpeg === "jpeg-js";
    this.fastDecode = options.fastDecode ?? false;
    if (this.fastDecode && this.jpeg !== "turbojpeg") {
      throw new RangeError(
        `Fast decoding needs TurboJPEG's DCT scaling, but JPEGs are decoded with jpeg-js${
          options.jpeg === "jpeg-js" ? " as asked" : ` (${turboJpegMissing()})`
        }.`,
      );
    }
    this.#onEpochEnd = options.onEpochEnd;
    this.#depth = Math.max(1, workers) * prefetch;
    if (this.length === 0) {
      throw new RangeError(
        `The dataset's ${dataset.length} samples make no batch of ${batchSize}.`,
      );
    }
    // Started last, so that no bad option leaves workers running.
    this.#pool = workers > 0 ? new WorkerPool(workers) : null;
    this.#runner = workers > 0 ? null : new BatchRunner();
  }

  /** Batches per epoch (of this rank's shard when there is one). */
  get length(): number {
    const samples = this.shard === null ? this.dataset.length : shardLength(
      this.dataset.length,
      this.shard.size,
      this.shard.tail,
      this.shard.rank,
    );
    const n = samples / this.batchSize;
    return this.dropLast ? Math.floor(n) : Math.ceil(n);
  }

  /**
   * The order in which epoch `epoch` visits the samples: a permutation of
   * the dataset, or this rank's shard of it.
   */
  order(epoch: number): Int32Array {
    const all = this.shuffle
      ? new Generator(this.seed, epoch, -1).permutation(this.dataset.length)
      : Int32Array.from({ length: this.dataset.length }, (_, i) => i);
    return this.shard === null
      ? all
      : shardOrder(all, this.shard.rank, this.shard.size, this.shard.tail);
  }

  /**
   * The batches of one epoch, in order. The summary (also passed to
   * `onEpochEnd` and kept in `lastSummary`) is the generator's return value.
   * `start` skips the epoch's first batches without making them, so that a
   * run interrupted mid-epoch resumes with the very batches it would have
   * seen (each batch depends only on the seed, the epoch and its position).
   */
  async *epoch(epoch: number, start = 0): AsyncGenerator<Batch, EpochSummary> {
    const order = this.order(epoch);
    const count = this.length;
    if (!Number.isInteger(start) || start < 0 || start > count) {
      throw new RangeError(
        `The first batch must be in 0..${count}, not ${start}.`,
      );
    }
    const skipped: SkippedSample[] = [];
    const timing: LoaderTiming = {
      readMs: 0,
      decodeMs: 0,
      augmentMs: 0,
      transferMs: 0,
      waitMs: 0,
    };
    const inFlight: Promise<Batch>[] = [];
    let next = start;
    const launch = () => {
      const promise = this.#batch(epoch, order, next++, skipped, timing);
      // Handled here so that a batch abandoned by an early `break` does not
      // surface as an unhandled rejection; awaiting it still throws.
      promise.catch(() => {});
      inFlight.push(promise);
    };
    let samples = 0;
    while (next < count && inFlight.length < this.#depth) launch();
    for (let b = start; b < count; b++) {
      const t0 = performance.now();
      const batch = await inFlight.shift()!;
      timing.waitMs += performance.now() - t0;
      if (next < count) launch();
      samples += batch.indices.length;
      yield batch;
    }
    skipped.sort((a, b) => a.index - b.index || a.replacement - b.replacement);
    const summary: EpochSummary = {
      epoch,
      batches: count - start,
      samples,
      skipped,
      timing,
    };
    this.lastSummary = summary;
    this.#onEpochEnd?.(summary);
    return summary;
  }

  /**
   * Gives a batch's arrays back for reuse by a later batch, which saves
   * allocating (and page-faulting) fresh memory; the batch must not be used
   * afterwards.
   */
  recycle(batch: Batch): void {
    if (this.#free.length < this.#depth + 1) {
      this.#free.push(batch.views.map((v) => v.buffer as ArrayBuffer));
    }
  }

  /** Stops the workers; pending batches are rejected. */
  close(): Promise<void> {
    this.#pool?.close();
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #job(slots: number, samples: SampleJob[], buffers: ArrayBuffer[]): BatchJob {
    return {
      id: this.#nextJob++,
      seed: this.seed,
      views: this.views,
      jpeg: this.jpeg,
      fastDecode: this.fastDecode,
      postedAt: 0,
      slots,
      samples,
      buffers,
    };
  }

  #run(job: BatchJob, transfer: Transferable[]): Promise<BatchResult> {
    if (
      this.#noteFallback &&
      job.samples.some((s) =>
        s.source.kind === "encoded" && sniffFormat(s.source.bytes) === "jpeg"
      )
    ) {
      this.#noteFallback = false;
      noteJpegFallback();
    }
    if (this.#pool !== null) return this.#pool.run(job, transfer);
    const runner = this.#runner!;
    return Promise.resolve().then(() => runner.run(job));
  }

  async #batch(
    epoch: number,
    order: Int32Array,
    b: number,
    skipped: SkippedSample[],
    timing: LoaderTiming,
  ): Promise<Batch> {
    const { dataset } = this;
    const start = b * this.batchSize;
    const indices = order.slice(
      start,
      Math.min(start + this.batchSize, order.length),
    );
    const n = indices.length;
    const labels = Int32Array.from(indices, (i) => dataset.label(i));
    const t0 = performance.now();
    const sources = await Promise.allSettled(
      Array.from(indices, (i) => dataset.source(i)),
    );
    timing.readMs += performance.now() - t0;
    const samples: SampleJob[] = [];
    const failed: { slot: number; reason: string }[] = [];
    sources.forEach((s, slot) => {
      if (s.status === "fulfilled") {
        samples.push({ slot, key: [epoch, indices[slot]], source: s.value });
      } else {
        failed.push({ slot, reason: `cannot be read: ${errorText(s.reason)}` });
      }
    });
    const buffers = this.#free.pop() ?? [];
    const job = this.#job(n, samples, buffers);
    const result = await this.#run(
      job,
      [...samples.flatMap((s) => transferable(s.source)), ...buffers],
    );
    addTiming(timing, job, result);
    failed.push(...result.failures);
    for (const { slot, reason } of failed) {
      await this.#replace(
        epoch,
        indices,
        labels,
        result.views,
        slot,
        reason,
        skipped,
        timing,
      );
    }
    return {
      epoch,
      index: b,
      indices,
      labels,
      views: result.views,
      shapes: this.views.map((v) => [n, 3, v.size, v.size]),
    };
  }

  /** Fills a failed slot with a deterministically drawn readable sample. */
  async #replace(
    epoch: number,
    indices: Int32Array,
    labels: Int32Array,
    views: Float32Array[],
    slot: number,
    firstReason: string,
    skipped: SkippedSample[],
    timing: LoaderTiming,
  ): Promise<void> {
    const { dataset } = this;
    const original = indices[slot];
    let bad = original;
    let reason = firstReason;
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const candidate = new Generator(this.seed, epoch, original, attempt)
        .integer(0, dataset.length);
      skipped.push({
        index: bad,
        name: dataset.name(bad),
        reason,
        replacement: candidate,
      });
      const key = [epoch, original, attempt];
      let source: SampleSource;
      try {
        source = await dataset.source(candidate);
      } catch (e) {
        bad = candidate;
        reason = `cannot be read: ${errorText(e)}`;
        continue;
      }
      const job = this.#job(1, [{ slot: 0, key, source }], []);
      const result = await this.#run(job, transferable(source));
      addTiming(timing, job, result);
      if (result.failures.length > 0) {
        bad = candidate;
        reason = result.failures[0].reason;
        continue;
      }
      this.views.forEach((v, k) => {
        const size = 3 * v.size * v.size;
        views[k].set(result.views[k], slot * size);
      });
      indices[slot] = candidate;
      labels[slot] = dataset.label(candidate);
      return;
    }
    throw new Error(
      `No readable image replaced ${
        dataset.name(original)
      } in ${MAX_ATTEMPTS} draws; most of the dataset seems unreadable.`,
    );
  }
}

/** The buffers of a source that can move to a worker instead of being copied. */
function transferable(source: SampleSource): ArrayBuffer[] {
  const bytes = source.kind === "encoded"
    ? source.bytes
    : source.kind === "pixels"
    ? source.image.data
    : null;
  // Only a buffer the array owns whole can move; a view into a shared one
  // (an in-memory dataset's slice) is copied by the structured clone.
  if (
    bytes !== null && bytes.buffer instanceof ArrayBuffer &&
    bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
  ) {
    return [bytes.buffer];
  }
  return [];
}

/** Adds a finished job's times to the epoch's. */
function addTiming(
  timing: LoaderTiming,
  job: BatchJob,
  result: BatchResult,
): void {
  timing.decodeMs += result.decodeMs;
  timing.augmentMs += result.augmentMs;
  // Posted to a worker (the in-thread runner has no hand-over).
  if (job.postedAt > 0) {
    timing.transferMs += Math.max(0, result.startedAt - job.postedAt) +
      Math.max(0, sharedClock() - result.finishedAt);
  }
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
