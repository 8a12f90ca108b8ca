/**
 * Where the CUDA checks of this suite find NVIDIA's real libraries and
 * headers, and the one line they print when they cannot.
 *
 * `.ci/run` unpacks NVIDIA's pip wheels into a cache folder and points
 * MEC_CUDA_LIBS at their lib folders; any other way cuda/find.ts finds them
 * (a venv with PyTorch's wheels, a CUDA toolkit) works too. Headers are
 * looked for in each library folder's sibling `include/` (the wheels'
 * layout) and in the CUDA toolkit's `include/`.
 *
 * @module
 */

import { type LibraryId, locate, toolkitHomes } from "../cuda/find.ts";

/** The libraries that ship in pip wheels (the driver does not). */
export const WHEEL_LIBRARIES: readonly LibraryId[] = [
  "cublas",
  "cudnn",
  "nvrtc",
  "nccl",
];

/** Absolute path of each wheel library found, or null. */
export const libraryPaths: Readonly<Record<string, string | null>> = Object
  .fromEntries(WHEEL_LIBRARIES.map((id) => [id, locate(id).path]));

/** Whether every wheel library was found on this machine. */
export const librariesFound: boolean = WHEEL_LIBRARIES.every((id) =>
  libraryPaths[id] !== null
);

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function parent(path: string): string {
  return path.slice(0, path.lastIndexOf("/"));
}

/** Include folders: the wheels' and the CUDA toolkit's. */
export const includeFolders: readonly string[] = [
  ...new Set([
    ...WHEEL_LIBRARIES.flatMap((id) => {
      const p = libraryPaths[id];
      return p ? [`${parent(parent(p))}/include`] : [];
    }),
    ...toolkitHomes().map((h) => `${h}/include`),
  ]),
].filter((f) => {
  try {
    return Deno.statSync(f).isDirectory;
  } catch {
    return false;
  }
});

/** The headers the bindings are checked against. */
export const HEADERS = [
  "cuda.h",
  "nvrtc.h",
  "cublas_v2.h",
  "cudnn.h",
  "nccl.h",
];

/** Whether every header is in one of the include folders. */
export const headersFound: boolean = HEADERS.every((h) =>
  includeFolders.some((f) => isFile(`${f}/${h}`))
);

/** Whether a C preprocessor is on PATH (the header checks need gcc). */
export const gccFound: boolean = (() => {
  try {
    return new Deno.Command("gcc", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .outputSync().success;
  } catch {
    return false;
  }
})();

const noted = new Set<string>();

/** Prints, once per group of checks, why they were skipped. */
export function noteSkipped(what: string, why: string): void {
  if (noted.has(what)) return;
  noted.add(what);
  console.log(`CUDA checks skipped (${what}): ${why}`);
}

/** The reason NVIDIA's libraries are not usable here, or null. */
export function librariesMissing(): string | null {
  if (librariesFound) return null;
  const missing = WHEEL_LIBRARIES.filter((id) => libraryPaths[id] === null);
  return `${
    missing.join(", ")
  } not found; set MEC_CUDA_LIBS to the folders of NVIDIA's libraries (bash .ci/run does)`;
}

/** Whether an NVIDIA driver (libcuda.so.1) is on the loader's path. */
export function hasDriver(): boolean {
  try {
    Deno.dlopen("libcuda.so.1", {}).close();
    return true;
  } catch {
    return false;
  }
}
