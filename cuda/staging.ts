/**
 * Pinned host staging for `Backend.write` and `Backend.read`: host data goes
 * to the device, and back, through a few page-locked chunks, with the copies
 * queued on the backend's one stream.
 *
 * A JavaScript typed array is pageable memory, from which the driver cannot
 * copy asynchronously (it would stage and synchronize itself). So a write
 * copies the array into a pinned chunk and queues `cuMemcpyHtoDAsync_v2`
 * from there; the array may be reused as soon as `write` returns, and the
 * host goes on while the device copies.
 *
 * - **Chunks.** Two chunks of 16 MiB by default, allocated on first use. A
 *   transfer larger than a chunk is split into pieces that alternate between
 *   them, so the host fills one while the device copies from the other.
 * - **Events.** After each copy, the chunk's event is recorded on the
 *   stream. Small writes are packed one after another in the current chunk
 *   (each piece starting on a 64-byte line), which needs no wait: their
 *   bytes do not overlap those of copies still queued. Only when a write
 *   moves on to the next chunk does the host wait on that chunk's event, so
 *   that it never overwrites bytes a queued copy has yet to read. A write
 *   therefore waits for at most one earlier copy, never for the stream.
 * - **Reads.** Stream order makes a device-to-host copy run after every op
 *   queued before it; waiting on the event recorded after the copy therefore
 *   sees all of them (the read's synchronization). Pieces of a long read are
 *   queued into alternating chunks and drained into the new array as each
 *   chunk's event completes. A read of 0 elements synchronizes the stream,
 *   so that a read always returns after the work queued before it.
 *
 * @module
 */

import {
  copyDeviceToHostAsync,
  copyHostToDeviceAsync,
  EVENT_DISABLE_TIMING,
  eventCreate,
  eventDestroy,
  eventRecord,
  eventSynchronize,
  hostAlloc,
  hostFree,
  streamSynchronize,
} from "./driver.ts";

/** The driver calls staging makes, injected so that tests run without a GPU. */
export interface StagingDriver {
  /** `cuMemHostAlloc`: page-locked memory and an ArrayBuffer over it. */
  hostAlloc(
    bytes: number,
  ): { pointer: Deno.PointerObject; buffer: ArrayBuffer };
  hostFree(p: Deno.PointerObject): void;
  copyHostToDeviceAsync(
    dst: bigint,
    src: Deno.PointerValue,
    bytes: number,
    stream: Deno.PointerValue,
  ): void;
  copyDeviceToHostAsync(
    dst: Deno.PointerValue,
    src: bigint,
    bytes: number,
    stream: Deno.PointerValue,
  ): void;
  streamSynchronize(stream: Deno.PointerValue): void;
  eventCreate(): Deno.PointerValue;
  eventRecord(event: Deno.PointerValue, stream: Deno.PointerValue): void;
  eventSynchronize(event: Deno.PointerValue): void;
  eventDestroy(event: Deno.PointerValue): void;
}

/** {@link StagingDriver} bound to the real driver (cuda/driver.ts). */
export function driverStaging(): StagingDriver {
  return {
    hostAlloc,
    hostFree,
    copyHostToDeviceAsync,
    copyDeviceToHostAsync,
    streamSynchronize,
    eventCreate: () => eventCreate(EVENT_DISABLE_TIMING),
    eventRecord,
    eventSynchronize,
    eventDestroy,
  };
}

/** Options of {@link Staging}. */
export interface StagingOptions {
  /** Bytes of each pinned chunk, a multiple of 64; 16 MiB unless given. */
  chunkBytes?: number;
  /** Number of pinned chunks, at least 1; 2 unless given. */
  chunks?: number;
}

/** Where pieces start inside a chunk: a cache line. */
const PIECE_ALIGN = 64;

interface Chunk {
  pointer: Deno.PointerObject;
  bytes: Uint8Array<ArrayBuffer>;
  event: Deno.PointerValue;
  /** Whether a copy from or to it was queued since its event last completed. */
  pending: boolean;
}

/** A piece of a read queued into a chunk and not yet copied out of it. */
interface QueuedRead {
  chunk: Chunk;
  /** Byte offset of the piece in the result. */
  offset: number;
  bytes: number;
}

/**
 * Host-to-device and device-to-host copies through pinned chunks, on one
 * stream.
 *
 * @example
 * ```ts ignore
 * const staging = new Staging(driverStaging(), stream);
 * staging.write(buffer.address, new Float32Array([1, 2, 3]));
 * staging.read(buffer.address, 3); // Float32Array [1, 2, 3]
 * staging.dispose();
 * ```
 */
export class Staging {
  readonly #driver: StagingDriver;
  readonly #stream: Deno.PointerValue;
  readonly #chunkBytes: number;
  readonly #chunkCount: number;
  readonly #chunks: Chunk[] = [];
  /** The chunk writes are packed into, and the first free byte in it. */
  #current = 0;
  #cursor = 0;
  #disposed = false;

  constructor(
    driver: StagingDriver,
    stream: Deno.PointerValue,
    options: StagingOptions = {},
  ) {
    const chunkBytes = options.chunkBytes ?? 16 * 1024 * 1024;
    const chunks = options.chunks ?? 2;
    if (
      !Number.isSafeInteger(chunkBytes) || chunkBytes <= 0 ||
      chunkBytes % PIECE_ALIGN !== 0
    ) {
      throw new RangeError(
        `chunkBytes must be a positive multiple of ${PIECE_ALIGN}, not ${chunkBytes}`,
      );
    }
    if (!Number.isSafeInteger(chunks) || chunks < 1) {
      throw new RangeError(`chunks must be a whole number >= 1, not ${chunks}`);
    }
    this.#driver = driver;
    this.#stream = stream;
    this.#chunkBytes = chunkBytes;
    this.#chunkCount = chunks;
  }

