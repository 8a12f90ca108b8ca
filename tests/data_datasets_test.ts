/**
 * The built-in datasets: the Fashion-MNIST subset in the repository (and
 * the full set where Debian's package is installed), and the dummy source.
 */

import { DummyDataset } from "../data/dummy.ts";
import {
  BUILTIN_FASHION_MNIST,
  DEBIAN_FASHION_MNIST,
  FASHION_MNIST_CLASSES,
  fashionMnist,
} from "../data/fashion-mnist.ts";
import { DataLoader } from "../data/loader.ts";
import { mecViews } from "../data/pipelines.ts";
import { assert } from "./assert.ts";

Deno.test("fashionMnist() loads the built-in subset: 10,000 + 2,000 grey 28x28 images", async () => {
  const train = await fashionMnist("train", { root: BUILTIN_FASHION_MNIST });
  const test = await fashionMnist("test", { root: BUILTIN_FASHION_MNIST });
  assert.equal(train.length, 10000);
  assert.equal(test.length, 2000);
  assert.equal(train.classes, FASHION_MNIST_CLASSES);
  const counts = new Array(10).fill(0);
  for (let i = 0; i < train.length; i++) counts[train.label(i)]++;
  // The subset keeps every class roughly balanced (942..1027 each).
  for (const c of counts) assert.ok(c > 900 && c < 1100, `${counts}`);
  const image = train.image(0);
  assert.equal(image.width, 28);
  assert.equal(image.height, 28);
  let ink = 0;
  for (let p = 0; p < 28 * 28; p++) {
    assert.equal(image.data[3 * p], image.data[3 * p + 1]);
    assert.equal(image.data[3 * p], image.data[3 * p + 2]);
    ink += image.data[3 * p] > 0 ? 1 : 0;
  }
  assert.ok(ink > 50, "the first image has a garment on it");
});

Deno.test({
  name:
    "fashionMnist() uses the full set from Debian's dataset-fashion-mnist when installed",
  ignore: !existsSync(`${DEBIAN_FASHION_MNIST}/train-images-idx3-ubyte.gz`),
  fn: async () => {
    const train = await fashionMnist("train");
    assert.equal(train.length, 60000);
    const subset = await fashionMnist("train", { root: BUILTIN_FASHION_MNIST });
    // The subset is the full set's beginning.
    assert.deepEqual(train.image(9999), subset.image(9999));
    assert.equal(train.label(9999), subset.label(9999));
  },
});

Deno.test("fashionMnist() names a missing folder in one sentence", async () => {
  await assert.rejects(
    fashionMnist("test", { root: "/nonexistent/fashion" }),
    /^Error: The Fashion-MNIST file .*t10k-images-idx3-ubyte\.gz cannot be read\.$/,
  );
});

Deno.test("Fashion-MNIST goes through the MEC views like any photo", async () => {
  const test = await fashionMnist("test", { root: BUILTIN_FASHION_MNIST });
  await using loader = new DataLoader({
    dataset: test,
    views: mecViews(28),
    batchSize: 16,
  });
  const { value } = await loader.epoch(0).next();
  assert.ok(value && "views" in value);
  assert.deepEqual(value.shapes, [[16, 3, 28, 28], [16, 3, 28, 28]]);
});

Deno.test("DummyDataset makes the same noise image and label for an index every time", async () => {
  const dummy = new DummyDataset({
    length: 100,
    classes: 10,
    width: 50,
    height: 40,
  });
  assert.equal(dummy.length, 100);
  assert.equal(
    dummy.label(7),
    new DummyDataset({ length: 100, classes: 10 }).label(7),
  );
  for (let i = 0; i < 100; i++) {
    assert.ok(dummy.label(i) >= 0 && dummy.label(i) < 10);
  }
  const batches = [];
  for (const workers of [0, 2]) {
    await using loader = new DataLoader({
      dataset: dummy,
      views: mecViews(16),
      batchSize: 10,
      workers,
    });
    const { value } = await loader.epoch(0).next();
    batches.push(value);
  }
  assert.deepEqual(batches[0], batches[1]);
});

function existsSync(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
