/**
 * The CPU backend as a device plug-in: `useDevice("cpu")` imports this module
 * and calls {@linkcode openBackend}.
 *
 * @module
 */

import type { Backend } from "../nn/backend.ts";
import { CpuBackend } from "./backend.ts";

export { CpuBackend, CpuBuffer } from "./backend.ts";
export { type Blas, blas } from "./blas.ts";

/**
 * A new CPU backend for the device name "cpu". Its native libraries load on
 * first use, with their own errors when missing.
 */
export function openBackend(name: string): Backend {
  if (name !== "cpu") {
    throw new Error(
      `the CPU plug-in opens device "cpu", not "${name}"`,
    );
  }
  return new CpuBackend();
}
