/**
 * The device the suite runs on, as tfjs runs one op suite against each
 * backend: `MEC_TEST_DEVICE` ("cpu" when unset; "cuda" or "cuda:N" for a
 * GPU), loaded and made the default device when this module is imported.
 * Every test file that makes tensors imports it, so
 * `MEC_TEST_DEVICE=cuda deno task test` runs the op, module, MEC and tool
 * tests on that device. Tests of the CPU backend itself load "cpu" directly.
 *
 * @module
 */

import { parseDeviceName, setDefaultDevice, useDevice } from "../mod.ts";

/** The normalised name of the device under test ("cpu", "cuda:0", ...). */
export const testDevice: string =
  parseDeviceName(Deno.env.get("MEC_TEST_DEVICE") || "cpu").name;

await useDevice(testDevice);
setDefaultDevice(testDevice);
