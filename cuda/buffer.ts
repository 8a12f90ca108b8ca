/**
 * Device memory as the CUDA backend hands it out: a block of the caching
 * allocator seen as `length` float32 elements.
 *
 * @module
 */

import type { DataBuffer } from "../nn/backend.ts";

/** A range of device memory owned by the caching allocator. */
export interface Block {
  /** Device address of the first byte (`CUdeviceptr`). */
  readonly address: bigint;
  /** Bytes reserved for it (its size class, at least what was asked). */
  readonly size: number;
}

/** float32 elements on one GPU. */
export class CudaBuffer implements DataBuffer {
  constructor(
    readonly device: string,
    readonly length: number,
    readonly block: Block,
  ) {}

  get address(): bigint {
    return this.block.address;
  }
}

/** The buffer as a CudaBuffer; a buffer of another device is a TypeError. */
export function cudaBuffer(buffer: DataBuffer): CudaBuffer {
  if (!(buffer instanceof CudaBuffer)) {
    throw new TypeError(
      `the CUDA backend was given a buffer of device "${buffer.device}"`,
    );
  }
  return buffer;
}

/** The device address of element `offset` of a buffer of this backend. */
export function addr(buffer: DataBuffer, offset = 0): bigint {
  return cudaBuffer(buffer).block.address + BigInt(offset * 4);
}
