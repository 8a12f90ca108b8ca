/**
 * What the probe's head trains on, two ways with the same mathematics when
 * the training transform is deterministic: augmented views through the
 * frozen backbone at every step (the official way), or features extracted
 * once with the evaluation transform and reshuffled every epoch
 * (`--cache-features`). Both give the validation features in chunks too.
 *
 * @module
 */

import {
  DataLoader,
  type Dataset,
  Generator,
  scope,
  type Tensor,
  tensor,
} from "../mod.ts";
import { shardLength, shardOrder } from "../data/sampler.ts";
import type { LinclsArgs } from "./lincls_args.ts";
import type { Probe } from "./probe.ts";
import { probeEvalViewFor, probeTrainViewFor } from "./views.ts";

/**
 * The splits a probe is evaluated on: "val" after every epoch (it chooses
 * the best epoch), "test" once at the end where there is one (the demo).
 */
export type EvalSplit = "val" | "test";

/** Training batches (features on the device) and evaluation features. */
export interface Feeder {
  trainBatches(): number;
  trainEpoch(epoch: number): AsyncGenerator<{ x: Tensor; labels: Int32Array }>;
  /** Whether a test split was given. */
  readonly hasTest: boolean;
  /** The features of an evaluation split in chunks, with labels. */
  evalChunks(
    split: EvalSplit,
  ): AsyncGenerator<{ x: Tensor; labels: Int32Array }>;
  close(): Promise<void>;
}

/** Rows of features per backbone pass: bounds memory, not the math. */
export const CHUNK = 256;

/**
 * This rank's place under `mpirun`: it trains on its padded shard of each
 * epoch (PyTorch's DistributedSampler, so that every rank's batches have
 * the same sizes) and evaluates an uneven shard (each image once).
 */
export interface ProbeShard {
  rank: number;
  size: number;
}

/** The per-rank batch: the global one divided among the ranks. */
function rankBatch(args: LinclsArgs, shard: ProbeShard | null, n: number) {
  const local = shard === null ? args.batchSize : args.batchSize / shard.size;
  return Math.min(local, shard === null ? n : shardLength(n, shard.size));
}

/** Features of every batch of a loader's epoch, chunk by chunk. */
async function* featureBatches(
  probe: Probe,
  loader: DataLoader,
  epoch: number,
): AsyncGenerator<{ features: Float32Array; labels: Int32Array }> {
  for await (const batch of loader.epoch(epoch)) {
    const [, c, h, w] = batch.shapes[0];
    const n = batch.labels.length;
    const features = new Float32Array(n * probe.featureDim);
    for (let start = 0; start < n; start += CHUNK) {
      const rows = Math.min(CHUNK, n - start);
      const values = batch.views[0].subarray(
        start * c * h * w,
        (start + rows) * c * h * w,
      );
      scope(() => {
        const f = probe.features(tensor(values, [rows, c, h, w]));
        features.set(f.toArray(), start * probe.featureDim);
      });
    }
    // Once a batch, as a training step's end (the probe's step on it, where
    // features are not cached, falls in the same window): the cache keeps
    // what each batch reuses and the CPU's thread count follows the load.
    probe.head.parameters()[0].backend.endStep?.();
    loader.recycle(batch);
    yield { features, labels: batch.labels };
  }
}

/** The official way: augmented views through the frozen backbone every step. */
export class AugmentedFeatures implements Feeder {
  #train: DataLoader;
  #eval: Map<EvalSplit, DataLoader>;