  /** Bytes of pinned memory held now. */
  get pinnedBytes(): number {
    return this.#chunks.length * this.#chunkBytes;
  }

  /**
   * Queues a copy of `data` to device address `dst`; returns once `data` may
   * be reused (it was copied into pinned memory), usually before the device
   * has copied it.
   */
  write(dst: bigint, data: Float32Array): void {
    this.#checkOpen();
    const source = new Uint8Array(
      data.buffer,
      data.byteOffset,
      data.byteLength,
    );
    let done = 0;
    while (done < source.length) {
      if (this.#cursor >= this.#chunkBytes) this.#advance();
      const chunk = this.#chunk(this.#current);
      const n = Math.min(source.length - done, this.#chunkBytes - this.#cursor);
      chunk.bytes.set(source.subarray(done, done + n), this.#cursor);
      this.#driver.copyHostToDeviceAsync(
        dst + BigInt(done),
        this.#cursor === 0
          ? chunk.pointer
          : Deno.UnsafePointer.offset(chunk.pointer, this.#cursor),
        n,
        this.#stream,
      );
      this.#driver.eventRecord(chunk.event, this.#stream);
      chunk.pending = true;
      this.#cursor = Math.ceil((this.#cursor + n) / PIECE_ALIGN) * PIECE_ALIGN;
      done += n;
    }
  }

  /**
   * Copies `length` floats from device address `src` into a new host array,
   * after every op queued on the stream before it has completed.
   */
  read(src: bigint, length: number): Float32Array<ArrayBuffer> {
    this.#checkOpen();
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(
        `a read needs a whole number of elements >= 0, not ${length}`,
      );
    }
    const result = new Float32Array(length);
    const total = result.byteLength;
    if (total === 0) {
      this.#driver.streamSynchronize(this.#stream);
      this.#idle();
      return result;
    }
    const bytes = new Uint8Array(result.buffer);
    const queued: (QueuedRead | undefined)[] = new Array(this.#chunkCount);
    let k = 0;
    for (let offset = 0; offset < total; offset += this.#chunkBytes) {
      const slot = k++ % this.#chunkCount;
      // Drain the piece this chunk holds before it receives the next one.
      const previous = queued[slot];
      if (previous) this.#drain(previous, bytes);
      const chunk = this.#chunk(slot);
      const n = Math.min(total - offset, this.#chunkBytes);
      // Stream order: this copy runs after any copy still queued from the
      // chunk, so it never overwrites bytes a write has yet to send.
      this.#driver.copyDeviceToHostAsync(
        chunk.pointer,
        src + BigInt(offset),
        n,
        this.#stream,
      );
      this.#driver.eventRecord(chunk.event, this.#stream);
      chunk.pending = true;
      queued[slot] = { chunk, offset, bytes: n };
    }
    // Drain in queue order: the oldest piece completes first.
    for (let i = 0; i < this.#chunkCount; i++) {
      const piece = queued[(k + i) % this.#chunkCount];
      if (piece) this.#drain(piece, bytes);
    }
    this.#idle();
    return result;
  }

  /**
   * Waits for the copies still queued from pinned memory, then frees it and
   * the events. The staging cannot be used afterwards.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const chunk of this.#chunks) {
      if (chunk.pending) this.#driver.eventSynchronize(chunk.event);
      chunk.pending = false;
    }
    for (const chunk of this.#chunks) {
      this.#driver.eventDestroy(chunk.event);
      this.#driver.hostFree(chunk.pointer);
    }
    this.#chunks.length = 0;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #checkOpen(): void {
    if (this.#disposed) throw new Error("this staging was disposed");
  }

  /** Chunk `index`, allocated (with its event) on first use. */
  #chunk(index: number): Chunk {
    while (this.#chunks.length <= index) {
      const { pointer, buffer } = this.#driver.hostAlloc(this.#chunkBytes);
      let event: Deno.PointerValue;
      try {
        event = this.#driver.eventCreate();
      } catch (e) {
        this.#driver.hostFree(pointer);
        throw e;
      }
      this.#chunks.push({
        pointer,
        bytes: new Uint8Array(buffer, 0, this.#chunkBytes),
        event,
        pending: false,
      });
    }
    return this.#chunks[index];
  }

  /** Moves writes on to the next chunk, once its queued copies are done. */
  #advance(): void {
    this.#current = (this.#current + 1) % this.#chunkCount;
    this.#cursor = 0;
    const next = this.#chunks[this.#current];
    if (next?.pending) {
      this.#driver.eventSynchronize(next.event);
      next.pending = false;
    }
  }

  /** Waits for a queued read piece and copies it into the result. */
  #drain(piece: QueuedRead, result: Uint8Array): void {
    const { chunk } = piece;
    if (chunk.pending) {
      this.#driver.eventSynchronize(chunk.event);
      chunk.pending = false;
    }
    result.set(chunk.bytes.subarray(0, piece.bytes), piece.offset);
  }

  /** After a read every queued copy is done: writes start a fresh chunk. */
  #idle(): void {
    for (const chunk of this.#chunks) chunk.pending = false;
    this.#current = 0;
    this.#cursor = 0;
  }
}
