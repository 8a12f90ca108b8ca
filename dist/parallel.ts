/**
 * A data-parallel run: the ranks `mpirun` started, the collectives on the
 * training device (NCCL on GPUs, Open MPI on the CPU), and what MEC's step
 * and the linear probe need from them: the gather, SyncBN, the gradient
 * buckets, the start-up broadcast of the weights, and agreement on when to
 * stop. Without `mpirun` {@linkcode joinRanks} returns null and nothing of
 * MPI is loaded.
 *
 * ```ts ignore
 * const ranks = joinRanks(); // null without mpirun
 * // mpirun -np 2: ranks.rank is 0 or 1, ranks.size 2
 * ```
 *
 * @module
 */

import type { StepParallel } from "../mec/train.ts";
import type { Backend } from "../nn/backend.ts";
import type { Module } from "../nn/module.ts";
import { noGrad, type Tensor } from "../nn/tensor.ts";
import type { BackwardOptions } from "../nn/tensor.ts";
import { type Communicator, MpiCommunicator } from "./communicator.ts";
import { gatherRows } from "./gather.ts";
import { type BucketOptions, GradientBuckets } from "./gradients.ts";
import { launchedByMpi, MpiWorld } from "./mpi.ts";
import { convertSyncBatchNorm } from "./sync_batchnorm.ts";

/** The default bound on every collective, in seconds (`MEC_DIST_TIMEOUT`). */
export const DEFAULT_TIMEOUT_SECONDS = 600;

/** The collective timeout from `MEC_DIST_TIMEOUT` (seconds), or the default. */
export function timeoutFromEnv(): number {
  const text = Deno.env.get("MEC_DIST_TIMEOUT");
  if (text === undefined || text === "") return DEFAULT_TIMEOUT_SECONDS;
  const v = Number(text);
  if (!(v > 0)) {
    throw new Error(
      `MEC_DIST_TIMEOUT must be a positive number of seconds, not "${text}"`,
    );
  }
  return v;
}

/** This process's place among the ranks, before a device is chosen. */
export class Ranks {
  constructor(readonly world: MpiWorld) {}

  get rank(): number {
    return this.world.rank;
  }

  get size(): number {
    return this.world.size;
  }

  get localRank(): number {
    return this.world.localRank;
  }

  /** Rank 0 writes checkpoints, logs and progress. */
  get isRoot(): boolean {
    return this.world.rank === 0;
  }

  /**
   * The device of this rank: "cuda" becomes `cuda:<local rank>` (one
   * process per GPU), and an explicit `cuda:N` is kept only on one rank per
   * node; the CPU stays the CPU.
   */
  device(requested: string): string {
    if (requested === "cpu") return "cpu";
    if (requested === "cuda" || requested === "cuda:0") {
      return `cuda:${this.localRank}`;
    }
    if (this.world.localSize > 1) {
      throw new Error(
        `--device ${requested} names one GPU, but ${this.world.localSize} ranks run on this node; use --device cuda, which gives each rank its own GPU`,
      );
    }
    return requested;
  }

  /** The collectives for a backend's buffers: NCCL on GPUs, MPI on the CPU. */
  async communicator(backend: Backend): Promise<Communicator> {
    if (backend.name.startsWith("cuda")) {
      const { NcclCommunicator } = await import("./nccl_comm.ts");
      const { CudaBackend } = await import("../cuda/backend.ts");
      if (backend instanceof CudaBackend) {
        return new NcclCommunicator(this.world, backend);
      }
    }
    return new MpiCommunicator(this.world, backend);
  }

  /** True on every rank when it is true on any (a stop request, say). */
  any(flag: boolean, what = "the stop flag"): boolean {
    const v = Float64Array.of(flag ? 1 : 0);
    this.world.allReduce(v, "max", undefined, what);
    return v[0] > 0;
  }

  /** Element-wise sums over ranks of host numbers (counts, metrics). */
  sum(values: readonly number[], what = "a sum of counts"): number[] {
    const v = Float64Array.from(values);
    this.world.allReduce(v, "sum", undefined, what);
    return Array.from(v);
  }

  /** Rank 0's bytes on every rank (lengths first, so they may differ). */
  broadcastBytes(bytes: Uint8Array, what = "a broadcast"): Uint8Array {
    const length = Float64Array.of(bytes.length);
    this.world.broadcast(length, 0, what);
    const out = this.isRoot
      ? Uint8Array.from(bytes)
      : new Uint8Array(length[0]);
    this.world.broadcast(out, 0, what);
    return out;
  }

  /** Waits for every rank (bounded by the timeout). */
  barrier(what = "a barrier"): void {
    this.world.barrier(what);
  }

  /** Stops every rank with this rank's sentence; does not return. */
  abort(message: string, code = 1): never {
    return this.world.abort(message, code);
  }

  finalize(): void {
    this.world.finalize();
  }
}

/**
 * Joins the ranks when started by `mpirun` (or a PMIx launcher); null for
 * a single process, which then never opens Open MPI.
 */
export function joinRanks(
  timeoutSeconds = timeoutFromEnv(),
): Ranks | null {
  if (!launchedByMpi()) return null;
  return new Ranks(MpiWorld.init(timeoutSeconds));
}

/**
 * Data parallelism over a model's trainable parameters: implements the MEC
 * step's {@linkcode StepParallel}, and serves the probe the same way.
 */
export class DataParallel implements StepParallel {
  readonly buckets: GradientBuckets;

  constructor(
    readonly ranks: Ranks,
    readonly comm: Communicator,
    trainable: readonly [string, Tensor][],
    options: BucketOptions = {},
  ) {
    this.buckets = new GradientBuckets(comm, trainable, options);
  }

  get worldSize(): number {
    return this.comm.size;
  }

  gather(x: Tensor): Tensor {
    return gatherRows(this.comm, x);
  }

  checkBatch(rows: number): void {
    const v = Float64Array.of(rows, -rows);
    this.ranks.world.allReduce(v, "max", undefined, "the batch-size check");
    if (v[0] !== rows || -v[1] !== rows) {
      throw new Error(
        `rank ${this.ranks.rank}: its batch has ${rows} samples but another rank's has ${
          v[0] !== rows ? v[0] : -v[1]
        }; every rank needs the same batch size`,
      );
    }
  }

  backwardOptions(): BackwardOptions {
    return this.buckets.backwardOptions();
  }

  finishGradients(): void {
    this.buckets.finish();
  }

  /** Bytes all-reduced per step for the gradients. */
  get gradientBytes(): number {
    return this.buckets.bytesPerStep;
  }

  dispose(): void {
    this.buckets.dispose();
  }
}

/**
 * Rank 0's parameters and buffers (the whole state dict, teacher included)
 * on every rank, as DistributedDataParallel does when it wraps a model.
 */
export function broadcastState(comm: Communicator, module: Module): void {
  noGrad(() => {
    for (const t of module.stateDict().values()) comm.broadcast(t.buffer, 0);
  });
}

/** Makes a model's batch norms SyncBN over the ranks (see sync_batchnorm.ts). */
export function syncBatchNorms(module: Module, comm: Communicator): number {
  return convertSyncBatchNorm(module, comm);
}
