/**
 * The WebAssembly view kernels: the committed module is the build of the
 * committed text, so the two cannot drift apart. (What the kernels compute
 * is tested in tests/data_views_test.ts, bit for bit against TypeScript.)
 */

import { assembleViewKernels } from "../data/wasm/build.ts";
import { decodeBase64 } from "../data/wasm/base64.ts";
import { VIEW_KERNELS_WASM } from "../data/wasm/view_kernels_wasm.ts";
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
