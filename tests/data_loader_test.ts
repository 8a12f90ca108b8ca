/**
 * The loader: batches independent of the number of workers, each index
 * once per epoch, per-epoch shuffling, and a corrupt file among real JPEGs
 * skipped, replaced and reported.
 */

import { join } from "node:path";
import { ArrayDataset } from "../data/dataset.ts";
import { imageFolder } from "../data/folder.ts";
import {
  type Batch,
  batchTensors,
  DataLoader,
  type DataLoaderOptions,
  type EpochSummary,
  formatEpochSummary,
  unreadableFiles,
} from "../data/loader.ts";
import { mecViews, probeEvalView } from "../data/pipelines.ts";
import { Generator } from "../nn/random.ts";
import "./device.ts";
import { assert } from "./assert.ts";

const GO = new URL("./fixtures/go-image/", import.meta.url);

/** 30 random 40x30 RGB images in 3 classes. */
function smallDataset(): ArrayDataset {
  const n = 30;
  const pixels = new Uint8Array(n * 40 * 30 * 3);
  const gen = new Generator(11);
  for (let i = 0; i < pixels.length; i++) pixels[i] = gen.integer(0, 256);
  return new ArrayDataset({
    pixels,
    labels: Array.from({ length: n }, (_, i) => i % 3),
    width: 40,
    height: 30,
    channels: 3,
    classes: ["a", "b", "c"],
  });
}

async function collect(
  options: DataLoaderOptions,
  epoch: number,
): Promise<Batch[]> {
  await using loader = new DataLoader(options);
  const batches: Batch[] = [];
  for await (const batch of loader.epoch(epoch)) batches.push(batch);
  return batches;
}

Deno.test("DataLoader gives the same batches with 0, 1 and 4 workers", async () => {
  const base = {
    dataset: smallDataset(),
    views: mecViews(24),
    batchSize: 4,
    seed: 3,
  };
  const inline = await collect({ ...base, workers: 0 }, 1);
  assert.equal(inline.length, 7); // 30 / 4, the last partial batch dropped
  for (const workers of [1, 4]) {
    const pooled = await collect({ ...base, workers }, 1);
    assert.equal(pooled.length, inline.length);
    pooled.forEach((batch, b) => {
      assert.deepEqual(batch.indices, inline[b].indices, `batch ${b}`);
      assert.deepEqual(batch.labels, inline[b].labels);
      assert.deepEqual(batch.shapes, [[4, 3, 24, 24], [4, 3, 24, 24]]);
      for (let k = 0; k < 2; k++) {
        assert.deepEqual(
          batch.views[k],
          inline[b].views[k],
          `batch ${b} view ${k}`,
        );
      }
    });
  }
  // The two views differ (different draws), as do the epochs.
  assert.notDeepEqual(inline[0].views[0], inline[0].views[1]);
  const other = await collect({ ...base, workers: 0 }, 2);
  assert.notDeepEqual(other[0].indices, inline[0].indices);
});

Deno.test("DataLoader.epoch(e, start) gives the same batches as the full epoch from batch start on", async () => {
  const options = {
    dataset: smallDataset(),
    views: mecViews(16),
    batchSize: 4,
    seed: 5,
  };
  const full = await collect(options, 2);
  await using loader = new DataLoader(options);
  const tail: Batch[] = [];
  for await (const batch of loader.epoch(2, 3)) tail.push(batch);
  assert.equal(tail.length, full.length - 3);
  tail.forEach((batch, i) => {
    assert.equal(batch.index, 3 + i);
    assert.deepEqual(batch.indices, full[3 + i].indices);
    assert.deepEqual(batch.views, full[3 + i].views);
  });
  assert.equal(loader.lastSummary?.batches, full.length - 3);
});

Deno.test("DataLoader visits every index once per epoch", async () => {
  const dataset = smallDataset();
  for (
    const [shuffle, dropLast] of [[true, false], [false, false], [true, true]]
  ) {
    const batches = await collect(
      {
        dataset,
        views: [probeEvalView(16)],
        batchSize: 8,
        shuffle,
        dropLast,
        workers: 2,
      },
      0,
    );
    const seen = batches.flatMap((b) => Array.from(b.indices));
    assert.equal(batches.length, dropLast ? 3 : 4);
    assert.equal(new Set(seen).size, seen.length);
    if (!dropLast) {
      assert.deepEqual(
        [...seen].sort((a, b) => a - b),
        Array.from({ length: 30 }, (_, i) => i),
      );
      assert.equal(batches[3].views[0].length, 6 * 3 * 16 * 16);
    }
    if (!shuffle) {
      assert.deepEqual(
        seen,
        Array.from({ length: 30 }, (_, i) => i),
      );
    }
    batches.forEach((b) =>
      b.indices.forEach((i, s) => assert.equal(b.labels[s], dataset.label(i)))
    );
  }
});

