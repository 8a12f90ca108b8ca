/**
 * The work of one batch, shared by the loader's workers and its in-thread
 * mode: turn each sample's source into pixels, draw its augmentations from
 * `new Generator(seed, ...key)` and write every view into the batch's
 * arrays. A sample that cannot be decoded is reported, not fatal.
 *
 * @module
 */

import { Generator } from "../nn/random.ts";
import type { SampleSource } from "./dataset.ts";
import {
  type DctShrink,
  DecodeError,
  decodeImage,
  DecodeScratch,
  type RgbImage,
} from "./decode.ts";
import { noiseBytes } from "./dummy.ts";
import { dctShrink, shrinkCrop } from "./fast_decode.ts";
import {
  drawView,
  renderView,
  type ViewDraw,
  type ViewRecipe,
  ViewScratch,
} from "./pipelines.ts";

/** One sample of a batch job. */
export interface SampleJob {
  /** Its position in the batch. */
  slot: number;
  /** The generator keys after the seed: `[epoch, index]`, or with an attempt. */
  key: number[];
  source: SampleSource;
}

/** A batch (or part of one) to produce. */
export interface BatchJob {
  id: number;
  seed: number;
  views: ViewRecipe[];
  /** The JPEG decoder, as the loader resolved it. */
  jpeg: "turbojpeg" | "jpeg-js";
  /**
   * Decode JPEGs at a reduced size where every view's crop allows it
   * (data/fast_decode.ts; TurboJPEG only).
   */
  fastDecode: boolean;
  /** When the job was posted (`performance.timeOrigin + now()`, ms). */
  postedAt: number;
  /** The batch size: each view's array holds this many samples. */
  slots: number;
  samples: SampleJob[];
  /** Arrays to reuse for the views (transferred in), if the sizes match. */
  buffers: ArrayBuffer[];
}

/** A sample that could not be used. */
export interface SampleFailure {
  slot: number;
  reason: string;
}

/** What a job produced, and where its time went. */
export interface BatchResult {
  id: number;
  /** One float32 NCHW array per view. */
  views: Float32Array[];
  failures: SampleFailure[];
  /** Milliseconds spent decoding (or making) images. */
  decodeMs: number;
  /** Milliseconds spent augmenting. */
  augmentMs: number;
  /**
   * When the thread that ran the job started and finished it
   * (`performance.timeOrigin + now()`, ms, a clock that threads share), so
   * that the loader can time the hand-over in both directions.
   */
  startedAt: number;
  finishedAt: number;
}

/** A clock that every thread of the process reads alike, in ms. */
export function sharedClock(): number {
  return performance.timeOrigin + performance.now();
}

/** Runs batch jobs with buffers kept between jobs (one per thread). */
export class BatchRunner {
  #scratch = new ViewScratch();
  /** Each sample's pixels, used up by its views before the next decode. */
  #decoded = new DecodeScratch();

  run(job: BatchJob): BatchResult {
    const startedAt = sharedClock();
    const sizes = job.views.map((v) => 3 * v.size * v.size);
    const views = sizes.map((size, k) => {
      const reuse = job.buffers[k];
      return reuse !== undefined && reuse.byteLength === 4 * size * job.slots
        ? new Float32Array(reuse)
        : new Float32Array(size * job.slots);
    });
    const failures: SampleFailure[] = [];
    let decodeMs = 0;
    let augmentMs = 0;
    for (const sample of job.samples) {
      const t0 = performance.now();
      const gen = new Generator(job.seed, ...sample.key);
      // The views' draws depend only on the full image's size, so with
      // fast decoding they are made once the header is read, and the
      // generator is used in the same order either way.
      let draws: ViewDraw[] | null = null;
      let shrink: DctShrink = 1;
      const drawAll = (width: number, height: number) =>
        job.views.map((v) => drawView({ width, height }, v, gen));
      const choose = job.fastDecode
        ? (width: number, height: number) => {
          draws = drawAll(width, height);
          shrink = dctShrink(draws);
          return shrink;
        }
        : undefined;
      let image: RgbImage;
      try {
        image = pixels(sample.source, job.jpeg, this.#decoded, choose);
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
        failures.push({ slot: sample.slot, reason: e.message });
        continue;
      }
      const t1 = performance.now();
      const made: ViewDraw[] = draws ?? drawAll(image.width, image.height);
      for (let k = 0; k < views.length; k++) {
        const draw = shrink === 1 ? made[k] : {
          ...made[k],
          crop: shrinkCrop(made[k].crop, shrink, image.width, image.height),
        };
        renderView(
          image,
          job.views[k],
          draw,
          views[k],
          sample.slot * sizes[k],
          this.#scratch,
        );
      }
      decodeMs += t1 - t0;
      augmentMs += performance.now() - t1;
    }
    return {
      id: job.id,
      views,
      failures,
      decodeMs,
      augmentMs,
      startedAt,
      finishedAt: sharedClock(),
    };
  }
}

function pixels(
  source: SampleSource,
  jpeg: "turbojpeg" | "jpeg-js",
  scratch: DecodeScratch,
  shrink?: (width: number, height: number) => DctShrink,
): RgbImage {
  switch (source.kind) {
    case "encoded":
      return decodeImage(source.bytes, { jpeg, scratch, shrink });
    case "pixels":
      return source.image;
    case "noise": {
      const { width, height, seed, index } = source;
      const data = noiseBytes(seed, index, new Uint8Array(width * height * 3));
      return { width, height, data };
    }
  }
}
