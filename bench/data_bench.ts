/**
 * Throughput of the data path on real photographs, per core: JPEG decoding
 * by each decoder (jpeg-js, and TurboJPEG where libturbojpeg loads) and
 * decoding plus MEC's two 224-pixel views, on one core and on two (one
 * bench worker per core), on the ImageNet-sized
 * tests/fixtures/photo/coffee-500x375.jpg; all the committed photographs;
 * the views alone; the whole loader (decode + two views + hand-over) with 1
 * and 2 workers; and the loader on a 2000x1500 photograph with and without
 * fast decoding. Ends with the ratios the goals are stated in.
 *
 *     deno run --allow-read --allow-env --allow-ffi bench/data_bench.ts [--json]
 *
 * Prints images/s per core (by CPU time, see {@link measure}) and by the
 * clock for each case; with `--json`, one JSON object per line (`{"name",
 * "value", "unit", "wall"}`). torchvision's
 * per-core figures on the same kind of photograph
 * (shared/reference/measured.md; bench/torchvision_views.py measures them
 * here) are printed beside them: PIL decodes one in 1-1.6 ms (625-1000
 * images/s), and its MEC view augmentation costs 11-15 ms per view, so
 * decode + two views runs at 31-43 images/s per core.
 *
 * @module
 */

import jpeg from "jpeg-js";
import { Buffer } from "node:buffer";
import process from "node:process";
import type { Dataset, SampleSource } from "../data/dataset.ts";
import {
  decodeImage,
  DecodeScratch,
  type JpegDecoder,
} from "../data/decode.ts";
import { DataLoader } from "../data/loader.ts";
import { applyView, mecViews, ViewScratch } from "../data/pipelines.ts";
import { resizedCrop } from "../data/transforms.ts";
import { turboJpeg } from "../data/turbojpeg.ts";
import { Generator } from "../nn/random.ts";
import type { BenchJob } from "./data_bench_worker.ts";

/** One timed workload: `run` processes `images` images on `cores` cores. */
export interface DataCase {
  name: string;
  images: number;
  cores: number;
  run: () => void | Promise<void>;
  /** Called once when the case is done (stops workers). */
  close?: () => Promise<void>;
}

/** torchvision's per-core rates (images/s) from measured.md, low and high. */
export const TORCHVISION_PER_CORE = {
  decode: [625, 1000],
  decodeTwoViews: [31, 43],
} as const;

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

/**
 * The photograph enlarged 4x (2000x1500, the size of a phone's photo
 * scaled down for the web) and encoded by jpeg-js at quality 90.
 */
function largePhoto(bytes: Uint8Array): Uint8Array {
  const small = decodeImage(bytes);
  const width = 4 * small.width;
  const height = 4 * small.height;
  const big = {
    width,
    height,
    data: new Float32Array(width * height * 3),
  };
  resizedCrop(small, {
    box: { top: 0, left: 0, width: small.width, height: small.height },
    resizeWidth: width,
    resizeHeight: height,
  }, big);
  const rgba = new Uint8Array(width * height * 4);
  for (let p = 0; p < width * height; p++) {
    for (let c = 0; c < 3; c++) rgba[4 * p + c] = big.data[3 * p + c];
    rgba[4 * p + 3] = 255;
  }
  const encoded = jpeg.encode(
    { data: Buffer.from(rgba.buffer), width, height },
    90,
  );
  return new Uint8Array(encoded.data);
}

/** A photo's file, served for every index as an ImageFolder would. */
class PhotoDataset implements Dataset {
  readonly classes = ["photo"];
  constructor(readonly length: number, readonly bytes: Uint8Array) {}
  label(): number {
    return 0;
  }
  name(index: number): string {
    return `photo[${index}]`;
  }
  source(): Promise<SampleSource> {
    // A fresh copy, as a file read would give, so it can be transferred.
    return Promise.resolve({ kind: "encoded", bytes: this.bytes.slice() });
  }
}

