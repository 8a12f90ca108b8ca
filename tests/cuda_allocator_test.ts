/**
 * The CUDA caching allocator against a fake driver that hands out increasing
 * addresses and runs out of memory past a capacity: reuse without driver
 * calls, size classes, memory flat over repeated training steps, the
 * out-of-memory retry and its sentence, and ownership errors.
 */

import type { Block } from "../cuda/buffer.ts";
import {
  CachingAllocator,
  CUDA_ERROR_OUT_OF_MEMORY,
  CudaOutOfMemoryError,
  driverMemory,
  formatBytes,
  type RawMemory,
  sizeClass,
} from "../cuda/allocator.ts";
import { CudaError } from "../cuda/ffi.ts";
import { assert, assertThrows } from "./assert.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A device of `capacity` bytes; records every call. */
class FakeMemory implements RawMemory {
  readonly live = new Map<bigint, number>();
  readonly calls: string[] = [];
  allocs = 0;
  frees = 0;
  used = 0;
  /** A status that the next alloc returns instead of succeeding. */
  failNext: number | null = null;
  #next = 0x7f00_0000_0000n;

  constructor(public capacity = 64 * GiB) {}

  alloc(bytes: number): { status: number; address: bigint } {
    this.calls.push(`alloc ${bytes}`);
    if (this.failNext !== null) {
      const status = this.failNext;
      this.failNext = null;
      return { status, address: 0n };
    }
    if (this.used + bytes > this.capacity) {
      return { status: CUDA_ERROR_OUT_OF_MEMORY, address: 0n };
    }
    const address = this.#next;
    // As the driver: 256-byte aligned, never reused while live.
    this.#next += BigInt(Math.ceil(bytes / 256) * 256 + 256);
    this.live.set(address, bytes);
    this.used += bytes;
    this.allocs++;
    return { status: 0, address };
  }

  free(address: bigint): void {
    this.calls.push(`free 0x${address.toString(16)}`);
    const bytes = this.live.get(address);
    if (bytes === undefined) {
      throw new Error(`fake: cuMemFree of 0x${address.toString(16)}`);
    }
    this.live.delete(address);
    this.used -= bytes;
    this.frees++;
  }

  info(): { free: number; total: number } {
    return { free: this.capacity - this.used, total: this.capacity };
  }

  describe(status: number): string {
    return status === 1
      ? "CUDA_ERROR_INVALID_VALUE (invalid argument)"
      : "an unknown CUresult";
  }

  synchronize(): void {
    this.calls.push("synchronize");
  }
}

Deno.test("sizeClass() rounds to 512 bytes up to 1 MiB and to 2 MiB above", () => {
  assert.equal(sizeClass(0), 512);
  assert.equal(sizeClass(1), 512);
  assert.equal(sizeClass(512), 512);
  assert.equal(sizeClass(513), 1024);
  assert.equal(sizeClass(1000 * 4), 4096);
  assert.equal(sizeClass(MiB), MiB);
  assert.equal(sizeClass(MiB + 1), 2 * MiB);
  assert.equal(sizeClass(2 * MiB), 2 * MiB);
  assert.equal(sizeClass(5 * MiB + 3), 6 * MiB);
  for (const bad of [-1, 1.5, NaN, Infinity]) {
    assertThrows(() => sizeClass(bad), /whole number of bytes/);
  }
});

Deno.test("alloc() reuses a freed block of its class with no driver call", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  const first = a.alloc(1000);
  assert.equal(first.size, 1024);
  a.free(first);
  assert.deepEqual(a.memory(), { allocated: 0, cached: 1024 });
  // 1020 bytes is the same class as 1000.
  const again = a.alloc(1020);
  assert.equal(again, first);
  assert.equal(raw.allocs, 1);
  const s = a.stats();
  assert.equal(s.driverAllocs, 1);
  assert.equal(s.cacheHits, 1);
  assert.equal(s.allocated, 1024);
  assert.equal(s.requested, 1020);
  assert.equal(s.cached, 0);
  // A different class needs the driver.
  a.alloc(2000);
  assert.equal(raw.allocs, 2);
});

