import { CachingAllocator } from "../cpu/allocator.ts";
import { assert } from "./assert.ts";

/** One "step": allocate `lengths` (all live at once), then free them. */
function step(a: CachingAllocator, lengths: number[]): Float32Array[] {
  const arrays = lengths.map((n) => a.alloc(n));
  for (const x of arrays) a.free(x);
  return arrays;
}

Deno.test("CachingAllocator hands freed arrays out again and counts live, cached and peak bytes", () => {
  const a = new CachingAllocator();
  const first = step(a, [100, 100, 50]);
  assert.deepEqual(a.memory(), { allocated: 0, cached: 1000, peak: 1000 });
  const again = step(a, [100, 50]);
  // The same arrays come back; one of length 100 waits unused.
  assert.ok(again.every((x) => first.includes(x)));
  assert.deepEqual(a.memory(), { allocated: 0, cached: 1000, peak: 1000 });
});

Deno.test("trim() returns what no allocation used since the last trim and keeps what every step reuses", () => {
  const a = new CachingAllocator();
  step(a, [100, 100, 50]);
  assert.equal(a.trim(), 0); // everything was in use during this first step
  step(a, [100, 50]);
  // One array of 100 sat idle through the whole step: it goes.
  assert.equal(a.trim(), 400);
  assert.equal(a.memory().cached, 600);
  for (let i = 0; i < 3; i++) {
    step(a, [100, 50]);
    assert.equal(a.trim(), 0);
  }
  // A smaller batch: the arrays of the old sizes go after one idle step.
  step(a, [30]);
  assert.equal(a.trim(), 600);
  assert.deepEqual(a.memory(), { allocated: 0, cached: 120, peak: 1000 });
});

Deno.test("a cache limit drops freed arrays past it", () => {
  const a = new CachingAllocator(500);
  step(a, [100, 100]);
  assert.equal(a.memory().cached, 400);
  const x = a.alloc(50);
  const y = a.alloc(50);
  a.free(x); // 400 + 200 would pass 500: dropped
  a.free(y);
  assert.equal(a.memory().cached, 400);
  assert.equal(a.memory().allocated, 0);
});
