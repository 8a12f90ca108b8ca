/**
 * What `deno task cuda-info` prints: each NVIDIA library found, with its
 * path and version, the driver's version, and each GPU, or the sentence
 * that says why none can be used. Works on any machine, GPU or not.
 *
 * @module
 */

import { cublasCudartVersion, cublasLibrary, cublasVersion } from "./cublas.ts";
import {
  cudnnCudartVersion,
  cudnnLibrary,
  cudnnMaxDeviceVersion,
  cudnnVersion,
} from "./cudnn.ts";
import { cudaVersionString, type GpuInfo, listGpus } from "./device.ts";
import { driverLibrary, driverVersion } from "./driver.ts";
import { LIBRARIES, type LibraryId, searchFolders } from "./find.ts";
import { ncclLibrary, ncclVersion } from "./nccl.ts";
import { nvrtcLibrary, nvrtcVersion, supportedArchs } from "./nvrtc.ts";

/** One library: where it was loaded from and its version, or why not. */
export interface LibraryReport {
  id: LibraryId;
  title: string;
  path: string | null;
  version: string | null;
  /** Build details: the CUDA runtime it was built with, architectures. */
  details: string | null;
  error: string | null;
}

export interface CudaReport {
  libraries: LibraryReport[];
  /** The CUDA version the driver supports, e.g. "13.0". */
  driverVersion: string | null;
  gpus: GpuInfo[];
  /** Why no GPU can be used, when none can. */
  gpuError: string | null;
  /** MEC_CUDA_LIBS and the wheel and toolkit folders searched. */
  searched: string[];
}

function library(
  id: LibraryId,
  open: () => { path: string },
  version: () => string,
  details: () => string | null = () => null,
): LibraryReport {
  const title = LIBRARIES[id].title;
  try {
    const { path } = open();
    return {
      id,
      title,
      path,
      version: version(),
      details: details(),
      error: null,
    };
  } catch (e) {
    const error = e instanceof Error ? e.message.split("\n")[0] : String(e);
    return { id, title, path: null, version: null, details: null, error };
  }
}

/** Gathers the report; never throws for a missing library or GPU. */
export function cudaReport(): CudaReport {
  const libraries = [
    library("driver", driverLibrary, () => cudaVersionString(driverVersion())),
    library(
      "cublas",
      cublasLibrary,
      cublasVersion,
      () => `built for CUDA ${cudaVersionString(cublasCudartVersion())}`,
    ),
    library(
      "cudnn",
      cudnnLibrary,
      cudnnVersion,
      () =>
        `built for CUDA ${
          cudaVersionString(cudnnCudartVersion())
        }, kernels up to sm_${Math.floor(cudnnMaxDeviceVersion() / 10)}`,
    ),
    library(
      "nvrtc",
      nvrtcLibrary,
      nvrtcVersion,
      () => `compiles for sm_${supportedArchs().join(", sm_")}`,
    ),
    library("nccl", ncclLibrary, ncclVersion),
  ];
  const driver = libraries[0];
  let gpus: GpuInfo[] = [];
  let gpuError: string | null = null;
  try {
    gpus = listGpus();
  } catch (e) {
    gpuError = e instanceof Error ? e.message.split("\n")[0] : String(e);
  }
  const searched = new Set<string>();
  for (const id of Object.keys(LIBRARIES) as LibraryId[]) {
    for (const s of searchFolders(LIBRARIES[id])) {
      searched.add(`${s.folder} (${s.origin})`);
    }
  }
  return {
    libraries,
    driverVersion: driver.version,
    gpus,
    gpuError,
    searched: [...searched],
  };
}

/** The report as lines for a terminal or a bug report. */
export function formatReport(r: CudaReport): string {
  const lines: string[] = ["NVIDIA libraries"];
  const width = Math.max(...r.libraries.map((l) => l.title.length));
  for (const l of r.libraries) {
    const name = l.title.padEnd(width);
    if (l.error) {
      lines.push(`  ${name}  not usable: ${l.error}`);
    } else {
      lines.push(`  ${name}  ${l.version}  ${l.path}`);
      if (l.details) lines.push(`  ${"".padEnd(width)}  ${l.details}`);
    }
  }
  lines.push("", "GPUs");
  if (r.gpus.length === 0) {
    lines.push(`  none: ${r.gpuError ?? "the driver reports no GPU"}`);
  }
  for (const g of r.gpus) {
    const gib = (g.memory / 2 ** 30).toFixed(1);
    lines.push(
      `  cuda:${g.index}  ${g.name}  ${gib} GiB  compute capability ${
        g.capability.join(".")
      } (sm_${g.capability.join("")})  ${g.multiprocessors} SMs`,
    );
  }
  lines.push("", "Folders searched (then the system loader's path)");
  for (const s of r.searched) lines.push(`  ${s}`);
  if (r.searched.length === 0) lines.push("  none besides the loader's path");
  return lines.join("\n");
}
