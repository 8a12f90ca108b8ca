/**
 * A dataset of random images for timing runs, as `--dummy` in PyTorch's
 * ImageNet example: no files, no decoding, the same image for an index in
 * every epoch.
 *
 * @module
 */

import { Generator } from "../nn/random.ts";
import type { Dataset, SampleSource } from "./dataset.ts";
import { checkIndex } from "./dataset.ts";

/** Options of {@link DummyDataset}. */
export interface DummyDatasetOptions {
  /** Number of samples (default 1,281,167, ImageNet's training set). */
  length?: number;
  /** Number of classes (default 1000). */
  classes?: number;
  /** Image size before augmentation (default 500x375, a typical ImageNet photo). */
  width?: number;
  height?: number;
  /** Seeds the pixels and labels (default 0). */
  seed?: number;
}

/** Uniform random pixels and labels, made by the worker from a seed. */
export class DummyDataset implements Dataset {
  readonly length: number;
  readonly classes: readonly string[];
  readonly width: number;
  readonly height: number;
  readonly seed: number;

  constructor(options: DummyDatasetOptions = {}) {
    this.length = options.length ?? 1281167;
    this.classes = Array.from(
      { length: options.classes ?? 1000 },
      (_, i) => `class${i}`,
    );
    this.width = options.width ?? 500;
    this.height = options.height ?? 375;
    this.seed = options.seed ?? 0;
  }

  label(index: number): number {
    checkIndex(this, index);
    return new Generator(this.seed, index, 1).integer(0, this.classes.length);
  }

  name(index: number): string {
    return `dummy[${index}]`;
  }

  source(index: number): Promise<SampleSource> {
    checkIndex(this, index);
    return Promise.resolve({
      kind: "noise",
      width: this.width,
      height: this.height,
      seed: this.seed,
      index,
    });
  }
}

/** Fills `data` with uniform random bytes from `new Generator(seed, index, 0)`. */
export function noiseBytes(
  seed: number,
  index: number,
  data: Uint8Array,
): Uint8Array {
  const gen = new Generator(seed, index, 0);
  let i = 0;
  for (; i + 4 <= data.length; i += 4) {
    const word = gen.nextUint32();
    data[i] = word & 0xff;
    data[i + 1] = (word >>> 8) & 0xff;
    data[i + 2] = (word >>> 16) & 0xff;
    data[i + 3] = word >>> 24;
  }
  if (i < data.length) {
    const word = gen.nextUint32();
    for (let k = 0; i < data.length; i++, k += 8) data[i] = (word >>> k) & 0xff;
  }
  return data;
}
