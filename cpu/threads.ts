/**
 * One thread count for every pool the CPU backend uses: OpenBLAS's threads,
 * oneDNN's OpenMP threads, and the TypeScript kernels (which run on the
 * calling thread). The pools take turns, never running at once, so giving
 * each the same count fills the cores without oversubscribing them.
 *
 * `MEC_THREADS=N` sets it; `MEC_BLAS_THREADS`, its older name, is read when
 * `MEC_THREADS` is not set; `OMP_NUM_THREADS`, when the user sets it, wins
 * for oneDNN. Otherwise every pool starts on all the cores and the count
 * follows the load ({@link adaptThreads}): a core another process keeps
 * busy is left to it, and taken back when it is free.
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

import { coresBetween, type CpuTimes, readCpuTimes } from "./load.ts";

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

/** libgomp, opened after {@link configureOpenMp}; null where it is not found. */
function openMp(): Deno.DynamicLibrary<typeof gompSymbols>["symbols"] | null {
  if (gomp === undefined) {
    configureOpenMp();
    try {
      gomp = Deno.dlopen("libgomp.so.1", gompSymbols).symbols;
    } catch {
      gomp = null;
    }
    if (gomp !== null && adapted !== null) gomp.omp_set_num_threads(adapted);
  }
  return gomp;
}

/**
 * Runs `fn` with OpenMP's thread count at 1 on this thread (oneDNN reads it
 * when a primitive is built and when it runs), then restores it. Where
 * libgomp cannot be opened, `fn` runs as it is.
 */
export function singleThreaded<T>(fn: () => T): T {
  const omp = openMp();
  const threads = omp === null ? 1 : omp.omp_get_max_threads();
  if (threads <= 1) return fn();
  omp!.omp_set_num_threads(1);
  try {
    return fn();
  } finally {
    omp!.omp_set_num_threads(threads);
  }
}

// --- Following the load ------------------------------------------------------

/**
 * The count the load chose ({@link adaptThreads}), or null while the pools
 * keep the count they started with.
 */
let adapted: number | null = null;

/** The count the pools started with, once {@link adaptThreads} needed it. */
let startThreads: number | undefined;

/** Pools told of each new count (OpenBLAS's, once it is loaded). */
const followers: ((threads: number) => void)[] = [];

/**
 * The thread count in force, for caches of primitives that fix their
 * thread count when they are built (oneDNN's): 0 while every pool has the
 * count it started with, else the count {@link adaptThreads} chose.
 */
export function threadCount(): number {
  return adapted === null || adapted === startThreads ? 0 : adapted;
}

/**
 * `key` for a cache of primitives built for the thread count in force: as
 * it is while the pools keep their starting count, else with the count.
 */
export function keyForThreads(key: string): string {
  const threads = threadCount();
  return threads === 0
    ? key
    : `${key}, ${threads} thread${threads === 1 ? "" : "s"}`;
}

/**
 * Has `set` called with each count {@link adaptThreads} chooses, and at
 * once with the one in force if it chose one already.
 */
export function followThreadCount(set: (threads: number) => void): void {
  followers.push(set);
  if (adapted !== null) set(adapted);
}

/**
 * The thread count for `max` cores of which other processes keep `others`
 * busy: a core counts as taken from OTHERS_TAKE of it, low enough that a
 * busy loop sharing a core with one of ours (which gets it only part of
 * the time) still takes it. On two cores with a busy loop on one, the
 * demo's step ran 197-201 pairs/s on the thread left to it against 64-69
 * on two, since each parallel region waits for the thread the scheduler
 * gave away (207-212 on one fixed thread; 307-333 on two idle cores).
 */
export function chooseThreads(max: number, others: number): number {
  return Math.max(1, Math.min(max, max - Math.floor(others + 1 - OTHERS_TAKE)));
}

/** The share of a core other processes must keep busy to take it. */
export const OTHERS_TAKE = 0.6;

/** How often {@link adaptThreads} reads the load, in milliseconds. */
export const LOAD_WINDOW_MS = 2000;

/** The governor's state: the last reading and when it was taken. */
let last: { times: CpuTimes; at: number } | null = null;

/** The cores other processes kept busy over the last window. */
let othersSeen: number | null = null;

/**
 * The cores other processes kept busy over the last window
 * {@link adaptThreads} measured, or null before its first: what its last
 * choice was made from.
 */
export function loadSeen(): number | null {
  return othersSeen;
}

/**
 * Whether the thread count follows the load: no count was asked for
 * (`MEC_THREADS`, `MEC_BLAS_THREADS`, `OMP_NUM_THREADS`) and `/proc` can be
 * read (Linux).
 */
let adaptive: boolean | undefined;

/**
 * Chooses the thread count of every pool from the load of the last
 * {@link LOAD_WINDOW_MS} or more: one fewer thread for each core other
 * processes keep busy ({@link chooseThreads}), back to all the cores when
 * they are free again. A training loop calls it between steps (the CPU
 * backend's `endStep`); it costs a clock reading, and two small file
 * reads once a window. Returns the count when it changed, else null.
 *
 * A run's float32 rounding then depends on the load (oneDNN's reductions
 * split by thread); `MEC_THREADS` fixes the count, for runs and resumes
 * that must repeat bit for bit.
 */
export function adaptThreads(now = performance.now()): number | null {
  if (adaptive === undefined) {
    adaptive = requestedThreads() === null &&
      (Deno.env.get("OMP_NUM_THREADS") ?? "") === "" &&
      readCpuTimes() !== null;
  }
  if (!adaptive) return null;
  if (last !== null && now - last.at < LOAD_WINDOW_MS) return null;
  const times = readCpuTimes();
  if (times === null) return null;
  const before = last;
  last = { times, at: now };
  if (before === null) return null;
  const { others } = coresBetween(before.times, times);
  othersSeen = others;
  const max = maxThreads();
  const threads = chooseThreads(max, others);
  if (threads === (adapted ?? max)) return null;
  setThreadCount(threads);
  return threads;
}

/** The cores the pools start with: OpenMP's count, else the machine's. */
function maxThreads(): number {
  if (startThreads === undefined) {
    const omp = openMp();
    startThreads = omp?.omp_get_max_threads() ?? navigator.hardwareConcurrency;
  }
  return startThreads;
}

/**
 * Sets every pool's thread count now: OpenMP's on this thread, OpenBLAS's,
 * and the count oneDNN's plans are cached under. {@link adaptThreads} calls
 * it when the load changes; tests call it to see both counts in one run.
 */
export function setThreadCount(threads: number): void {
  maxThreads(); // The starting count, read before it changes.
  adapted = threads;
  openMp()?.omp_set_num_threads(threads);
  for (const set of followers) set(threads);
}
