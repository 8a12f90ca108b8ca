/**
 * Compiling the kernels with NVRTC, through the disk cache.
 *
 * @module
 */

import { compile, nvrtcVersion } from "../nvrtc.ts";
import { type BuildInputs, cachedBuild, type CacheOutcome } from "./cache.ts";
import { KERNEL_SOURCE } from "./source.ts";

/**
 * NVRTC's options. `--fmad=false` keeps every multiply and add separately
 * rounded, as on the CPU (see source.ts); the kernels are bound by memory
 * traffic, so fused multiply-adds would gain nothing.
 */
export const COMPILE_OPTIONS: readonly string[] = [
  "--std=c++17",
  "--fmad=false",
];

/** The file name NVRTC's messages give the source. */
export const SOURCE_NAME = "mec_kernels.cu";

/** What the kernels' image for `arch` is built from, with this NVRTC. */
export function buildInputs(arch: string): BuildInputs {
  return {
    source: KERNEL_SOURCE,
    arch,
    compiler: `nvrtc ${nvrtcVersion()}`,
    options: COMPILE_OPTIONS,
  };
}

/**
 * The CUBIN of every kernel for a real architecture ("sm_90"), from the
 * cache in `dir` or compiled (and then stored); `dir` null compiles without
 * a cache. Needs NVRTC, not a GPU.
 */
export function buildKernels(
  arch: string,
  dir: string | null,
  opts: { refresh?: boolean } = {},
): CacheOutcome {
  if (!/^sm_\d+[a-z]?$/.test(arch)) {
    throw new RangeError(
      `the kernels need a real GPU architecture such as "sm_90", not "${arch}"`,
    );
  }
  return cachedBuild(
    dir,
    buildInputs(arch),
    () =>
      compile(KERNEL_SOURCE, {
        name: SOURCE_NAME,
        arch,
        options: COMPILE_OPTIONS,
      }).cubin,
    opts,
  );
}
