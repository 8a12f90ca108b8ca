/**
 * NVIDIA GPUs from TypeScript: thin bindings to the CUDA driver, cuBLAS,
 * cuDNN, NVRTC and NCCL, how they are found on disk, and the "cuda" device
 * plug-in that `useDevice("cuda:N")` loads.
 *
 * Importing this module opens no library: each one is opened on first use.
 *
 * @module
 */

import type { Backend } from "../nn/backend.ts";
import { CudaBackend } from "./backend.ts";
import { deviceIndex, openGpu } from "./device.ts";

export { CudaBackend } from "./backend.ts";

export * as cublas from "./cublas.ts";
export * as cudnn from "./cudnn.ts";
export * as driver from "./driver.ts";
export * as nccl from "./nccl.ts";
export * as nvrtc from "./nvrtc.ts";
export { CudaError } from "./ffi.ts";
export {
  LIBRARIES,
  type LibraryId,
  locate,
  notFoundMessage,
  searchFolders,
} from "./find.ts";
export { type GpuInfo, listGpus } from "./device.ts";
export { type CudaReport, cudaReport, formatReport } from "./info.ts";

/**
 * The device plug-in's entry point: opens GPU `name` ("cuda", "cuda:N")
 * with its libraries and kernels, or throws one sentence saying why it
 * cannot be used.
 */
export function openBackend(name: string): Backend {
  return new CudaBackend(name, openGpu(deviceIndex(name)));
}