Deno.test("alloc() gives 0-byte requests distinct 512-byte blocks", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  const x = a.alloc(0);
  const y = a.alloc(0);
  assert.equal(x.size, 512);
  assert.notEqual(x.address, y.address);
  assert.equal(a.stats().requested, 0);
  a.free(x);
  assertThrows(() => a.free(x), /double free/);
});

Deno.test("every block is 256-byte aligned and blocks never overlap", () => {
  const a = new CachingAllocator(new FakeMemory());
  const blocks: Block[] = [];
  for (const bytes of [4, 100, 512, 513, 3000, MiB + 4, 7 * MiB, 0]) {
    blocks.push(a.alloc(bytes));
  }
  blocks.sort((p, q) => Number(p.address - q.address));
  for (let i = 0; i < blocks.length; i++) {
    assert.equal(blocks[i].address % 256n, 0n);
    if (i > 0) {
      const end = blocks[i - 1].address + BigInt(blocks[i - 1].size);
      assert.ok(end <= blocks[i].address);
    }
  }
});

Deno.test("alloc() reuses a larger cached block within twice its class and 16 MiB", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  const big = a.alloc(4096);
  a.free(big);
  // 2560 <= 4096 <= 2 * 2560: served by the cached block.
  assert.equal(a.alloc(2500), big);
  assert.equal(raw.allocs, 1);
  assert.equal(a.stats().allocated, 4096);
  a.free(big);
  // 4096 > 2 * 1536: too much waste, the driver is asked.
  const small = a.alloc(1500);
  assert.equal(small.size, 1536);
  assert.equal(raw.allocs, 2);
  // Large classes: 60 MiB is under twice 40 MiB but over 40 + 16 MiB.
  const b60 = a.alloc(60 * MiB);
  a.free(b60);
  const b40 = a.alloc(40 * MiB);
  assert.notEqual(b40, b60);
  assert.equal(b40.size, 40 * MiB);
  // 50 MiB is within 16 MiB of 60: reused.
  assert.equal(a.alloc(50 * MiB - 8), b60);
  // The smallest fitting block is taken, not the first cached one.
  const c = new CachingAllocator(new FakeMemory());
  const blocks = [8192, 3072, 4096].map((n) => c.alloc(n));
  for (const b of blocks) c.free(b);
  assert.equal(c.alloc(2560).size, 3072);
  assert.equal(c.alloc(2560).size, 4096);
});

Deno.test("a training-step pattern keeps driver allocations and reserved memory flat", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  // Parameters, gradients and momentum of a few layers, allocated once.
  const paramSizes = [9408, 256, 256, 147456, 256, 2359296, 8192, 4 * MiB];
  const state = paramSizes.flatMap((n) => [a.alloc(n), a.alloc(n), a.alloc(n)]);
  const persistent = a.stats().allocated;

  /** One step at batch `batch`: forward, backward in reverse, update. */
  function step(batch: number): void {
    const activations: Block[] = [];
    for (const perImage of [602112, 150528, 802816, 200704, 8192, 400]) {
      activations.push(a.alloc(batch * perImage));
    }
    const loss = a.alloc(4);
    const lossGrad = a.alloc(4);
    a.free(loss);
    let upstream = lossGrad;
    for (let i = activations.length - 1; i >= 0; i--) {
      const dx = a.alloc(activations[i].size);
      const workspace = a.alloc(3 * MiB + 17);
      a.free(workspace);
      a.free(upstream);
      a.free(activations[i]);
      upstream = dx;
    }
    a.free(upstream);
    for (const n of paramSizes) {
      const scratch = a.alloc(n);
      a.free(scratch);
    }
  }

  step(32);
  const warm = a.stats();
  assert.equal(warm.allocated, persistent);
  for (let i = 0; i < 50; i++) {
    step(32);
    const s = a.stats();
    assert.equal(s.driverAllocs, warm.driverAllocs, `step ${i + 2}`);
    assert.equal(s.reserved, warm.reserved, `step ${i + 2}`);
    assert.equal(s.peakAllocated, warm.peakAllocated, `step ${i + 2}`);
    assert.equal(s.allocated, persistent, `step ${i + 2}`);
  }
  // A shorter last batch fits in the blocks the full ones left.
  step(20);
  assert.equal(a.stats().driverAllocs, warm.driverAllocs);
  assert.equal(a.stats().reserved, warm.reserved);
  assert.equal(raw.frees, 0);
  for (const b of state) a.free(b);
  assert.equal(a.stats().allocated, 0);
  assert.equal(a.stats().cached, a.stats().reserved);
});

