/**
 * Collectives between GPUs through NCCL, on the CUDA backend's buffers and
 * its stream. Rank 0 makes the NCCL unique id and Open MPI broadcasts it;
 * every rank then joins the NCCL communicator with its MPI rank, so MPI
 * launches and bootstraps and NCCL moves the data.
 *
 * Collectives are queued on the backend's one stream, in order with the
 * kernels around them: a collective needs no wait on the host, and what
 * reads its result runs after it. (On one stream the GPU runs a bucket's
 * all-reduce between the backward kernels queued before and after it.)
 *
 * @module
 */

import type { CudaBackend } from "../cuda/backend.ts";
import { addr, cudaBuffer } from "../cuda/buffer.ts";
import { NcclComm, SUM, UNIQUE_ID_BYTES, uniqueId } from "../cuda/nccl.ts";
import type { DataBuffer } from "../nn/backend.ts";
import type { Communicator, Pending } from "./communicator.ts";
import type { MpiWorld } from "./mpi.ts";

const queued: Pending = { test: () => true, wait: () => {} };

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

  /** Joins every rank's GPU (blocks until all ranks have joined). */
  constructor(readonly world: MpiWorld, readonly backend: CudaBackend) {
    const id = sharedUniqueId(world);
    this.#comm = NcclComm.initRank(world.size, id, world.rank);
    this.rank = world.rank;
    this.size = world.size;
  }

  allReduce(buffer: DataBuffer, offset = 0, length?: number): void {
    const n = length ?? buffer.length - offset;
    checkRange(buffer, offset, n);
    const at = addr(buffer, offset);
    this.#comm.allReduce(at, at, n, SUM, this.backend.stream);
  }

  startAllReduce(buffer: DataBuffer, offset: number, length: number): Pending {
    this.allReduce(buffer, offset, length);
    return queued;
  }

  allGather(send: DataBuffer, recv: DataBuffer, count: number): void {
    checkRange(send, 0, count);
    checkRange(recv, 0, count * this.size);
    this.#comm.allGather(
      addr(send),
      addr(recv),
      count,
      this.backend.stream,
    );
  }

  broadcast(buffer: DataBuffer, root = 0): void {
    const at = addr(buffer);
    this.#comm.broadcast(at, at, buffer.length, root, this.backend.stream);
  }

  /** Throws the error a queued collective met, if any. */
  checkAsync(): void {
    this.#comm.checkAsync();
  }

  /** Frees the communicator after the queued work (or at once: `abort`). */
  destroy(): void {
    this.#comm.destroy();
  }

  abort(): void {
    this.#comm.abort();
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
