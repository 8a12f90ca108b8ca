/**
 * Splits of a dataset: {@link Subset}, chosen samples of another dataset;
 * {@link holdOut}, which carves a validation split off the end of a
 * training set; and {@link firstPerClass}, a class-balanced selection. Hyper-parameters are chosen on such a split so
 * that the test split is measured once, with choices it did not influence.
 *
 * Fashion-MNIST's files are shuffled, so the last images of its training
 * file are a fair sample of all ten classes (the last 2,000 of the built-in
 * 10,000 hold 167 to 214 images of each class).
 *
 * @module
 */

import { checkIndex, type Dataset, type SampleSource } from "./dataset.ts";

/** Chosen samples of another dataset, renumbered from 0 in the given order. */
export class Subset implements Dataset {
  readonly classes: readonly string[];
  readonly length: number;
  readonly #indices: Int32Array;

  constructor(
    readonly parent: Dataset,
    indices: ArrayLike<number>,
    readonly split = "subset",
  ) {
    this.#indices = Int32Array.from(indices);
    for (const i of this.#indices) checkIndex(parent, i);
    if (this.#indices.length === 0) {
      throw new RangeError("Subset: no samples were chosen");
    }
    this.length = this.#indices.length;
    this.classes = parent.classes;
  }

  /** Samples `start .. start + length - 1` of `parent`. */
  static range(
    parent: Dataset,
    start: number,
    length: number,
    split = "subset",
  ): Subset {
    if (
      !Number.isInteger(start) || !Number.isInteger(length) || start < 0 ||
      length < 1 || start + length > parent.length
    ) {
      throw new RangeError(
        `Subset: samples ${start}..${
          start + length - 1
        } are not inside the dataset's ${parent.length} samples`,
      );
    }
    return new Subset(
      parent,
      Int32Array.from({ length }, (_, i) => start + i),
      split,
    );
  }

  /** The parent's index of sample `index`. */
  parentIndex(index: number): number {
    checkIndex(this, index);
    return this.#indices[index];
  }

  label(index: number): number {
    return this.parent.label(this.parentIndex(index));
  }

  /** The parent's name of the sample, so that reports name the real file. */
  name(index: number): string {
    return this.parent.name(this.parentIndex(index));
  }

  source(index: number): Promise<SampleSource> {
    return this.parent.source(this.parentIndex(index));
  }

  /** The labels of every sample, in order. */
  labels(): Int32Array {
    return Int32Array.from({ length: this.length }, (_, i) => this.label(i));
  }
}

/**
 * The first `count` samples of each class, in the dataset's order (all of
 * a class that has fewer): a class-balanced memory bank or query set for
 * the kNN monitor.
 */
export function firstPerClass(
  dataset: Dataset,
  count: number,
  split = "subset",
): Subset {
  if (!Number.isInteger(count) || count < 1) {
    throw new RangeError(
      `firstPerClass: ${count} samples per class is not a whole number of at least 1`,
    );
  }
  const taken = new Array<number>(dataset.classes.length).fill(0);
  const indices: number[] = [];
  for (let i = 0; i < dataset.length; i++) {
    const label = dataset.label(i);
    if (taken[label] < count) {
      taken[label]++;
      indices.push(i);
    }
  }
  return new Subset(dataset, indices, split);
}

/** A training set cut in two: what is trained on, and what chooses settings. */
export interface HeldOut {
  /** The first `length - count` samples. */
  train: Subset;
  /** The last `count` samples. */
  val: Subset;
}

/**
 * Holds the last `count` samples of `dataset` out as a validation split.
 *
 * @throws {RangeError} when `count` leaves no sample to train on.
 */
export function holdOut(dataset: Dataset, count: number): HeldOut {
  if (!Number.isInteger(count) || count < 1 || count >= dataset.length) {
    throw new RangeError(
      `holdOut: a validation split of ${count} samples must leave some of the dataset's ${dataset.length} to train on`,
    );
  }
  const rest = dataset.length - count;
  return {
    train: Subset.range(dataset, 0, rest, "train"),
    val: Subset.range(dataset, rest, count, "val"),
  };
}
