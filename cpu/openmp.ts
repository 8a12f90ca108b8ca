/**
 * OpenMP's thread count for the calling thread, through libgomp (the OpenMP
 * runtime that Debian's oneDNN uses), so that single oneDNN primitives can
 * run on one thread while the convolutions keep `MEC_THREADS`.
 *
 * Batch norm and sums are memory-bound: a second thread adds little
 * bandwidth, and each of their parallel regions (batch norm has several:
 * mean, variance, normalisation) waits at a barrier for every thread. On a
 * machine other jobs share, a thread the scheduler has given away holds up
 * each barrier for a time slice: batch norm's forward on [8, 256, 56, 56]
 * ran at 0.01 Gelem/s on two threads there against 0.2 on one.
 *
 * @module
 */

const symbols = {
  omp_set_num_threads: { parameters: ["i32"], result: "void" },
  omp_get_max_threads: { parameters: [], result: "i32" },
} as const;

/** libgomp's two calls, or null where it cannot be opened. */
let gomp: Deno.DynamicLibrary<typeof symbols>["symbols"] | null | undefined;

function library() {
  if (gomp === undefined) {
    try {
      gomp = Deno.dlopen("libgomp.so.1", symbols).symbols;
    } catch {
      gomp = null;
    }
  }
  return gomp;
}

/**
 * Runs `fn` with OpenMP's thread count at 1 on this thread (oneDNN reads it
 * when a primitive is built and when it runs), then restores it. Where
 * libgomp is not found, `fn` runs as it is.
 */
export function singleThreaded<T>(fn: () => T): T {
  const omp = library();
  const threads = omp === null ? 1 : omp.omp_get_max_threads();
  if (threads <= 1) return fn();
  omp!.omp_set_num_threads(1);
  try {
    return fn();
  } finally {
    omp!.omp_set_num_threads(threads);
  }
}

/** OpenMP's thread count for this thread, or null without libgomp. */
export function openMpThreads(): number | null {
  const omp = library();
  return omp === null ? null : omp.omp_get_max_threads();
}
