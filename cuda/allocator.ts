/**
 * The caching allocator of the CUDA backend: device memory is taken from the
 * driver once and handed out again by size class, so that after the first
 * training step no op waits on `cuMemAlloc_v2` (which costs tens of
 * microseconds and may synchronize the device) and memory stays flat.
 *
 * It is PyTorch's CUDA caching allocator, simplified:
 *
 * - **Size classes.** A request is rounded up to a multiple of 512 bytes when
 *   it is at most 1 MiB, and to a multiple of 2 MiB above that. 512 bytes is
 *   PyTorch's small rounding: sizes that differ by a few elements (a bias, a
 *   batch-norm statistic) share a class at a waste of under 512 bytes each.
 *   Above 1 MiB, 2 MiB is PyTorch's rounding and the page size in which the
 *   driver backs large allocations, so the class costs little or no device
 *   memory beyond the exact size, and activations whose sizes differ
 *   slightly share a class.
 * - **One block, one driver allocation.** A block is never split or carved,
 *   so every address is one `cuMemAlloc_v2` returned: aligned to at least 256
 *   bytes, more than the 16 that float4 kernels need. Each block goes back to
 *   the driver on its own in `emptyCache`.
 * - **Reuse.** A freed block goes to the free list of its size. A request
 *   takes a cached block of exactly its class when there is one, with no
 *   driver call; otherwise the smallest cached block of at most twice its
 *   class and at most 16 MiB more (`maxWaste`), so that a step whose sizes
 *   shift a little reuses what the previous step left instead of growing the
 *   cache, while a small request never pins a large block. Only when nothing
 *   fits is the driver asked.
 * - **Zero bytes.** A request of 0 bytes gets a distinct block of the
 *   smallest class (512 bytes): every buffer then has its own valid address,
 *   and freeing it twice is caught like any other double free.
 * - **Out of memory.** When the driver answers `CUDA_ERROR_OUT_OF_MEMORY`,
 *   every cached block is released and the allocation is tried once more;
 *   if that fails too, a {@link CudaOutOfMemoryError} says in one sentence
 *   what was asked, what this process holds and what the device has left.
 * - **Ownership.** Freeing a block twice, or one this allocator did not hand
 *   out, throws: it is a bug in the caller, and ignoring it would hand one
 *   block to two tensors.
 *
 * **One stream.** The backend queues every kernel, cuBLAS/cuDNN call and
 * copy on one stream, so a block freed on the host may be handed out again
 * at once, while work that reads it is still queued: whatever the next owner
 * queues on that stream runs after the earlier work has finished. Work on a
 * second stream (NCCL, a copy engine of its own) would need an event
 * recorded at free time and waited for before reuse, which this allocator
 * does not do. Before blocks go back to the driver, `RawMemory.synchronize`
 * waits for the queued work, because `cuMemFree_v2` only *may* synchronize.
 *
 * @module
 */

import type { Block } from "./buffer.ts";
import type { MemoryInfo } from "../nn/backend.ts";
import { CudaError } from "./ffi.ts";
import {
  contextSynchronize,
  driverStatusString,
  memAllocStatus,
  memFree,
  memoryInfo,
} from "./driver.ts";

/** `CUDA_ERROR_OUT_OF_MEMORY`, the status `cuMemAlloc_v2` fails with. */
export const CUDA_ERROR_OUT_OF_MEMORY = 2;

/** The raw device memory calls, injected so that tests run without a GPU. */
export interface RawMemory {
  /** `cuMemAlloc_v2`: its status (0 on success) and the address. */
  alloc(bytes: number): { status: number; address: bigint };
  /** `cuMemFree_v2`; throws on failure. */
  free(address: bigint): void;
  /** `cuMemGetInfo_v2`: free and total bytes of the device. */
  info(): { free: number; total: number };
  /** The driver's name and description of a status, for error messages. */
  describe?(status: number): string;
  /** Waits for all queued device work; called before blocks are freed. */
  synchronize?(): void;
}

/** {@link RawMemory} bound to the real driver (the current context's device). */
export function driverMemory(): RawMemory {
  return {
    alloc: memAllocStatus,
    free: memFree,
    info: memoryInfo,
    describe: driverStatusString,
    synchronize: contextSynchronize,
  };
}

/** Options of {@link CachingAllocator}. */
export interface CachingAllocatorOptions {
  /**
   * Most bytes by which a reused block may exceed the request's class
   * (besides the bound of twice the class); 16 MiB unless given.
   */
  maxWaste?: number;
  /** The advice that ends the out-of-memory sentence. */
  oomHint?: string;
}

