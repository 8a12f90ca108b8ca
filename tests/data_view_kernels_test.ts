/**
 * The WebAssembly view kernels: the committed module is the build of the
 * committed text, so the two cannot drift apart, and the memory a huge
 * photograph needed is given back. (What the kernels compute is tested in
 * tests/data_views_test.ts, bit for bit against TypeScript.)
 */

import { assembleViewKernels } from "../data/wasm/build.ts";
import { decodeBase64 } from "../data/wasm/base64.ts";
import { VIEW_KERNELS_WASM } from "../data/wasm/view_kernels_wasm.ts";
import type { RgbImage } from "../data/decode.ts";
import { applyView, probeTrainView, ViewScratch } from "../data/pipelines.ts";
import { IMAGENET_NORMALIZE } from "../data/transforms.ts";
import { Generator } from "../nn/random.ts";
import { assert } from "./assert.ts";

Deno.test("data/wasm/view_kernels_wasm.ts holds the build of view_kernels.wat", async () => {
  const built = await assembleViewKernels();
  const committed = decodeBase64(VIEW_KERNELS_WASM);
  assert.equal(
    committed.length,
    built.length,
    "rebuild with deno run --allow-read --allow-write --allow-env data/wasm/build.ts",
  );
  assert.deepEqual(committed, built);
  // Exports what data/view_kernels.ts calls.
  const exports = WebAssembly.Module.exports(new WebAssembly.Module(built))
    .map((e) => e.name).sort();
  assert.deepEqual(exports, [
    "blurColumns",
    "blurRows",
    "brightness",
    "contrast",
    "meanLuma",
    "memory",
    "resizeColumns",
    "resizeRows",
    "toTensor",
  ]);
});

Deno.test("the kernels give back the memory a huge photograph needed", () => {
  const scratch = new ViewScratch();
  const kernels = scratch.kernels!;
  // Crop, resize and flip only, so a flat image gives known values.
  const view = {
    ...probeTrainView(32),
    crop: { kind: "random-resized", scale: [0.9, 1], ratio: [3 / 4, 4 / 3] },
  } as const;
  const flat = (width: number, height: number): RgbImage => ({
    width,
    height,
    data: new Uint8Array(width * height * 3).fill(200),
  });
  const expect = (out: Float32Array) => {
    const { mean, std } = IMAGENET_NORMALIZE;
    for (let c = 0; c < 3; c++) {
      const v = (200 / 255 - mean[c]) / std[c];
      for (let p = 0; p < 32 * 32; p++) {
        assert.ok(Math.abs(out[c * 32 * 32 + p] - v) < 1e-5, `${c} ${p}`);
      }
    }
  };
  const out = new Float32Array(3 * 32 * 32);
  applyView(flat(40, 30), view, new Generator(1), out, 0, scratch);
  expect(out);
  assert.ok(kernels.memoryBytes < 1 << 20, `${kernels.memoryBytes}`);
  // 6000 x 4000: the crop's rows alone take over 60 MB.
  applyView(flat(6000, 4000), view, new Generator(2), out, 0, scratch);
  expect(out);
  assert.ok(kernels.memoryBytes < 1 << 20, `${kernels.memoryBytes} kept`);
  applyView(flat(40, 30), view, new Generator(3), out, 0, scratch);
  expect(out);
});
