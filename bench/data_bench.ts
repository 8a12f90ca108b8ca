/**
 * Throughput of the data path on real photographs: JPEG decoding by each
 * decoder (jpeg-js, and TurboJPEG where libturbojpeg loads) on the
 * ImageNet-sized tests/fixtures/photo/coffee-500x375.jpg and on all the
 * committed photographs, MEC's two-view augmentation to 224 px, decode + two
 * views on one thread, and the whole loader (decode + two views + transfer)
 * with 1 and with 2 workers, for each decoder.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/data_bench.ts [--json]
 *
 * Prints images/s and ms per image for each case; with `--json`, one JSON
 * object per line (`{"name", "value", "unit"}`). torchvision's per-core
 * figures on the same kind of photograph (shared/reference/measured.md) are
 * in the case names: PIL decodes one in 1-1.6 ms (625-1000 images/s), and
 * its MEC view augmentation costs 11-15 ms per view, so decode + two views
 * runs at 31-43 images/s per core.
 *
 * @module
 */

import {
  decodeImage,
  DecodeScratch,
  type JpegDecoder,
} from "../data/decode.ts";
import { turboJpeg } from "../data/turbojpeg.ts";
import type { Dataset, SampleSource } from "../data/dataset.ts";
import { DataLoader } from "../data/loader.ts";
import { applyView, mecViews, ViewScratch } from "../data/pipelines.ts";
import { Generator } from "../nn/random.ts";

/** One timed workload: `run` processes `images` images. */
export interface DataCase {
  name: string;
  images: number;
  run: () => void | Promise<void>;
  /** Called once when the case is done (stops workers). */
  close?: () => Promise<void>;
}

const PHOTOS = new URL("../tests/fixtures/photo/", import.meta.url);
const PHOTO_URL = new URL("coffee-500x375.jpg", PHOTOS);

/** The committed photographs (each kind of JPEG once), larger than 5x3. */
function photoFiles(): Uint8Array[] {
  return [...Deno.readDirSync(PHOTOS)]
    .map((e) => e.name)
    .filter((n) => n.endsWith(".jpg") && !n.includes("5x3"))
    .sort()
    .map((n) => Deno.readFileSync(new URL(n, PHOTOS)));
}

/** The photo's file, served for every index as an ImageFolder would. */
class PhotoDataset implements Dataset {
  readonly classes = ["coffee"];
  constructor(readonly length: number, readonly bytes: Uint8Array) {}
  label(): number {
    return 0;
  }
  name(index: number): string {
    return `coffee[${index}]`;
  }
  source(): Promise<SampleSource> {
    // A fresh copy, as a file read would give, so it can be transferred.
    return Promise.resolve({ kind: "encoded", bytes: this.bytes.slice() });
  }
}

/** The data benchmark cases. */
export function dataCases(): DataCase[] {
  const bytes = Deno.readFileSync(PHOTO_URL);
  const photos = photoFiles();
  const image = decodeImage(bytes);
  const [view1, view2] = mecViews(224);
  const out = new Float32Array(3 * 224 * 224);
  const scratch = new ViewScratch();
  // Decodes reuse one output buffer, as the loader's workers do.
  const decoded = new DecodeScratch();
  let key = 0;
  const decoders: [JpegDecoder, string][] = [["jpeg-js", "jpeg-js"]];
  if (turboJpeg() !== null) decoders.push(["turbojpeg", "TurboJPEG"]);
  const cases: DataCase[] = [];
  for (const [jpeg, label] of decoders) {
    cases.push({
      name: `decode JPEG 500x375, ${label} (PIL: 625-1000)`,
      images: 4,
      run: () => {
        for (let i = 0; i < 4; i++) {
          decodeImage(bytes, { jpeg, scratch: decoded });
        }
      },
    }, {
      name: `decode the ${photos.length} photo fixtures, ${label}`,
      images: photos.length,
      run: () => {
        for (const photo of photos) {
          decodeImage(photo, { jpeg, scratch: decoded });
        }
      },
    });
  }
  cases.push({
    name: "MEC two views 224 px (one thread)",
    images: 4,
    run: () => {
      for (let i = 0; i < 4; i++) {
        const gen = new Generator(0, 0, key++);
        applyView(image, view1, gen, out, 0, scratch);
        applyView(image, view2, gen, out, 0, scratch);
      }
    },
  });
  for (const [jpeg, label] of decoders) {
    cases.push({
      name: `decode 500x375 + two views 224 px, ${label} (torchvision: 31-43)`,
      images: 4,
      run: () => {
        for (let i = 0; i < 4; i++) {
          const image = decodeImage(bytes, { jpeg, scratch: decoded });
          const gen = new Generator(0, 0, key++);
          applyView(image, view1, gen, out, 0, scratch);
          applyView(image, view2, gen, out, 0, scratch);
        }
      },
    });
  }
  for (const [jpeg, label] of decoders) {
    for (const workers of [1, 2]) {
      const batchSize = 16;
      const batches = 4;
      const loader = new DataLoader({
        dataset: new PhotoDataset(batchSize * batches, bytes),
        views: [view1, view2],
        batchSize,
        workers,
        jpeg,
      });
      let epoch = 0;
      cases.push({
        name: `loader decode + two views 224 px, ${workers} worker${
          workers > 1 ? "s" : ""
        }, ${label}`,
        images: batchSize * batches,
        run: async () => {
          for await (const batch of loader.epoch(epoch++)) {
            loader.recycle(batch);
          }
        },
        close: () => loader.close(),
      });
    }
  }
  return cases;
}

/** Best of `rounds` timed runs after one warm-up, in ms per image. */
async function measure(c: DataCase, rounds = 3): Promise<number> {
  await c.run();
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    await c.run();
    best = Math.min(best, (performance.now() - t0) / c.images);
  }
  return best;
}

if (import.meta.main) {
  const json = Deno.args.includes("--json");
  for (const c of dataCases()) {
    const ms = await measure(c);
    await c.close?.();
    if (json) {
      console.log(
        JSON.stringify({ name: c.name, value: 1000 / ms, unit: "images/s" }),
      );
    } else {
      console.log(
        `${c.name.padEnd(64)} ${(1000 / ms).toFixed(1).padStart(7)} images/s ${
          ms.toFixed(2).padStart(7)
        } ms/image`,
      );
    }
  }
}
