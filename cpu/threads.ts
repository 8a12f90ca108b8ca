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
 * one while another job held a core). GEMMs below `SMALL_GEMM` therefore
 * run on one thread.
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
