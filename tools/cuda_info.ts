/**
 * `deno task cuda-info`: the NVIDIA libraries found (path and version), the
 * driver's version and each GPU, or why no GPU can be used; for users and
 * bug reports, like `nvidia-smi` with `torch.utils.collect_env`.
 *
 * Exits 0 whenever the report could be made, GPU or not; `--json` prints
 * the same as one JSON object.
 *
 * @module
 */

import { cudaReport, formatReport } from "../cuda/info.ts";

const args = Deno.args;
if (args.includes("--help") || args.includes("-h")) {
  console.log(
    "usage: deno task cuda-info [--json]\n\n" +
      "Lists the CUDA driver, cuBLAS, cuDNN, NVRTC and NCCL found on this machine\n" +
      "(MEC_CUDA_LIBS, NVIDIA's pip wheels, a CUDA toolkit, the loader's path)\n" +
      "and each GPU, or the reason no GPU can be used.",
  );
  Deno.exit(0);
}
const unknown = args.filter((a) => a !== "--json");
if (unknown.length > 0) {
  console.error(`Unknown argument ${unknown[0]}; see --help.`);
  Deno.exit(2);
}
const report = cudaReport();
console.log(
  args.includes("--json")
    ? JSON.stringify(report, null, 2)
    : formatReport(report),
);
