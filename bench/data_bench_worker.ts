/**
 * A worker of bench/data_bench.ts: decodes a JPEG (and makes MEC's two
 * views of it) a given number of times and says how long that took, so
 * that several of them running at once measure the rate per core on that
 * many cores.
 *
 * @module
 */

import { decodeImage, DecodeScratch } from "../data/decode.ts";
import { applyView, mecViews, ViewScratch } from "../data/pipelines.ts";
import { Generator } from "../nn/random.ts";

/** What the bench asks of a worker. */
export interface BenchJob {
  bytes: Uint8Array;
  jpeg: "turbojpeg" | "jpeg-js";
  /** Also make the two 224-pixel views of each decode. */
  views: boolean;
  images: number;
}

interface WorkerScope {
  onmessage: ((event: MessageEvent<BenchJob>) => void) | null;
  postMessage(message: unknown): void;
}

const scope = globalThis as unknown as WorkerScope;
const decoded = new DecodeScratch();
const scratch = new ViewScratch();
const [view1, view2] = mecViews(224);
const out = new Float32Array(3 * 224 * 224);

scope.onmessage = (event) => {
  const { bytes, jpeg, views, images } = event.data;
  const t0 = performance.now();
  for (let i = 0; i < images; i++) {
    const image = decodeImage(bytes, { jpeg, scratch: decoded });
    if (views) {
      // The same draws in every run, so that runs do the same work.
      const gen = new Generator(0, 0, i);
      applyView(image, view1, gen, out, 0, scratch);
      applyView(image, view2, gen, out, 0, scratch);
    }
  }
  scope.postMessage(performance.now() - t0);
};
