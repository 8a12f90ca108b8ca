/**
 * Gradient averaging over ranks before the optimiser step, in buckets as
 * PyTorch's DistributedDataParallel does: parameters are grouped in reverse
 * order (the order backward finishes them, roughly) into buckets of about
 * `bucketBytes` (the first one small, so that communication starts early).
 * When the last gradient of a bucket is complete, it is copied into the
 * bucket's flat buffer and the bucket's all-reduce starts while the
 * backward pass goes on; {@linkcode GradientBuckets.finish} completes the
 * rest and writes each average back into its gradient.
 *
 * Buckets start strictly in order, so every rank issues the same
 * collectives in the same order whatever the order of readiness.
 *
 * @module
 */

import type { Backend } from "../nn/backend.ts";
import { type BackwardOptions, keep, noGrad, Tensor } from "../nn/tensor.ts";
import type { Communicator, Pending } from "./communicator.ts";

/** DDP's defaults: 25 MiB buckets, the first one 1 MiB. */
export const BUCKET_BYTES = 25 * 1024 * 1024;
export const FIRST_BUCKET_BYTES = 1024 * 1024;

interface Bucket {
  params: Tensor[];
  names: string[];
  /** Element offset of each parameter in the flat buffer. */
  offsets: number[];
  length: number;
  flat: Tensor;
  ready: number;
  pending: Pending | null;
}

export interface BucketOptions {
  bucketBytes?: number;
  firstBucketBytes?: number;
}

export class GradientBuckets {
  readonly buckets: readonly Bucket[];
  /** Bytes all-reduced per step (every trainable parameter once). */
  readonly bytesPerStep: number;
  readonly #comm: Communicator;
  readonly #backend: Backend;
  readonly #where = new Map<Tensor, [Bucket, number]>();
  #next = 0;
  /** Buckets whose all-reduce started during the last backward pass. */
  #started = 0;

  constructor(
    comm: Communicator,
    named: readonly [string, Tensor][],
    opts: BucketOptions = {},
  ) {
    if (named.length === 0) {
      throw new RangeError("GradientBuckets: there are no parameters");
    }
    this.#comm = comm;
    this.#backend = named[0][1].backend;
    const limit = opts.bucketBytes ?? BUCKET_BYTES;
    const first = opts.firstBucketBytes ?? FIRST_BUCKET_BYTES;
    const buckets: Bucket[] = [];
    let current: Omit<Bucket, "flat"> | null = null;
    const close = () => {
      if (current === null) return;
      const flat = keep(Tensor.empty(this.#backend, [current.length]));
      buckets.push({ ...current, flat });
      current = null;
    };
    for (const [name, p] of [...named].reverse()) {
      if (current === null) {
        current = {
          params: [],
          names: [],
          offsets: [],
          length: 0,
          ready: 0,
          pending: null,
        };
      }
      const c: Omit<Bucket, "flat"> = current;
      c.params.push(p);
      c.names.push(name);
      c.offsets.push(c.length);
      c.length += p.size;
      if (4 * c.length >= (buckets.length === 0 ? first : limit)) close();
    }
    close();
    this.buckets = buckets;
    for (const b of buckets) {
      b.params.forEach((p, i) => this.#where.set(p, [b, i]));
    }
    this.bytesPerStep = 4 * buckets.reduce((s, b) => s + b.length, 0);
  }

  /** Options for `loss.backward` that start buckets as they fill. */
  backwardOptions(): BackwardOptions {
    return { onLeafGrad: (leaf) => this.gradReady(leaf) };
  }

  /** A parameter's gradient is complete: copy it into its bucket. */
  gradReady(p: Tensor): void {
    const at = this.#where.get(p);
    if (at === undefined || p.grad === null) return;
    const [bucket, i] = at;
    this.#backend.copy({
      src: p.grad.buffer,
      srcOffset: 0,
      dst: bucket.flat.buffer,
      dstOffset: bucket.offsets[i],
      length: p.size,
    });
    bucket.ready++;
    this.#launchReady();
    // MPI moves non-blocking collectives on only inside MPI calls.
    for (let b = 0; b < this.#next; b++) this.buckets[b].pending?.test();
  }

  /**
   * Starts what backward did not, waits for every bucket, and replaces each
   * gradient by its average over ranks. Throws, naming it, when a trainable
   * parameter got no gradient (every rank must reduce the same buckets).
   */
  finish(): void {
    this.#started = this.#next;
    for (const bucket of this.buckets) {
      if (bucket.ready === bucket.params.length) continue;
      bucket.params.forEach((p, i) => {
        if (p.grad === null) {
          throw new Error(
            `the parameter ${
              bucket.names[i]
            } received no gradient, so ranks cannot average it`,
          );
        }
      });
      // Gradients that backward finished without telling (a caller that
      // did not pass backwardOptions): copy them now.
      bucket.ready = 0;
      bucket.params.forEach((p) => this.gradReady(p));
    }
    this.#launchReady();
    const scale = 1 / this.#comm.size;
    noGrad(() => {
      for (const bucket of this.buckets) {
        bucket.pending!.wait();
        bucket.pending = null;
        bucket.ready = 0;
        this.#backend.scaleShift({
          x: bucket.flat.buffer,
          y: bucket.flat.buffer,
          length: bucket.length,
          scale,
          shift: 0,
        });
        bucket.params.forEach((p, i) =>
          this.#backend.copy({
            src: bucket.flat.buffer,
            srcOffset: bucket.offsets[i],
            dst: p.grad!.buffer,
            dstOffset: 0,
            length: p.size,
          })
        );
      }
    });
    this.#next = 0;
  }

  /** How many buckets started before backward ended, in the last step. */
  get startedDuringBackward(): number {
    return this.#started;
  }

  #launchReady(): void {
    while (
      this.#next < this.buckets.length &&
      this.buckets[this.#next].ready === this.buckets[this.#next].params.length
    ) {
      const b = this.buckets[this.#next++];
      b.pending = this.#comm.startAllReduce(b.flat.buffer, 0, b.length);
    }
  }

  /** Frees the flat buffers. */
  dispose(): void {
    for (const b of this.buckets) b.flat.dispose();
  }
}
