/**
 * Collectives between GPUs through NCCL, on the CUDA backend's buffers and
 * its stream. Rank 0 makes the NCCL unique id and Open MPI broadcasts it;
 * every rank then joins the NCCL communicator with its MPI rank, so MPI
 * launches and bootstraps and NCCL moves the data.
 *
 * Every collective runs on one communication stream, in the order it was
 * issued (NCCL needs one order on every rank), fenced by events against
 * the backend's compute stream: it starts after the kernels queued before
 * it, and the kernels queued after a blocking collective wait for it, all
 * without blocking the host. A gradient bucket's all-reduce
 * (`startAllReduce`) fences only its start: the backward kernels queued
 * after it run beside it, and `wait()` makes the compute stream wait for
 * it before the optimiser reads the averages.
 *
 * NCCL's collectives have no timeout of their own: one waiting for a rank
 * that died waits for ever, and so would the host in its next read. So the
 * communicator makes the backend's host waits poll (dist/poll.ts) with the
 * world's deadline, asking NCCL for an asynchronous error between polls;
 * past the deadline it aborts the NCCL communicator (which ends its queued
 * kernels) and throws, and the tool's error path stops every rank.
 *
 * @module
 */

import type { CudaBackend } from "../cuda/backend.ts";
import { addr, cudaBuffer } from "../cuda/buffer.ts";
import * as cu from "../cuda/driver.ts";
import { NcclComm, SUM, UNIQUE_ID_BYTES, uniqueId } from "../cuda/nccl.ts";
import type { DataBuffer } from "../nn/backend.ts";
import type { Communicator, Pending } from "./communicator.ts";
import type { MpiWorld } from "./mpi.ts";
import { pollUntil } from "./poll.ts";

/**
 * The NCCL unique id: made by rank 0 (no GPU work), broadcast to all ranks
 * over MPI.
 */
export function sharedUniqueId(world: MpiWorld): Uint8Array<ArrayBuffer> {
  const id = world.rank === 0 ? uniqueId() : new Uint8Array(UNIQUE_ID_BYTES);
  world.broadcast(id, 0, "the NCCL unique id");
  return id;
}

export class NcclCommunicator implements Communicator {
  readonly engine = "NCCL";
  readonly rank: number;
  readonly size: number;
  readonly #comm: NcclComm;
  /** The stream every collective runs on. */
  readonly #stream: Deno.PointerValue;

  /** Joins every rank's GPU (blocks until all ranks have joined). */
  constructor(readonly world: MpiWorld, readonly backend: CudaBackend) {
    const id = sharedUniqueId(world);
    this.#comm = NcclComm.initRank(world.size, id, world.rank);
    this.#stream = cu.streamCreate(cu.STREAM_NON_BLOCKING);
    this.rank = world.rank;
    this.size = world.size;
    backend.setHostWait((event) => this.#waitForGpu(event));
  }

  /**
   * Waits for `event` within the world's timeout, NCCL's asynchronous
   * errors checked between polls; aborts the communicator on either.
   */
  #waitForGpu(event: Deno.PointerValue): void {
    try {
      pollUntil(() => cu.eventQuery(event), {
        rank: this.rank,
        what: "the GPU's work (an NCCL collective may be waiting for a rank)",
        timeoutSeconds: this.world.timeoutSeconds,
        check: () => this.#comm.checkAsync(),
      });
    } catch (e) {
      // A timeout, an NCCL error or a failed query: the communicator is
      // unusable. Aborting ends the collectives the other ranks will never
      // join, so that the stream (and the process's exit) does not wait.
      this.abort();
      throw e;
    }
  }

  allReduce(buffer: DataBuffer, offset = 0, length?: number): void {
    this.startAllReduce(buffer, offset, length ?? buffer.length - offset)
      .wait();
  }

  startAllReduce(buffer: DataBuffer, offset: number, length: number): Pending {
    checkRange(buffer, offset, length);
    const at = addr(buffer, offset);
    return this.#collective((stream) =>
      this.#comm.allReduce(at, at, length, SUM, stream)
    );
  }

  allGather(send: DataBuffer, recv: DataBuffer, count: number): void {
    checkRange(send, 0, count);
    checkRange(recv, 0, count * this.size);
    this.#collective((stream) =>
      this.#comm.allGather(addr(send), addr(recv), count, stream)
    ).wait();
  }

  broadcast(buffer: DataBuffer, root = 0): void {
    const at = addr(buffer);
    this.#collective((stream) =>
      this.#comm.broadcast(at, at, buffer.length, root, stream)
    ).wait();
  }

  /**
   * Queues a collective on the communication stream after the compute
   * stream's queued work; `wait()` makes the compute stream wait for it.
   */
  #collective(queue: (stream: Deno.PointerValue) => void): Pending {
    const start = cu.eventCreate(cu.EVENT_DISABLE_TIMING);
    cu.eventRecord(start, this.backend.stream);
    cu.streamWaitEvent(this.#stream, start);
    // Destroying a recorded event frees it once its work is done.
    cu.eventDestroy(start);
    queue(this.#stream);
    const end = cu.eventCreate(cu.EVENT_DISABLE_TIMING);
    cu.eventRecord(end, this.#stream);
    let waited = false;
    return {
      test: () => true,
      wait: () => {
        if (waited) return;
        waited = true;
        cu.streamWaitEvent(this.backend.stream, end);
        cu.eventDestroy(end);
      },
    };
  }

  /** Throws the error a queued collective met, if any. */
  checkAsync(): void {
    this.#comm.checkAsync();
  }

  /** Frees the communicator after the queued work (or at once: `abort`). */
  destroy(): void {
    this.backend.setHostWait(null);
    this.#comm.destroy();
    cu.streamDestroy(this.#stream);
  }

  /** Ends the communicator and its queued collectives at once. */
  abort(): void {
    this.backend.setHostWait(null);
    try {
      this.#comm.abort();
    } catch {
      // Already failing: the caller reports the first error.
    }
  }
}

function checkRange(buffer: DataBuffer, offset: number, length: number): void {
  cudaBuffer(buffer);
  if (offset < 0 || length < 0 || offset + length > buffer.length) {
    throw new RangeError(
      `a collective over elements ${offset}..${
        offset + length
      } of a buffer of ${buffer.length}`,
    );
  }
}
