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

/** What a job printed, its exit code, and how long it ran. */
export interface JobResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Options of {@link startMpirun}. */
export interface JobOptions {
  /** Killed (SIGKILL) after this many seconds (default 120). */
  seconds?: number;
  /** Environment variables, passed to every rank. */
  env?: Record<string, string>;
  /** Options of mpirun itself, before the program. */
  mpirunArgs?: string[];
}

/** Starts `mpirun -np N deno run -A script args` on this machine's cores. */
export function startMpirun(
  np: number,
  script: string,
  args: string[] = [],
  options: JobOptions = {},
): { child: Deno.ChildProcess; result: Promise<JobResult> } {
  const env = options.env ?? {};
  const t0 = performance.now();
  const child = new Deno.Command("mpirun", {
    args: [
      "--allow-run-as-root",
      "--oversubscribe",
      "-np",
      String(np),
      // One CPU thread per rank: the ranks already fill the cores.
      "-x",
      "MEC_THREADS=1",
      ...Object.keys(env).flatMap((k) => ["-x", k]),
      ...(options.mpirunArgs ?? []),
      Deno.execPath(),
      "run",
      "-A",
      script,
      ...args,
    ],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(
    () => child.kill("SIGKILL"),
    (options.seconds ?? 120) * 1000,
  );
  const result = child.output().then((out) => {
    clearTimeout(timer);
    const decode = (b: Uint8Array) => new TextDecoder().decode(b);
    return {
      code: out.code,
      stdout: decode(out.stdout),
      stderr: decode(out.stderr),
      ms: performance.now() - t0,
    };
  });
  return { child, result };
}

/** What `mpirun -np N deno run -A script` printed, within `seconds`. */
export function mpirun(
  np: number,
  script: string,
  args: string[] = [],
  seconds = 120,
  env: Record<string, string> = {},
): Promise<JobResult> {
  return startMpirun(np, script, args, { seconds, env }).result;
}
