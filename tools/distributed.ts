/**
 * The tools under `mpirun`: joining the ranks, what only rank 0 does, and
 * how a failure or Ctrl-C on one rank reaches the others. Without `mpirun`
 * every function here leaves the tool as it is (no MPI library loaded).
 *
 * - Rank 0 alone prints progress, writes the log and the checkpoints; the
 *   other ranks' stdout is silent (as the official code's `print_pass`).
 * - An error on any rank stops the job: that rank says one sentence
 *   beginning with its rank and calls `MPI_Abort`, which ends every rank.
 *   A rank that dies without a word is reported by `mpirun` ("process rank
 *   N ... exited"), which ends the others; a rank that hangs makes the
 *   others' next collective time out (`MEC_DIST_TIMEOUT`, 600 s).
 * - Stopping with a checkpoint: the tools take SIGTERM and SIGUSR2 as
 *   their Ctrl-C; all ranks agree after each step to stop at the same one,
 *   and rank 0 saves it. `kill -USR2 <mpirun's pid>` does it cleanly
 *   (mpirun forwards SIGUSR2 to every rank). Ctrl-C on mpirun makes it
 *   wait `odls_base_sigkill_timeout` seconds (1 by default), send SIGTERM,
 *   and kill the ranks as long again later: `mpirun --mca
 *   odls_base_sigkill_timeout 30 ...` leaves a large model time to save.
 *
 * @module
 */

import {
  broadcastState,
  DataParallel,
  joinRanks,
  type Ranks,
  syncBatchNorms,
} from "../dist/parallel.ts";
import type { Backend } from "../nn/backend.ts";
import type { Module } from "../nn/module.ts";
import { runMain, sentence, UsageError } from "./cli.ts";

/**
 * Runs a tool's main function as `runMain` does, after joining the ranks
 * when under `mpirun`; on a rank's error, stops all ranks with one
 * sentence naming it.
 */
export async function runTool(
  main: (ranks: Ranks | null) => Promise<number>,
): Promise<never> {
  let ranks: Ranks | null;
  try {
    ranks = joinRanks();
  } catch (e) {
    return runMain(() => Promise.reject(e));
  }
  if (ranks === null) return runMain(() => main(null));
  prepareRank(ranks);
  let code: number;
  try {
    code = await main(ranks);
  } catch (e) {
    if (Deno.env.get("MEC_TRACE") === "1" && e instanceof Error) {
      console.error(e.stack);
    }
    return ranks.abort(
      `rank ${ranks.rank} of ${ranks.size}: ${sentence(e)}`,
      e instanceof UsageError ? 2 : 1,
    );
  }
  ranks.finalize();
  Deno.exit(code);
}

/**
 * One rank's process settings: the CPU backend's threads (OpenBLAS,
 * oneDNN) shared out among the ranks of the node where there are several
 * (unless MEC_THREADS or MEC_BLAS_THREADS says otherwise; a single process
 * keeps the count that follows the load, cpu/threads.ts), stdout silent on
 * ranks other than 0, and SIGTERM (what `mpirun` sends on Ctrl-C) and
 * SIGUSR2 (which it forwards) turned into the SIGINT the tools handle.
 */
function prepareRank(ranks: Ranks): void {
  if (
    ranks.world.localSize > 1 &&
    Deno.env.get("MEC_THREADS") === undefined &&
    Deno.env.get("MEC_BLAS_THREADS") === undefined
  ) {
    const cores = Math.max(1, navigator.hardwareConcurrency || 1);
    const threads = Math.max(1, Math.floor(cores / ranks.world.localSize));
    Deno.env.set("MEC_THREADS", String(threads));
  }
  if (!ranks.isRoot) console.log = () => {};
  for (const signal of ["SIGTERM", "SIGUSR2"] as const) {
    Deno.addSignalListener(signal, () => Deno.kill(Deno.pid, "SIGINT"));
  }
}

/** The per-rank batch of a global batch, or a usage error. */
export function perRankBatch(
  batchSize: number,
  ranks: Ranks | null,
  flag = "-b",
): number {
  if (ranks === null) return batchSize;
  if (batchSize % ranks.size !== 0) {
    const below = batchSize - batchSize % ranks.size;
    throw new UsageError(
      `${flag} ${batchSize} is the global batch and must divide among ${ranks.size} ranks; use a multiple of ${ranks.size}, such as ${
        below > 0 ? below : ranks.size
      } or ${below + ranks.size}.`,
    );
  }
  return batchSize / ranks.size;
}

/** Says once, on rank 0, how the run is spread. */
export function describeRanks(
  ranks: Ranks,
  device: string,
  engine: string,
  batch: number,
): string {
  return `${ranks.size} ranks (${engine}${
    device === "cpu" ? ", CPU processes" : ", one GPU each"
  }); global batch ${batch * ranks.size} = ${ranks.size} x ${batch}.`;
}

/** The log of ranks other than 0: they write none. */
export function silentLog(): {
  write: () => void;
  [Symbol.dispose]: () => void;
} {
  return { write: () => {}, [Symbol.dispose]: () => {} };
}

/**
 * The model's data parallelism: the collectives for its device, SyncBN in
 * every batch norm (teacher included, as `convert_sync_batchnorm` converts
 * the whole model), rank 0's weights and buffers on every rank, and the
 * gradient buckets over the trainable parameters.
 */
export async function dataParallel(
  ranks: Ranks,
  backend: Backend,
  model: Module,
  localBatch: number,
): Promise<DataParallel> {
  const comm = await ranks.communicator(backend);
  syncBatchNorms(model, comm);
  broadcastState(comm, model);
  const trainable = model.namedParameters().filter(([, p]) => p.requiresGrad);
  const parallel = new DataParallel(ranks, comm, trainable);
  console.log(
    `${
      describeRanks(ranks, backend.name, comm.engine, localBatch)
    } Gradients: ${parallel.buckets.buckets.length} buckets, ${
      (parallel.gradientBytes / 2 ** 20).toFixed(1)
    } MiB all-reduced per step.`,
  );
  return parallel;
}

/**
 * The linear probe's data parallelism: SyncBN in the head (the backbone is
 * in eval mode, where nothing is synchronised), rank 0's network on every
 * rank, and gradient buckets over the head's trainable parameters.
 */
export async function probeParallel(
  ranks: Ranks,
  backend: Backend,
  net: Module,
  head: Module,
  localBatch: number,
): Promise<DataParallel> {
  const comm = await ranks.communicator(backend);
  syncBatchNorms(head, comm);
  broadcastState(comm, net);
  const trainable = head.namedParameters().filter(([, p]) => p.requiresGrad);
  console.log(describeRanks(ranks, backend.name, comm.engine, localBatch));
  return new DataParallel(ranks, comm, trainable);
}
