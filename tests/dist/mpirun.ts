/**
 * Starting ranks under `mpirun` from the tests, with a time limit, and
 * whether Open MPI is installed at all.
 */

import { ROOT } from "../tool_runs.ts";

/** Whether `mpirun` can be started here. */
export async function haveMpirun(): Promise<boolean> {
  try {
    const out = await new Deno.Command("mpirun", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** What `mpirun -np N deno run -A script` printed, within `seconds`. */
export async function mpirun(
  np: number,
  script: string,
  args: string[] = [],
  seconds = 120,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const t0 = performance.now();
  const child = new Deno.Command("mpirun", {
    args: [
      "--allow-run-as-root",
      "--oversubscribe",
      "-np",
      String(np),
      // One BLAS thread per rank: the ranks already fill the cores.
      "-x",
      "MEC_BLAS_THREADS=1",
      ...Object.keys(env).flatMap((k) => ["-x", k]),
      Deno.execPath(),
      "run",
      "-A",
      script,
      ...args,
    ],
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), seconds * 1000);
  const out = await child.output();
  clearTimeout(timer);
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return {
    code: out.code,
    stdout: decode(out.stdout),
    stderr: decode(out.stderr),
    ms: performance.now() - t0,
  };
}
