/**
 * The CPU backend, registered as device "cpu" when imported.
 *
 * @module
 */

import { registerDevice } from "../nn/device.ts";
import { CpuBackend } from "./backend.ts";

export { CpuBackend, CpuBuffer } from "./backend.ts";
export { type Blas, blas } from "./blas.ts";

registerDevice("cpu", () => new CpuBackend());