/** What the allocator holds, in bytes, and how often it called the driver. */
export interface AllocatorStats {
  /** Bytes of blocks handed out and not yet freed, counted by block size. */
  allocated: number;
  /** Bytes the callers asked for in those blocks (at most `allocated`). */
  requested: number;
  /** Bytes of freed blocks held for reuse. */
  cached: number;
  /** Bytes held from the driver: `allocated + cached`. */
  reserved: number;
  /** The highest `allocated` since creation or `resetPeak`. */
  peakAllocated: number;
  /** The highest `reserved` since creation or `resetPeak`. */
  peakReserved: number;
  /** Live blocks handed out. */
  blocks: number;
  /** Successful `cuMemAlloc_v2` calls. */
  driverAllocs: number;
  /** `cuMemFree_v2` calls. */
  driverFrees: number;
  /** Requests served from the cache. */
  cacheHits: number;
  /** Times the driver ran out of memory and the cache was emptied to retry. */
  oomRetries: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Rounding of requests up to 1 MiB. */
export const SMALL_ROUND = 512;
/** Largest request rounded to {@link SMALL_ROUND}. */
export const SMALL_LIMIT = MiB;
/** Rounding of requests above {@link SMALL_LIMIT}. */
export const LARGE_ROUND = 2 * MiB;

/** The size class of a request: the block size it is served with. */
export function sizeClass(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new RangeError(
      `a device allocation needs a whole number of bytes >= 0, not ${bytes}`,
    );
  }
  if (bytes <= SMALL_LIMIT) {
    return Math.max(1, Math.ceil(bytes / SMALL_ROUND)) * SMALL_ROUND;
  }
  return Math.ceil(bytes / LARGE_ROUND) * LARGE_ROUND;
}