Deno.test("DataLoader skips, replaces and reports a corrupt file among real JPEGs", async () => {
  const root = await Deno.makeTempDir({ prefix: "data_loader_test_" });
  try {
    const names = [
      "video-001.jpeg",
      "video-001.q50.420.jpeg",
      "video-005.gray.jpeg",
      "video-001.cmyk.jpeg",
    ];
    for (const cls of ["cat", "dog"]) {
      await Deno.mkdir(join(root, cls));
      for (const [i, name] of names.entries()) {
        await Deno.copyFile(new URL(name, GO), join(root, cls, `${i}.jpg`));
      }
    }
    const whole = await Deno.readFile(new URL("video-001.jpeg", GO));
    await Deno.writeFile(
      join(root, "dog", "broken.jpg"),
      whole.subarray(0, 5000),
    );
    const dataset = await imageFolder(root);
    assert.equal(dataset.length, 9);
    const broken = Array.from({ length: 9 }, (_, i) => dataset.name(i)).indexOf(
      "dog/broken.jpg",
    );

    const summaries: string[] = [];
    const options = {
      dataset,
      views: mecViews(32),
      batchSize: 3,
      seed: 5,
      onEpochEnd: (s: { epoch: number }) =>
        summaries.push(JSON.stringify(s.epoch)),
    };
    await using loader = new DataLoader({ ...options, workers: 2 });
    const batches: Batch[] = [];
    for await (const batch of loader.epoch(0)) batches.push(batch);
    const summary = loader.lastSummary!;
    assert.equal(batches.length, 3);
    for (const b of batches) assert.equal(b.indices.length, 3);
    assert.equal(summary.skipped.length, 1);
    assert.equal(summary.skipped[0].index, broken);
    assert.match(summary.skipped[0].reason, /truncated JPEG/);
    assert.ok(summary.skipped[0].replacement !== broken);
    assert.deepEqual(summaries, ["0"]);
    const line = formatEpochSummary(summary);
    assert.match(
      line,
      /^epoch 0: skipped 1 unreadable image: dog\/broken\.jpg \(truncated JPEG/,
    );
    const all = batches.flatMap((b) => Array.from(b.indices));
    assert.ok(!all.includes(broken));
    assert.ok(all.includes(summary.skipped[0].replacement));
    for (const b of batches) {
      for (const v of b.views[0]) assert.ok(Number.isFinite(v));
    }

    // The replacement is deterministic: the in-thread loader agrees.
    const again = await collect({ ...options, workers: 0 }, 0);
    again.forEach((b, i) => {
      assert.deepEqual(b.indices, batches[i].indices);
      assert.deepEqual(b.views[1], batches[i].views[1]);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("DataLoader recycles arrays, makes tensors and closes cleanly mid-epoch", async () => {
  const loader = new DataLoader({
    dataset: smallDataset(),
    views: [probeEvalView(16)],
    batchSize: 5,
    workers: 2,
    prefetch: 1,
  });
  let seen = 0;
  for await (const batch of loader.epoch(0)) {
    const [x] = batchTensors(batch);
    assert.deepEqual(x.shape, [5, 3, 16, 16]);
    x.dispose();
    loader.recycle(batch);
    if (++seen === 3) break;
  }
  await loader.close();
  await assert.rejects(async () => {
    for await (const _ of loader.epoch(1)) break;
  }, /closed/);
});

Deno.test("DataLoader explains bad options in one sentence", () => {
  const dataset = smallDataset();
  assert.throws(
    () => new DataLoader({ dataset, views: [probeEvalView(8)], batchSize: 0 }),
    /batch size/,
  );
  assert.throws(
    () => new DataLoader({ dataset, views: [probeEvalView(8)], batchSize: 31 }),
    /make no batch of 31/,
  );
});

Deno.test("formatEpochSummary() names a file skipped more than once only once", () => {
  const timing = {
    readMs: 0,
    decodeMs: 0,
    augmentMs: 0,
    transferMs: 0,
    waitMs: 0,
  };
  const summary: EpochSummary = {
    epoch: 3,
    batches: 1,
    samples: 8,
    // b.jpg failed as itself and again when drawn to replace a.jpg.
    skipped: [
      { index: 1, name: "a.jpg", reason: "truncated JPEG", replacement: 2 },
      {
        index: 2,
        name: "b.jpg",
        reason: "not a JPEG or PNG file",
        replacement: 5,
      },
      {
        index: 2,
        name: "b.jpg",
        reason: "not a JPEG or PNG file",
        replacement: 6,
      },
    ],
    timing,
  };
  assert.equal(
    formatEpochSummary(summary),
    "epoch 3: skipped 2 unreadable images (3 samples replaced): a.jpg (truncated JPEG), b.jpg (not a JPEG or PNG file)",
  );
  assert.deepEqual(unreadableFiles(summary).map((f) => f.name), [
    "a.jpg",
    "b.jpg",
  ]);
});