/** Bench workers, one per core, each running the same job at once. */
class BenchWorkers {
  #workers: Worker[];
  constructor(count: number) {
    const url = new URL("./data_bench_worker.ts", import.meta.url).href;
    this.#workers = Array.from(
      { length: count },
      () => new Worker(url, { type: "module" }),
    );
  }
  run(job: BenchJob): Promise<number[]> {
    return Promise.all(
      this.#workers.map((w) =>
        new Promise<number>((resolve, reject) => {
          w.onmessage = (e: MessageEvent<number>) => resolve(e.data);
          w.onerror = (e) => reject(new Error(e.message));
          w.postMessage(job);
        })
      ),
    );
  }
  close(): Promise<void> {
    for (const w of this.#workers) w.terminate();
    return Promise.resolve();
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
  const decoders: ["turbojpeg" | "jpeg-js", string][] = [[
    "jpeg-js",
    "jpeg-js",
  ]];
  if (turboJpeg() !== null) decoders.push(["turbojpeg", "TurboJPEG"]);
  const cases: DataCase[] = [];
  const [pilLow, pilHigh] = TORCHVISION_PER_CORE.decode;
  const [tvLow, tvHigh] = TORCHVISION_PER_CORE.decodeTwoViews;
  for (
    const [views, what, tv] of [
      [false, "decode 500x375", `PIL: ${pilLow}-${pilHigh}`],
      [
        true,
        "decode 500x375 + two views 224 px",
        `torchvision: ${tvLow}-${tvHigh}`,
      ],
    ] as const
  ) {
    for (const [jpegDecoder, label] of decoders) {
      // jpeg-js is slow: fewer images keep its runs as long as the others.
      const images = (jpegDecoder === "jpeg-js" ? 4 : 16) / (views ? 2 : 1);
      for (const cores of [1, 2]) {
        const workers = new BenchWorkers(cores);
        cases.push({
          name: `${what}, ${label}, ${cores} core${
            cores > 1 ? "s" : ""
          } (${tv})`,
          images: images * cores,
          cores,
          run: async () => {
            await workers.run({ bytes, jpeg: jpegDecoder, views, images });
          },
          close: () => workers.close(),
        });
      }
    }
  }
  for (const [jpegDecoder, label] of decoders) {
    cases.push({
      name: `decode the ${photos.length} photo fixtures, ${label}, 1 core`,
      images: photos.length,
      cores: 1,
      run: () => {
        for (const photo of photos) {
          decodeImage(photo, { jpeg: jpegDecoder, scratch: decoded });
        }
      },
    });
  }
  cases.push({
    name: "MEC two views 224 px, 1 core",
    images: 8,
    cores: 1,
    run: () => {
      for (let i = 0; i < 8; i++) {
        const gen = new Generator(0, 0, i);
        applyView(image, view1, gen, out, 0, scratch);
        applyView(image, view2, gen, out, 0, scratch);
      }
    },
  });
  const loaderCase = (
    name: string,
    photo: Uint8Array,
    jpegDecoder: JpegDecoder,
    workers: number,
    fastDecode: boolean,
    batches: number,
  ): DataCase => {
    const batchSize = 16;
    const loader = new DataLoader({
      dataset: new PhotoDataset(batchSize * batches, photo),
      views: [view1, view2],
      batchSize,
      workers,
      jpeg: jpegDecoder,
      fastDecode,
    });
    let epoch = 0;
    return {
      name,
      images: batchSize * batches,
      cores: workers,
      run: async () => {
        for await (const batch of loader.epoch(epoch++)) loader.recycle(batch);
      },
      close: () => loader.close(),
    };
  };
  for (const [jpegDecoder, label] of decoders) {
    for (const workers of [1, 2]) {
      cases.push(loaderCase(
        `loader decode + two views 224 px, ${workers} worker${
          workers > 1 ? "s" : ""
        }, ${label}`,
        bytes,
        jpegDecoder,
        workers,
        false,
        jpegDecoder === "jpeg-js" ? 2 : 4,
      ));
    }
  }
  if (turboJpeg() !== null) {
    const large = largePhoto(bytes);
    for (const fast of [false, true]) {
      cases.push(loaderCase(
        `loader on 2000x1500, TurboJPEG, 1 worker, ${
          fast ? "--fast-decode" : "full decode"
        }`,
        large,
        "turbojpeg",
        1,
        fast,
        1,
      ));
    }
  }
  return cases;
}

/** One case's rates: per core by CPU time, and by the clock in all. */
export interface DataRate {
  /** Images per second of the process's CPU time (all its threads). */
  perCore: number;
  /** Images per second of wall-clock time, on `cores` cores together. */
  wall: number;
}

/**
 * The best of `rounds` timed runs after one warm-up. Per-core rates come
 * from the process's CPU time, so that other programs on a shared machine
 * lower them less than they lower wall-clock rates (and PIL's figures from
 * bench/torchvision_views.py are measured the same way).
 */
export async function measure(c: DataCase, rounds = 3): Promise<DataRate> {
  await c.run();
  let cpu = Infinity;
  let wall = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    const u0 = process.cpuUsage();
    await c.run();
    const used = process.cpuUsage(u0);
    wall = Math.min(wall, (performance.now() - t0) / 1000);
    cpu = Math.min(cpu, (used.user + used.system) / 1e6);
  }
  return { perCore: c.images / cpu, wall: c.images / wall };
}