Deno.test("out of memory empties the cache and retries once", () => {
  const raw = new FakeMemory(10 * MiB);
  const a = new CachingAllocator(raw);
  const keep = a.alloc(MiB);
  const old = a.alloc(6 * MiB);
  a.free(old);
  raw.calls.length = 0;
  // 8 MiB: the cached 6 MiB block is too small and the device too full.
  const block = a.alloc(8 * MiB);
  assert.equal(block.size, 8 * MiB);
  assert.deepEqual(raw.calls, [
    `alloc ${8 * MiB}`,
    "synchronize",
    `free 0x${old.address.toString(16)}`,
    `alloc ${8 * MiB}`,
  ]);
  const s = a.stats();
  assert.equal(s.oomRetries, 1);
  assert.equal(s.cached, 0);
  assert.equal(s.allocated, 9 * MiB);
  assert.equal(s.driverFrees, 1);
  a.free(keep);
  a.free(block);
});

Deno.test("out of memory after the retry throws one sentence with the numbers", () => {
  const raw = new FakeMemory(8 * GiB);
  const a = new CachingAllocator(raw);
  const live = [a.alloc(4 * GiB), a.alloc(2 * GiB)];
  a.free(a.alloc(GiB));
  let error: unknown;
  try {
    a.alloc(2.5 * GiB);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof CudaOutOfMemoryError);
  assert.equal(
    error.message,
    "CUDA out of memory: tried to allocate 2.50 GiB with 6.00 GiB in use " +
      "and 0 bytes cached by this process (1.00 GiB of cache released to " +
      "retry) and 2.00 GiB free of 8.00 GiB on the device; try a smaller " +
      "--batch-size.",
  );
  assert.equal(error.requested, 2.5 * GiB);
  assert.equal(error.allocated, 6 * GiB);
  assert.equal(error.released, GiB);
  assert.equal(error.deviceFree, 2 * GiB);
  assert.equal(error.deviceTotal, 8 * GiB);
  // The allocator is still consistent and usable.
  assert.equal(a.stats().allocated, 6 * GiB);
  assert.equal(a.stats().blocks, 2);
  for (const b of live) a.free(b);
  assert.equal(a.alloc(3 * GiB).size, 3 * GiB);
  // The hint is an option; small sizes read in MiB.
  const b = new CachingAllocator(new FakeMemory(10 * MiB), {
    oomHint: "close other programs",
  });
  assertThrows(
    () => b.alloc(12 * MiB),
    /^CUDA out of memory: tried to allocate 12\.00 MiB with 0 bytes in use and 0 bytes cached by this process \(0 bytes of cache released to retry\) and 10\.00 MiB free of 10\.00 MiB on the device; close other programs\.$/,
  );
});

Deno.test("a driver failure other than out of memory throws, naming it", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  a.free(a.alloc(100));
  raw.failNext = 1;
  let error: unknown;
  try {
    a.alloc(5000);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof CudaError);
  assert.equal(error.status, 1);
  assert.match(
    error.message,
    /^CUDA driver: cuMemAlloc_v2\(5120\) failed with CUDA_ERROR_INVALID_VALUE \(invalid argument\) \(status 1\)$/,
  );
  // No retry and the cache kept.
  assert.equal(a.stats().cached, 512);
  assert.equal(a.stats().oomRetries, 0);
});