/** Bytes in binary units with two decimals: "2.00 GiB", "3.50 MiB". */
export function formatBytes(bytes: number): string {
  if (bytes >= GiB) return `${(bytes / GiB).toFixed(2)} GiB`;
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(2)} MiB`;
  if (bytes >= KiB) return `${(bytes / KiB).toFixed(2)} KiB`;
  return `${bytes} bytes`;
}

/** The device had no room for an allocation, even after the cache was emptied. */
export class CudaOutOfMemoryError extends Error {
  constructor(
    /** Bytes asked for. */
    readonly requested: number,
    /** Bytes of live blocks when it failed. */
    readonly allocated: number,
    /** Bytes still cached when it failed (0 unless the release failed). */
    readonly cached: number,
    /** Bytes of cache released to retry. */
    readonly released: number,
    /** Free and total bytes of the device, from `cuMemGetInfo_v2`. */
    readonly deviceFree: number,
    readonly deviceTotal: number,
    hint: string,
  ) {
    super(
      `CUDA out of memory: tried to allocate ${formatBytes(requested)} with ${
        formatBytes(allocated)
      } in use and ${formatBytes(cached)} cached by this process (${
        formatBytes(released)
      } of cache released to retry) and ${formatBytes(deviceFree)} free of ${
        formatBytes(deviceTotal)
      } on the device; ${hint}.`,
    );
    this.name = "CudaOutOfMemoryError";
  }
}

/**
 * Hands out device blocks, keeps freed ones for reuse, and releases them to
 * the driver on `emptyCache` or when the driver runs out of memory.
 *
 * @example
 * ```ts ignore
 * const allocator = new CachingAllocator(driverMemory());
 * const block = allocator.alloc(4 * 1000);
 * allocator.free(block); // cached: the next alloc(4000) gets it back
 * allocator.emptyCache(); // cuMemFree_v2 for every cached block
 * ```
 */
export class CachingAllocator {
  readonly #raw: RawMemory;
  readonly #maxWaste: number;
  readonly #oomHint: string;
  /** Free blocks by size. */
  readonly #free = new Map<number, Block[]>();
  /** The sizes that have free blocks, ascending. */
  readonly #freeSizes: number[] = [];
  /** Every free block, to tell a double free from a foreign block. */
  readonly #cachedBlocks = new Set<Block>();
  /** Live blocks and the bytes asked for each. */
  readonly #live = new Map<Block, number>();
  /** Blocks given back to the driver, for a precise double-free message. */
  readonly #released = new WeakSet<Block>();
  #allocated = 0;
  #requested = 0;
  #cached = 0;
  #peakAllocated = 0;
  #peakReserved = 0;
  #driverAllocs = 0;
  #driverFrees = 0;
  #cacheHits = 0;
  #oomRetries = 0;

  constructor(raw: RawMemory, options: CachingAllocatorOptions = {}) {
    this.#raw = raw;
    this.#maxWaste = options.maxWaste ?? 16 * MiB;
    if (!(this.#maxWaste >= 0)) {
      throw new RangeError(`maxWaste must be >= 0, not ${this.#maxWaste}`);
    }
    this.#oomHint = options.oomHint ?? "try a smaller --batch-size";
  }

  /** A block of at least `bytes` bytes with undefined contents. */
  alloc(bytes: number): Block {
    const size = sizeClass(bytes);
    const block = this.#takeCached(size) ?? this.#allocFromDriver(size, bytes);
    this.#live.set(block, bytes);
    this.#allocated += block.size;
    this.#requested += bytes;
    this.#peakAllocated = Math.max(this.#peakAllocated, this.#allocated);
    this.#peakReserved = Math.max(
      this.#peakReserved,
      this.#allocated + this.#cached,
    );
    return block;
  }

  /**
   * Returns a block to the cache (not to the driver). It may be handed out
   * again at once: see the module's note on the one stream.
   */
  free(block: Block): void {
    const bytes = this.#live.get(block);
    if (bytes === undefined) {
      const what = `block of ${block.size} bytes at 0x${
        block.address.toString(16)
      }`;
      if (this.#cachedBlocks.has(block) || this.#released.has(block)) {
        throw new Error(`double free of the device ${what}`);
      }
      throw new Error(
        `the device ${what} was not handed out by this allocator`,
      );
    }
    this.#live.delete(block);
    this.#allocated -= block.size;
    this.#requested -= bytes;
    this.#cache(block);
  }

  /** Gives every cached block back to the driver (`cuMemFree_v2`). */
  emptyCache(): void {
    if (this.#cachedBlocks.size === 0) return;
    this.#raw.synchronize?.();
    // One block at a time, so that a failing cuMemFree_v2 leaves the counts
    // true for the blocks not yet released.
    const sizes = this.#freeSizes;
    while (sizes.length > 0) {
      const size = sizes[sizes.length - 1];
      const list = this.#free.get(size)!;
      const block = list.pop()!;
      if (list.length === 0) {
        this.#free.delete(size);
        sizes.pop();
      }
      this.#cachedBlocks.delete(block);
      this.#cached -= block.size;
      this.#released.add(block);
      this.#driverFrees++;
      this.#raw.free(block.address);
    }
  }

  stats(): AllocatorStats {
    return {
      allocated: this.#allocated,
      requested: this.#requested,
      cached: this.#cached,
      reserved: this.#allocated + this.#cached,
      peakAllocated: this.#peakAllocated,
      peakReserved: this.#peakReserved,
      blocks: this.#live.size,
      driverAllocs: this.#driverAllocs,
      driverFrees: this.#driverFrees,
      cacheHits: this.#cacheHits,
      oomRetries: this.#oomRetries,
    };
  }

  /** `Backend.memory()`: allocated and cached bytes. */
  memory(): MemoryInfo {
    return { allocated: this.#allocated, cached: this.#cached };
  }

  /** Starts the peaks again from what is held now. */
  resetPeak(): void {
    this.#peakAllocated = this.#allocated;
    this.#peakReserved = this.#allocated + this.#cached;
  }

  /** The smallest cached block that serves class `size`, or undefined. */
  #takeCached(size: number): Block | undefined {
    const limit = Math.min(2 * size, size + this.#maxWaste);
    const sizes = this.#freeSizes;
    // First size >= the class, by binary search.
    let lo = 0;
    let hi = sizes.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sizes[mid] < size) lo = mid + 1;
      else hi = mid;
    }
    if (lo === sizes.length || sizes[lo] > limit) return undefined;
    const found = sizes[lo];
    const list = this.#free.get(found)!;
    const block = list.pop()!;
    if (list.length === 0) {
      this.#free.delete(found);
      sizes.splice(lo, 1);
    }
    this.#cachedBlocks.delete(block);
    this.#cached -= block.size;
    this.#cacheHits++;
    return block;
  }

  #cache(block: Block): void {
    let list = this.#free.get(block.size);
    if (!list) {
      list = [];
      this.#free.set(block.size, list);
      const sizes = this.#freeSizes;
      let i = sizes.length;
      while (i > 0 && sizes[i - 1] > block.size) i--;
      sizes.splice(i, 0, block.size);
    }
    list.push(block);
    this.#cachedBlocks.add(block);
    this.#cached += block.size;
  }

  #allocFromDriver(size: number, requested: number): Block {
    let result = this.#raw.alloc(size);
    let released = 0;
    if (result.status === CUDA_ERROR_OUT_OF_MEMORY) {
      released = this.#cached;
      this.#oomRetries++;
      this.emptyCache();
      result = this.#raw.alloc(size);
    }
    if (result.status === CUDA_ERROR_OUT_OF_MEMORY) {
      const { free, total } = this.#raw.info();
      throw new CudaOutOfMemoryError(
        requested,
        this.#allocated,
        this.#cached,
        released,
        free,
        total,
        this.#oomHint,
      );
    }
    if (result.status !== 0) {
      let description = "an unknown CUresult";
      try {
        if (this.#raw.describe) description = this.#raw.describe(result.status);
      } catch {
        // keep the generic description
      }
      throw new CudaError(
        "CUDA driver",
        `cuMemAlloc_v2(${size})`,
        result.status,
        description,
      );
    }
    this.#driverAllocs++;
    return Object.freeze({ address: result.address, size });
  }
}
