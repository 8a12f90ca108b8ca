/**
 * The online kNN monitor of pretraining: learning you can watch while it
 * happens, as solo-learn and lightly show it. A fixed labelled memory bank
 * from the training images and a fixed set of held-out queries go through
 * the teacher's backbone in eval mode (BN on running statistics, no
 * gradient), and the queries' weighted kNN top-1 (mec/knn.ts: k 200,
 * cosine, T 0.1) is reported. Labels are used only here, never by the
 * training step.
 *
 * Measuring changes nothing that training depends on: eval mode leaves the
 * BN statistics alone, the evaluation view draws no random numbers, and the
 * teacher is put back in training mode, so a run with the monitor computes
 * the same weights as one without.
 *
 * @module
 */

import {
  batchTensors,
  DataLoader,
  type Dataset,
  KNN_DEFAULTS,
  knnAccuracy,
  noGrad,
  type ResNet,
  scope,
  tensor,
} from "../mod.ts";
import { probeEvalViewFor } from "./views.ts";

/** One measurement. */
export interface KnnResult {
  /** Weighted kNN top-1 of the queries, in percent. */
  acc1: number;
  /** Wall time of the measurement (both embeddings and the vote). */
  seconds: number;
}

/** Rows per backbone pass: bounds memory, not the result. */
const CHUNK = 256;

export class KnnMonitor {
  constructor(
    /** The labelled memory bank (training images). */
    readonly bank: Dataset,
    /** The held-out queries (validation images). */
    readonly queries: Dataset,
    readonly imageSize: number,
    readonly workers: number,
    readonly k: number = KNN_DEFAULTS.k,
    readonly temperature: number = KNN_DEFAULTS.temperature,
  ) {
    if (bank.classes.join("\n") !== queries.classes.join("\n")) {
      throw new Error(
        "The kNN monitor's memory bank and queries have different classes.",
      );
    }
  }

  /** "5000 bank images, 2000 held-out queries at 224 px, k 200, T 0.1". */
  describe(): string {
    return `${this.bank.length} bank images, ${this.queries.length} held-out queries at ${this.imageSize} px, k ${this.k}, T ${this.temperature}`;
  }

  /** The weighted kNN top-1 of `backbone`'s pooled features. */
  async measure(backbone: ResNet): Promise<KnnResult> {
    const t0 = performance.now();
    const wasTraining = backbone.training;
    backbone.eval();
    try {
      const bank = await this.#embed(backbone, this.bank);
      const queries = await this.#embed(backbone, this.queries);
      const dim = backbone.featureDim;
      const acc1 = scope(() =>
        knnAccuracy(
          tensor(queries.features, [queries.labels.length, dim]),
          queries.labels,
          tensor(bank.features, [bank.labels.length, dim]),
          bank.labels,
          this.bank.classes.length,
          { k: this.k, temperature: this.temperature },
        )
      );
      return { acc1, seconds: (performance.now() - t0) / 1000 };
    } finally {
      backbone.train(wasTraining);
    }
  }

  /**
   * The pooled features of every sample of `dataset`, in order, with the
   * labels the loader gave (an unreadable image is replaced by another,
   * label and all, and named in the loader's epoch summary).
   */
  async #embed(
    backbone: ResNet,
    dataset: Dataset,
  ): Promise<{ features: Float32Array; labels: Int32Array }> {
    await using loader = new DataLoader({
      dataset,
      views: [probeEvalViewFor(this.imageSize)],
      batchSize: CHUNK,
      workers: this.workers,
      shuffle: false,
      dropLast: false,
    });
    const dim = backbone.featureDim;
    const features = new Float32Array(dataset.length * dim);
    const labels = new Int32Array(dataset.length);
    let done = 0;
    for await (const batch of loader.epoch(0)) {
      const rows = noGrad(() =>
        scope(() => {
          const [x] = batchTensors(batch);
          return backbone.features(x).toArray();
        })
      );
      features.set(rows, done * dim);
      labels.set(batch.labels, done);
      done += batch.labels.length;
      loader.recycle(batch);
    }
    return { features, labels };
  }
}
