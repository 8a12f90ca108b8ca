/**
 * Assembles data/wasm/view_kernels.wat with WABT (`npm:wabt`) and writes
 * the module's bytes into data/wasm/view_kernels_wasm.ts, so that the
 * toolkit itself needs no assembler; tests/data_view_kernels_test.ts checks
 * that the committed bytes are this build of the committed text.
 *
 *     deno run --allow-read --allow-write --allow-env data/wasm/build.ts
 *
 * @module
 */

import wabtInit from "wabt";
import { encodeBase64 } from "./base64.ts";

const HERE = new URL("./", import.meta.url);

/** The module's bytes, assembled from the text in this folder. */
export async function assembleViewKernels(): Promise<Uint8Array<ArrayBuffer>> {
  const wabt = await wabtInit();
  const text = await Deno.readTextFile(new URL("view_kernels.wat", HERE));
  const module = wabt.parseWat("view_kernels.wat", text, {
    simd: true,
    bulk_memory: true,
  });
  try {
    module.validate();
    return Uint8Array.from(module.toBinary({}).buffer);
  } finally {
    module.destroy();
  }
}

/** The TypeScript file that holds `bytes`, as build.ts writes it. */
export function viewKernelsSource(bytes: Uint8Array): string {
  const base64 = encodeBase64(bytes);
  const lines = base64.match(/.{1,76}/g) ?? [];
  return `/**
 * The bytes of data/wasm/view_kernels.wat, assembled by data/wasm/build.ts
 * (do not edit; rebuild after changing the text).
 *
 * @module
 */

/** The WebAssembly module, base64. */
export const VIEW_KERNELS_WASM: string = ${
    lines.map((l) => JSON.stringify(l)).join(" +\n  ")
  };
`;
}

if (import.meta.main) {
  const bytes = await assembleViewKernels();
  await Deno.writeTextFile(
    new URL("view_kernels_wasm.ts", HERE),
    viewKernelsSource(bytes),
  );
  console.log(`data/wasm/view_kernels_wasm.ts: ${bytes.length} bytes`);
}
