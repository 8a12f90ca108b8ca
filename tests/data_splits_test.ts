import {
  ArrayDataset,
  BUILTIN_FASHION_MNIST,
  fashionMnist,
  firstPerClass,
  holdOut,
  Subset,
} from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";

Deno.test("holdOut() carves the last 2,000 of the built-in Fashion-MNIST training images as validation", async () => {
  const full = await fashionMnist("train", { root: BUILTIN_FASHION_MNIST });
  const { train, val } = holdOut(full, 2000);
  assert.equal(train.length, 8000);
  assert.equal(val.length, 2000);
  // Sample i of val is sample 8000 + i of the file: same label, pixels, name.
  for (const i of [0, 1, 1234, 1999]) {
    assert.equal(val.label(i), full.label(8000 + i));
    assert.equal(val.name(i), `fashion-mnist/train[${8000 + i}]`);
    const a = await val.source(i);
    const b = await full.source(8000 + i);
    assert.ok(a.kind === "pixels" && b.kind === "pixels");
    assert.deepEqual(a.image.data, b.image.data);
  }
  assert.equal(train.label(7999), full.label(7999));
  // Every class is in the validation split.
  const counts = new Array(10).fill(0);
  for (const l of val.labels()) counts[l]++;
  assert.ok(counts.every((c) => c >= 150), `class counts ${counts}`);
  assertThrows(() => val.label(2000), /outside the dataset's 2000 samples/);
});

Deno.test("Subset and holdOut() refuse windows outside the dataset", () => {
  const d = new ArrayDataset({
    pixels: new Uint8Array(4 * 4),
    labels: [0, 1, 0, 1],
    width: 2,
    height: 2,
    channels: 1,
    classes: ["a", "b"],
  });
  assert.deepEqual(Array.from(Subset.range(d, 1, 3).labels()), [1, 0, 1]);
  assertThrows(() => Subset.range(d, 2, 3), /samples 2\.\.4 are not inside/);
  assertThrows(() => new Subset(d, [0, 4]), /sample index 4 is outside/);
  assertThrows(() => new Subset(d, []), /no samples were chosen/);
  assertThrows(() => holdOut(d, 4), /must leave some of the dataset's 4/);
  assertThrows(() => holdOut(d, 0), /validation split of 0 samples/);
});

Deno.test("firstPerClass() keeps the first N of each class in order, and all of a smaller class", () => {
  const labels = [0, 0, 1, 0, 2, 1, 1, 0, 1];
  const d = new ArrayDataset({
    pixels: Uint8Array.from({ length: labels.length }, (_, i) => i),
    labels,
    width: 1,
    height: 1,
    channels: 1,
    classes: ["a", "b", "c"],
  });
  const picked = firstPerClass(d, 2);
  assert.deepEqual(
    Array.from({ length: picked.length }, (_, i) => picked.parentIndex(i)),
    [0, 1, 2, 4, 5],
  );
  assert.deepEqual(Array.from(picked.labels()), [0, 0, 1, 2, 1]);
  assert.equal(picked.name(3), "sample[4]");
  assertThrows(() => firstPerClass(d, 0), /not a whole number of at least 1/);
});