Deno.test("freeing twice or freeing a foreign block throws", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  const b = a.alloc(4096);
  a.free(b);
  assertThrows(
    () => a.free(b),
    /^double free of the device block of 4096 bytes at 0x7f/,
  );
  // A lookalike with the same address and size is not the block.
  const lookalike: Block = { address: b.address, size: b.size };
  assertThrows(() => a.free(lookalike), /was not handed out by this allocator/);
  const other = new CachingAllocator(new FakeMemory()).alloc(10);
  assertThrows(() => a.free(other), /was not handed out by this allocator/);
  // Still a double free once the block went back to the driver.
  a.emptyCache();
  assertThrows(() => a.free(b), /double free/);
  assert.deepEqual(a.memory(), { allocated: 0, cached: 0 });
});

Deno.test("emptyCache() frees every cached block exactly once, live ones never", () => {
  const raw = new FakeMemory();
  const a = new CachingAllocator(raw);
  const sizes = [100, 100, 600, 5000, 3 * MiB, 3 * MiB, 40 * MiB, 0];
  const blocks = sizes.map((n) => a.alloc(n));
  const live = a.alloc(7000);
  for (const b of blocks) a.free(b);
  raw.calls.length = 0;
  a.emptyCache();
  assert.equal(raw.calls[0], "synchronize");
  const freed = raw.calls.slice(1);
  assert.equal(freed.length, blocks.length);
  assert.equal(new Set(freed).size, blocks.length);
  for (const b of blocks) {
    assert.ok(freed.includes(`free 0x${b.address.toString(16)}`));
    assert.ok(!raw.live.has(b.address));
  }
  assert.ok(raw.live.has(live.address));
  const s = a.stats();
  assert.equal(s.cached, 0);
  assert.equal(s.reserved, live.size);
  assert.equal(s.driverFrees, blocks.length);
  // Nothing cached: no driver call at all.
  raw.calls.length = 0;
  a.emptyCache();
  assert.deepEqual(raw.calls, []);
  // The live block is freed to the cache, then once to the driver.
  a.free(live);
  a.emptyCache();
  assert.deepEqual(raw.calls, [
    "synchronize",
    `free 0x${live.address.toString(16)}`,
  ]);
  assert.equal(raw.live.size, 0);
  // After emptying, a request goes to the driver again.
  a.alloc(100);
  assert.equal(a.stats().driverAllocs, sizes.length + 2);
});

Deno.test("peakAllocated and peakReserved track the highest use", () => {
  const a = new CachingAllocator(new FakeMemory());
  const x = a.alloc(4 * MiB);
  const y = a.alloc(2 * MiB);
  a.free(x);
  a.free(y);
  let s = a.stats();
  assert.equal(s.peakAllocated, 6 * MiB);
  assert.equal(s.peakReserved, 6 * MiB);
  assert.equal(s.allocated, 0);
  // Reuse does not raise the peak of reserved memory.
  const z = a.alloc(4 * MiB);
  assert.equal(a.stats().peakReserved, 6 * MiB);
  a.resetPeak();
  s = a.stats();
  assert.equal(s.peakAllocated, 4 * MiB);
  assert.equal(s.peakReserved, 6 * MiB);
  a.free(z);
  a.emptyCache();
  a.resetPeak();
  assert.equal(a.stats().peakReserved, 0);
});

Deno.test("formatBytes() picks GiB, MiB, KiB or bytes", () => {
  assert.equal(formatBytes(2 * GiB), "2.00 GiB");
  assert.equal(formatBytes(75.21 * GiB), "75.21 GiB");
  assert.equal(formatBytes(0.4 * GiB), "409.60 MiB");
  assert.equal(formatBytes(1536), "1.50 KiB");
  assert.equal(formatBytes(512), "512 bytes");
});

Deno.test("driverMemory() binds the driver without opening it", () => {
  const raw = driverMemory();
  for (
    const f of [raw.alloc, raw.free, raw.info, raw.describe, raw.synchronize]
  ) {
    assert.equal(typeof f, "function");
  }
});
