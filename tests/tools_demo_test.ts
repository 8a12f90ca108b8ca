import { existsSync } from "node:fs";
import {
  BUILTIN_FASHION_MNIST,
  DEBIAN_FASHION_MNIST,
  fashionMnist,
} from "../mod.ts";
import { DEMO_PRETRAIN_IMAGES, demoSplits } from "../tools/demo.ts";
import { assert } from "./assert.ts";

/** The names of a split's samples, which say where each came from. */
function names(d: { length: number; name(i: number): string }): string[] {
  return Array.from({ length: d.length }, (_, i) => d.name(i));
}

/** No sample is in two of the splits. */
function assertDisjoint(...splits: string[][]): void {
  const seen = new Set<string>();
  for (const split of splits) {
    for (const n of split) {
      assert.ok(!seen.has(n), `${n} is in two splits`);
      seen.add(n);
    }
  }
}

Deno.test("demoSplits() on the built-in subset: 8,000 to pretrain and train the probe, 2,000 to validate, 2,000 to test", async () => {
  const s = await demoSplits(BUILTIN_FASHION_MNIST);
  assert.equal(s.pretrain.length, DEMO_PRETRAIN_IMAGES);
  assert.equal(s.train.length, 8000);
  assert.equal(s.val.length, 2000);
  assert.equal(s.test.length, 2000);
  assert.deepEqual(names(s.pretrain), names(s.train));
  assertDisjoint(names(s.train), names(s.val));
  assert.equal(s.val.name(0), "fashion-mnist/train[8000]");
  assert.match(
    s.description,
    /built-in.*8,000 training.*2,000 held out.*2,000 test/,
  );
});

Deno.test({
  name:
    "demoSplits() on Debian's full set: the same 8,000 to pretrain, 55,000 to train the probe, the last 5,000 to validate, all 10,000 to test",
  ignore: !existsSync(`${DEBIAN_FASHION_MNIST}/train-images-idx3-ubyte.gz`),
  fn: async () => {
    const s = await demoSplits(DEBIAN_FASHION_MNIST);
    const builtin = await demoSplits(BUILTIN_FASHION_MNIST);
    assert.equal(s.train.length, 55000);
    assert.equal(s.val.length, 5000);
    assert.equal(s.test.length, 10000);
    assert.equal(s.val.name(0), "fashion-mnist/train[55000]");
    assertDisjoint(names(s.train), names(s.val));
    // Pretraining sees the same images with either source.
    assert.deepEqual(names(s.pretrain), names(builtin.pretrain));
    for (const i of [0, 4321, DEMO_PRETRAIN_IMAGES - 1]) {
      const a = await s.pretrain.source(i);
      const b = await builtin.pretrain.source(i);
      assert.ok(a.kind === "pixels" && b.kind === "pixels");
      assert.deepEqual(a.image.data, b.image.data);
      assert.equal(s.pretrain.label(i), builtin.pretrain.label(i));
    }
    // The full test split is all of t10k; the built-in one is its start.
    const t10k = await fashionMnist("test", { root: DEBIAN_FASHION_MNIST });
    assert.equal(s.test.label(9999), t10k.label(9999));
    assert.match(
      s.description,
      /Debian's full.*55,000 training.*5,000 held out.*10,000 test/,
    );
    // With no root, the installed full set is the one chosen.
    assert.equal((await demoSplits()).description, s.description);
  },
});
