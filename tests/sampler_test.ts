import { DataLoader, DummyDataset, probeEvalView } from "../mod.ts";
import { shardLength, shardOrder } from "../data/sampler.ts";
import { assert, assertThrows } from "./assert.ts";

/**
 * PyTorch 1.13's DistributedSampler(range(n), num_replicas=w, rank=r,
 * shuffle=False), listed by /usr/bin/python3 with Debian's python3-torch:
 * `[list(DistributedSampler(range(n), num_replicas=w, rank=r,
 * shuffle=False)) for r in range(w)]`; DROPPED with `drop_last=True`.
 */
const TORCH: [number, number, number[][]][] = [
  [10, 3, [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]],
  [10, 4, [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]],
  [2, 3, [[0], [1], [0]]],
  [12, 2, [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]],
];
const DROPPED: [number, number, number[][]][] = [
  [10, 3, [[0, 3, 6], [1, 4, 7], [2, 5, 8]]],
  [10, 4, [[0, 4], [1, 5], [2, 6], [3, 7]]],
  [2, 3, [[], [], []]],
  [12, 2, [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]],
];

Deno.test("shardOrder() gives PyTorch's DistributedSampler shards, padding included", () => {
  for (const [n, w, expected] of TORCH) {
    const order = Int32Array.from({ length: n }, (_, i) => i);
    for (let r = 0; r < w; r++) {
      assert.deepEqual([...shardOrder(order, r, w)], expected[r], `${n}/${w}`);
    }
    assert.equal(shardLength(n, w), expected[0].length);
  }
  for (const [n, w, expected] of DROPPED) {
    const order = Int32Array.from({ length: n }, (_, i) => i);
    for (let r = 0; r < w; r++) {
      assert.deepEqual(
        [...shardOrder(order, r, w, "drop")],
        expected[r],
        `${n}/${w} drop`,
      );
    }
  }
  // Uneven: every index exactly once, the first n % w ranks one more.
  const order = Int32Array.from({ length: 10 }, (_, i) => 9 - i);
  const seen = [0, 1, 2].flatMap((r) => [...shardOrder(order, r, 3, "uneven")]);
  assert.deepEqual(seen.sort((a, b) => a - b), [...Array(10).keys()]);
  assert.deepEqual([0, 1, 2].map((r) => shardLength(10, 3, "uneven", r)), [
    4,
    3,
    3,
  ]);
  assertThrows(
    () => shardOrder(new Int32Array(3), 2, 2),
    /rank 2 is not in 0..1/,
  );
  assertThrows(
    () => shardOrder(new Int32Array(3), 0, 0),
    /world size must be 1 or more/,
  );
});

Deno.test("sharded loaders: the ranks' batch k together are the single-process batch k", async () => {
  // 26 samples: 4 batches of 6, and a tail that no rank trains on.
  const dataset = new DummyDataset({ length: 26, classes: 3, seed: 4 });
  const views = [probeEvalView(8)];
  const single = new DataLoader({ dataset, views, batchSize: 6, seed: 9 });
  const want: number[][] = [];
  for await (const b of single.epoch(2)) want.push([...b.indices].sort());
  for (const w of [2, 3]) {
    const got: number[][] = want.map(() => []);
    for (let r = 0; r < w; r++) {
      const loader = new DataLoader({
        dataset,
        views,
        batchSize: 6 / w,
        seed: 9,
        shard: { rank: r, size: w },
      });
      assert.equal(loader.length, single.length);
      for await (const b of loader.epoch(2)) got[b.index].push(...b.indices);
    }
    assert.deepEqual(got.map((g) => g.sort()), want, `${w} ranks`);
  }
});

Deno.test("sharded loaders without dropLast: padded shards give every rank equal batches; uneven ones each sample once", async () => {
  const dataset = new DummyDataset({ length: 11, classes: 3, seed: 4 });
  const views = [probeEvalView(8)];
  const sizes = (tail?: "uneven") =>
    [0, 1, 2].map(async (rank) => {
      const loader = new DataLoader({
        dataset,
        views,
        batchSize: 2,
        seed: 1,
        dropLast: false,
        shard: { rank, size: 3, tail },
      });
      const seen: number[][] = [];
      for await (const b of loader.epoch(0)) seen.push([...b.indices]);
      return seen;
    });
  // Padded: ceil(11 / 3) = 4 each, in batches of 2 and 2 on every rank.
  const padded = await Promise.all(sizes());
  for (const r of padded) assert.deepEqual(r.map((b) => b.length), [2, 2]);
  const uneven = await Promise.all(sizes("uneven"));
  assert.deepEqual(uneven.map((r) => r.map((b) => b.length)), [
    [2, 2],
    [2, 2],
    [2, 1],
  ]);
  const all = uneven.flat(2).sort((a, b) => a - b);
  assert.deepEqual(all, [...Array(11).keys()]);
});
