/**
 * Splits of a dataset by index range: {@link Subset}, a contiguous window of
 * another dataset, and {@link holdOut}, which carves a validation split off
 * the end of a training set. Hyper-parameters are chosen on such a split so
 * that the test split is measured once, with choices it did not influence.
 *
 * Fashion-MNIST's files are shuffled, so the last images of its training
 * file are a fair sample of all ten classes (the last 2,000 of the built-in
 * 10,000 hold 167 to 214 images of each class).
 *
 * @module
 */

import { checkIndex, type Dataset, type SampleSource } from "./dataset.ts";

/** Samples `start .. start + length - 1` of another dataset, renumbered from 0. */
export class Subset implements Dataset {
  readonly classes: readonly string[];

  constructor(
    readonly parent: Dataset,
    readonly start: number,
    readonly length: number,
    readonly split = "subset",
  ) {
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
    this.classes = parent.classes;
  }

  label(index: number): number {
    checkIndex(this, index);
    return this.parent.label(this.start + index);
  }

  /** The parent's name of the sample, so that reports name the real file. */
  name(index: number): string {
    checkIndex(this, index);
    return this.parent.name(this.start + index);
  }

  source(index: number): Promise<SampleSource> {
    checkIndex(this, index);
    return this.parent.source(this.start + index);
  }

  /** The labels of every sample, in order. */
  labels(): Int32Array {
    return Int32Array.from({ length: this.length }, (_, i) => this.label(i));
  }
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
    train: new Subset(dataset, 0, rest, "train"),
    val: new Subset(dataset, rest, count, "val"),
  };
}
