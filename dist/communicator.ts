/**
 * Collectives over the buffers of a backend, between the ranks of a
 * data-parallel run. Two implementations: Open MPI for host memory (the CPU
 * backend, and any backend by staging through the host), NCCL for GPU
 * memory (dist/nccl_comm.ts). Everything above (the gather, SyncBN, the
 * gradient buckets) is written once against this interface.
 *
 * @module
 */

import { CpuBuffer } from "../cpu/backend.ts";
import type { Backend, DataBuffer } from "../nn/backend.ts";
import type { MpiWorld } from "./mpi.ts";

/** A collective in flight: `test()` moves it on, `wait()` completes it. */
export interface Pending {
  /** True once complete (MPI progresses only inside such calls). */
  test(): boolean;
  wait(): void;
}

/** The collectives data parallelism needs, on one backend's buffers. */
export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** Engine name for logs: "Open MPI" or "NCCL". */
  readonly engine: string;
  /** In-place float32 sum over ranks of `length` elements from `offset`. */
  allReduce(buffer: DataBuffer, offset?: number, length?: number): void;
  /** Starts the same sum; the buffer must not be touched until it completes. */
  startAllReduce(buffer: DataBuffer, offset: number, length: number): Pending;
  /** `recv = rank 0's send ++ rank 1's ++ ...`, `count` elements per rank. */
  allGather(send: DataBuffer, recv: DataBuffer, count: number): void;
  /** Root's elements into every rank's buffer. */
  broadcast(buffer: DataBuffer, root?: number): void;
}

const done: Pending = { test: () => true, wait: () => {} };

/**
 * Collectives through Open MPI. CPU buffers go to MPI as they are; the
 * buffers of other backends are copied to the host and back.
 */
export class MpiCommunicator implements Communicator {
  readonly engine = "Open MPI";
  constructor(readonly world: MpiWorld, readonly backend: Backend) {}

  get rank(): number {
    return this.world.rank;
  }

  get size(): number {
    return this.world.size;
  }

  allReduce(buffer: DataBuffer, offset = 0, length?: number): void {
    const n = length ?? buffer.length - offset;
    const host = this.#host(buffer, offset, n);
    this.world.allReduce(host.data, "sum");
    host.writeBack();
  }

  startAllReduce(buffer: DataBuffer, offset: number, length: number): Pending {
    const host = this.#host(buffer, offset, length);
    if (host.direct) return this.world.startAllReduce(host.data);
    // Staged: there is no host memory to leave the collective in flight on.
    this.world.allReduce(host.data, "sum");
    host.writeBack();
    return done;
  }

  allGather(send: DataBuffer, recv: DataBuffer, count: number): void {
    const src = this.#host(send, 0, count);
    const dst = this.#host(recv, 0, count * this.size);
    this.world.allGather(src.data, dst.data);
    dst.writeBack();
  }

  broadcast(buffer: DataBuffer, root = 0): void {
    const host = this.#host(buffer, 0, buffer.length);
    this.world.broadcast(host.data, root);
    host.writeBack();
  }

  /** The elements as a host array, and how to put them back. */
  #host(buffer: DataBuffer, offset: number, length: number): {
    data: Float32Array;
    direct: boolean;
    writeBack: () => void;
  } {
    if (offset < 0 || length < 0 || offset + length > buffer.length) {
      throw new RangeError(
        `a collective over elements ${offset}..${
          offset + length
        } of a buffer of ${buffer.length}`,
      );
    }
    if (buffer instanceof CpuBuffer) {
      return {
        data: buffer.data.subarray(offset, offset + length),
        direct: true,
        writeBack: () => {},
      };
    }
    const data = this.backend.read(buffer, offset, length);
    return {
      data,
      direct: false,
      writeBack: () => this.backend.write(buffer, data, offset),
    };
  }
}