/** A measured rate with what it is, for a report line. */
export interface DataResult {
  name: string;
  value: number;
  unit: string;
  /** Images per second of wall-clock time, where `value` is per core. */
  wall?: number;
}

/**
 * Runs every case and then states the goals' ratios, calling `report` with
 * each result as it comes.
 */
export async function runDataBench(
  report: (r: DataResult) => void,
): Promise<void> {
  const perCore = new Map<string, number>();
  for (const c of dataCases()) {
    const rate = await measure(c);
    await c.close?.();
    perCore.set(c.name, rate.perCore);
    report({
      name: c.name,
      value: rate.perCore,
      unit: "images/s per core",
      wall: rate.wall,
    });
  }
  const rate = (prefix: string) =>
    [...perCore].find(([name]) => name.startsWith(prefix))?.[1];
  for (const cores of ["1 core", "2 cores"]) {
    const js = rate(`decode 500x375, jpeg-js, ${cores}`);
    const tj = rate(`decode 500x375, TurboJPEG, ${cores}`);
    if (js !== undefined && tj !== undefined) {
      report({
        name: `ratio: decode TurboJPEG / jpeg-js, ${cores} (goal >= 5)`,
        value: tj / js,
        unit: "x",
      });
    }
    const both =
      rate(`decode 500x375 + two views 224 px, TurboJPEG, ${cores}`) ??
        rate(`decode 500x375 + two views 224 px, jpeg-js, ${cores}`);
    if (both !== undefined) {
      const [low, high] = TORCHVISION_PER_CORE.decodeTwoViews;
      report({
        name:
          `ratio: decode + two views per core / torchvision's ${high}, ${cores} (goal >= 2; ${
            (both / low).toFixed(1)
          } against ${low})`,
        value: both / high,
        unit: "x",
      });
    }
  }
}

if (import.meta.main) {
  const json = Deno.args.includes("--json");
  await runDataBench((r) => {
    if (json) console.log(JSON.stringify(r));
    else if (r.unit === "x") {
      console.log(`${r.name.padEnd(78)} ${r.value.toFixed(2).padStart(7)}x`);
    } else {
      console.log(
        `${r.name.padEnd(78)} ${r.value.toFixed(1).padStart(7)} ${r.unit} (${
          (1000 / r.value).toFixed(2)
        } ms; ${r.wall?.toFixed(1)}/s by the clock)`,
      );
    }
  });
}
