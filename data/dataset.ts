/**
 * What the loader needs of a dataset: its size, classes and labels, and for
 * each sample a {@link SampleSource} that a worker can turn into pixels
 * (file bytes to decode, pixels already in memory, or seeded noise). Also
 * {@link ArrayDataset}, images held in one typed array.
 *
 * @module
 */

import type { RgbImage } from "./decode.ts";

/** The raw material of one sample, sent to a worker. */
export type SampleSource =
  | {
    /** An image file's bytes, decoded in the worker. */
    kind: "encoded";
    bytes: Uint8Array;
  }
  | {
    /** Pixels already decoded. */
    kind: "pixels";
    image: RgbImage;
  }
  | {
    /** Uniform random pixels drawn from (seed, index): no I/O, no decode. */
    kind: "noise";
    width: number;
    height: number;
    seed: number;
    index: number;
  };

/** A labelled collection of images, indexed 0..length-1. */
export interface Dataset {
  /** Number of samples. */
  readonly length: number;
  /** Class names; label k is `classes[k]`. */
  readonly classes: readonly string[];
  /** The label of sample `index`. */
  label(index: number): number;
  /** A name for reports (a file path, or "train[12]"). */
  name(index: number): string;
  /**
   * The sample's raw material. Rejects when it cannot be read (a file that
   * vanished); the loader treats that like an undecodable image.
   */
  source(index: number): Promise<SampleSource>;
}

/** Checks an index against a dataset's length. */
export function checkIndex(dataset: Dataset, index: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= dataset.length) {
    throw new RangeError(
      `sample index ${index} is outside the dataset's ${dataset.length} samples`,
    );
  }
}

/** Options of {@link ArrayDataset}. */
export interface ArrayDatasetOptions {
  /** `length * height * width * channels` bytes, image after image (HWC). */
  pixels: Uint8Array;
  /** One label per image. */
  labels: ArrayLike<number>;
  width: number;
  height: number;
  /** 1 (grey, expanded to RGB for the augmentations) or 3. */
  channels: 1 | 3;
  classes: readonly string[];
  /** Prefix of sample names in reports (default "sample"). */
  name?: string;
}

/** Same-sized 8-bit images held in memory, such as Fashion-MNIST. */
export class ArrayDataset implements Dataset {
  readonly length: number;
  readonly classes: readonly string[];
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;
  #pixels: Uint8Array;
  #labels: Int32Array;
  #name: string;

  constructor(options: ArrayDatasetOptions) {
    const { pixels, labels, width, height, channels, classes } = options;
    const per = width * height * channels;
    if (per <= 0 || pixels.length % per !== 0) {
      throw new RangeError(
        `ArrayDataset: ${pixels.length} bytes are not whole ${width}x${height}x${channels} images`,
      );
    }
    this.length = pixels.length / per;
    if (labels.length !== this.length) {
      throw new RangeError(
        `ArrayDataset: ${labels.length} labels for ${this.length} images`,
      );
    }
    this.#labels = Int32Array.from(labels);
    for (const l of this.#labels) {
      if (l < 0 || l >= classes.length) {
        throw new RangeError(
          `ArrayDataset: label ${l} is not one of ${classes.length} classes`,
        );
      }
    }
    this.#pixels = pixels;
    this.width = width;
    this.height = height;
    this.channels = channels;
    this.classes = classes;
    this.#name = options.name ?? "sample";
  }

  label(index: number): number {
    checkIndex(this, index);
    return this.#labels[index];
  }

  name(index: number): string {
    return `${this.#name}[${index}]`;
  }

  /** The image as RGB (grey copied to three channels). */
  image(index: number): RgbImage {
    checkIndex(this, index);
    const { width, height, channels } = this;
    const n = width * height;
    const from = index * n * channels;
    const data = new Uint8Array(n * 3);
    if (channels === 3) {
      data.set(this.#pixels.subarray(from, from + n * 3));
    } else {
      for (let p = 0; p < n; p++) {
        const v = this.#pixels[from + p];
        data[3 * p] = v;
        data[3 * p + 1] = v;
        data[3 * p + 2] = v;
      }
    }
    return { width, height, data };
  }

  source(index: number): Promise<SampleSource> {
    return Promise.resolve({ kind: "pixels", image: this.image(index) });
  }
}