  constructor(
    readonly probe: Probe,
    train: Dataset,
    val: Dataset,
    readonly args: LinclsArgs,
    test: Dataset | null = null,
    shard: ProbeShard | null = null,
  ) {
    this.#train = new DataLoader({
      dataset: train,
      views: [probeTrainViewFor(args.imageSize)],
      batchSize: rankBatch(args, shard, train.length),
      seed: args.seed,
      workers: args.workers,
      dropLast: false,
      shard: shard ?? undefined,
    });
    const evalLoader = (dataset: Dataset) =>
      new DataLoader({
        dataset,
        views: [probeEvalViewFor(args.imageSize)],
        batchSize: CHUNK,
        seed: args.seed,
        workers: args.workers,
        shuffle: false,
        dropLast: false,
        shard: shard === null ? undefined : { ...shard, tail: "uneven" },
      });
    this.#eval = new Map([["val", evalLoader(val)]]);
    if (test !== null) this.#eval.set("test", evalLoader(test));
  }

  get hasTest(): boolean {
    return this.#eval.has("test");
  }

  trainBatches(): number {
    return this.#train.length;
  }

  async *trainEpoch(epoch: number) {
    for await (const b of featureBatches(this.probe, this.#train, epoch)) {
      // BatchNorm in training mode needs two samples or more.
      if (b.labels.length < 2) continue;
      yield {
        x: tensor(b.features, [b.labels.length, this.probe.featureDim]),
        labels: b.labels,
      };
    }
  }

  async *evalChunks(split: EvalSplit) {
    const loader = this.#eval.get(split);
    if (loader === undefined) throw new Error(`No ${split} split was given.`);
    for await (const b of featureBatches(this.probe, loader, 0)) {
      yield {
        x: tensor(b.features, [b.labels.length, this.probe.featureDim]),
        labels: b.labels,
      };
    }
  }

  async close(): Promise<void> {
    await this.#train.close();
    for (const loader of this.#eval.values()) await loader.close();
  }
}

/** Features extracted once with the evaluation transform, batches reshuffled per epoch. */
export class CachedFeatures implements Feeder {
  private constructor(
    readonly dim: number,
    readonly batchSize: number,
    readonly seed: number,
    readonly train: { features: Float32Array; labels: Int32Array },
    readonly evals: Map<
      EvalSplit,
      { features: Float32Array; labels: Int32Array }
    >,
    readonly shard: ProbeShard | null,
  ) {}

  static async extract(
    probe: Probe,
    train: Dataset,
    val: Dataset,
    args: LinclsArgs,
    test: Dataset | null = null,
    shard: ProbeShard | null = null,
  ): Promise<CachedFeatures> {
    const view = probeEvalViewFor(args.imageSize);
    const all = async (dataset: Dataset, name: string) => {
      await using loader = new DataLoader({
        dataset,
        views: [view],
        batchSize: CHUNK,
        seed: args.seed,
        workers: args.workers,
        shuffle: false,
        dropLast: false,
      });
      const features = new Float32Array(dataset.length * probe.featureDim);
      const labels = new Int32Array(dataset.length);
      const t0 = performance.now();
      let done = 0;
      let batches = 0;
      for await (const b of featureBatches(probe, loader, 0)) {
        features.set(b.features, done * probe.featureDim);
        labels.set(b.labels, done);
        done += b.labels.length;
        if (++batches % 20 === 0 || done === dataset.length) {
          const seconds = (performance.now() - t0) / 1000;
          console.log(
            `Features of ${name}: ${done}/${dataset.length} images (${
              (done / seconds).toFixed(1)
            } img/s)`,
          );
        }
      }
      return { features, labels };
    };
    const trainFeatures = await all(train, "train");
    const evals = new Map([["val" as EvalSplit, await all(val, "val")]]);
    if (test !== null) evals.set("test", await all(test, "test"));
    // Every rank holds every feature (each epoch shards a new order).
    return new CachedFeatures(
      probe.featureDim,
      rankBatch(args, shard, train.length),
      args.seed,
      trainFeatures,
      evals,
      shard,
    );
  }

  get hasTest(): boolean {
    return this.evals.has("test");
  }

  trainBatches(): number {
    const n = this.train.labels.length;
    const rows = this.shard === null ? n : shardLength(n, this.shard.size);
    return Math.ceil(rows / this.batchSize);
  }

  async *trainEpoch(epoch: number) {
    const n = this.train.labels.length;
    // The loader's convention: epoch e's order from Generator(seed, e, -1).
    const all = new Generator(this.seed, epoch, -1).permutation(n);
    const order = this.shard === null
      ? all
      : shardOrder(all, this.shard.rank, this.shard.size, "pad");
    for (let start = 0; start < order.length; start += this.batchSize) {
      const rows = Math.min(this.batchSize, order.length - start);
      // BatchNorm in training mode needs two samples or more.
      if (rows < 2) continue;
      const x = new Float32Array(rows * this.dim);
      const labels = new Int32Array(rows);
      for (let r = 0; r < rows; r++) {
        const i = order[start + r];
        x.set(
          this.train.features.subarray(i * this.dim, (i + 1) * this.dim),
          r * this.dim,
        );
        labels[r] = this.train.labels[i];
      }
      yield { x: tensor(x, [rows, this.dim]), labels };
    }
  }

  async *evalChunks(split: EvalSplit) {
    const features = this.evals.get(split);
    if (features === undefined) throw new Error(`No ${split} split was given.`);
    const all = features.labels.length;
    // Under mpirun a contiguous block per rank: each image counted once.
    const size = this.shard?.size ?? 1;
    const rank = this.shard?.rank ?? 0;
    const first = Math.floor(rank * all / size);
    const n = Math.floor((rank + 1) * all / size);
    for (let start = first; start < n; start += CHUNK) {
      const rows = Math.min(CHUNK, n - start);
      yield {
        x: tensor(
          features.features.subarray(
            start * this.dim,
            (start + rows) * this.dim,
          )
            .slice(),
          [rows, this.dim],
        ),
        labels: features.labels.subarray(start, start + rows),
      };
    }
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
