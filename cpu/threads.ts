/**
 * One thread count for every pool the CPU backend uses: OpenBLAS's threads,
 * oneDNN's OpenMP threads, and the TypeScript kernels (which run on the
 * calling thread). The pools take turns, never running at once, so giving
 * each the same count fills the cores without oversubscribing them.
 *
 * `MEC_THREADS=N` sets it; `MEC_BLAS_THREADS`, its older name, is read when
 * `MEC_THREADS` is not set; otherwise each library keeps its own default
 * (all the cores). `OMP_NUM_THREADS`, when the user sets it, wins for
 * oneDNN.
 *
 * Products too small to split pay more for the hand-off to a second thread
 * than they save, and much more when another process holds a core: a
 * thread that is not scheduled holds up the whole call for a time slice
 * (a tiny network's step took 4.7 s on two BLAS threads against 0.1 s on
 * one while another job held a core). GEMMs below `SMALL_GEMM` and
 * oneDNN's memory-bound ops up to `SMALL_OP` elements therefore run on one
 * thread.
 *
 * @module
 */

/**
 * Multiply-adds (m * n * k) under which a GEMM runs on one thread: 16.8 M,
 * about 0.3 ms on one core at OpenBLAS's 90 GFLOP/s, a few times the cost
 * of waking a second thread and well under a scheduler's time slice.
 */
export const SMALL_GEMM = 1 << 24;

/**
 * The thread count the user asked for (`MEC_THREADS`, else
 * `MEC_BLAS_THREADS`), or null when neither is set. Throws one sentence
 * when the value is not a positive integer.
 */
export function requestedThreads(): number | null {
  for (const name of ["MEC_THREADS", "MEC_BLAS_THREADS"]) {
    const value = Deno.env.get(name);
    if (value === undefined || value === "") continue;
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) {
      throw new Error(`${name} must be a positive integer, got "${value}"`);
    }
    return n;
  }
  return null;
}

/**
 * Elements (1 MB of float32) up to which oneDNN's memory-bound ops (batch
 * norm, sums, pooling) run on one OpenMP thread: about 0.1 ms of work,
 * where waking a second thread gains nothing, and where each of their
 * barriers would wait a time slice for a thread that another process has
 * taken (the demo's projector batch norms, 16 K elements, took 19 ms a
 * call on two threads while another run held both cores). The choice
 * follows the shape alone, so a shape's results have the same bits on
 * every call and every run.
 */
export const SMALL_OP = 1 << 18;

/**
 * How many times libgomp's idle threads poll for work before they sleep,
 * where the user set neither `GOMP_SPINCOUNT` nor `OMP_WAIT_POLICY`.
 * libgomp's default, 300,000 polls, keeps a thread spinning between
 * oneDNN calls; when another process wants a core, that spinning takes
 * the time slices our other thread needed, and every parallel region then
 * waits a slice for it. 10,000 polls still bridge the gap between two
 * primitives of a step. The demo's step (batch 64, 28 px), mean of 30
 * steps: idle 0.171-0.178 s (libgomp's default) against 0.173-0.181 s;
 * with a busy loop on one of two cores 1.43 s against 0.59-0.61 s
 * (100,000 polls: 0.81 s; 1,000 or OMP_WAIT_POLICY=passive: 0.59-0.60 s,
 * but 0.19-0.20 s idle). One thread (`MEC_THREADS=1`) takes 0.26 s, busy
 * loop or not. On ResNet-50's convolutions the setting changes the idle
 * rate by less than the run-to-run spread.
 */
export const GOMP_SPINCOUNT = 10000;

/**
 * The OpenMP settings, applied before oneDNN (and with it libgomp) is
 * loaded, since libgomp reads its environment once, when loaded: the
 * thread count of {@link requestedThreads} unless `OMP_NUM_THREADS` is
 * set, and {@link GOMP_SPINCOUNT}.
 */
export function configureOpenMp(): void {
  const threads = requestedThreads();
  const env = (name: string) => Deno.env.get(name) ?? "";
  if (threads !== null && env("OMP_NUM_THREADS") === "") {
    Deno.env.set("OMP_NUM_THREADS", String(threads));
  }
  if (env("GOMP_SPINCOUNT") === "" && env("OMP_WAIT_POLICY") === "") {
    Deno.env.set("GOMP_SPINCOUNT", String(GOMP_SPINCOUNT));
  }
}

const gompSymbols = {
  omp_set_num_threads: { parameters: ["i32"], result: "void" },
  omp_get_max_threads: { parameters: [], result: "i32" },
} as const;

/** libgomp (Debian's oneDNN's OpenMP runtime), or null where it is not found. */
let gomp:
  | Deno.DynamicLibrary<typeof gompSymbols>["symbols"]
  | null
  | undefined;

/**
 * Runs `fn` with OpenMP's thread count at 1 on this thread (oneDNN reads it
 * when a primitive is built and when it runs), then restores it. Where
 * libgomp cannot be opened, `fn` runs as it is.
 */
export function singleThreaded<T>(fn: () => T): T {
  if (gomp === undefined) {
    configureOpenMp();
    try {
      gomp = Deno.dlopen("libgomp.so.1", gompSymbols).symbols;
    } catch {
      gomp = null;
    }
  }
  const threads = gomp === null ? 1 : gomp.omp_get_max_threads();
  if (threads <= 1) return fn();
  gomp!.omp_set_num_threads(1);
  try {
    return fn();
  } finally {
    gomp!.omp_set_num_threads(threads);
  }
}
