/**
 * CBLAS through Deno FFI: OpenBLAS by default, any CBLAS by environment.
 *
 * `MEC_BLAS` names the library file to load (a path or a soname); otherwise
 * the usual OpenBLAS sonames are tried. `MEC_THREADS` sets the thread count
 * (OpenBLAS only; other libraries keep their own setting), and products
 * smaller than `SMALL_GEMM` run on one thread (see threads.ts).
 *
 * Buffers are passed as typed arrays ("buffer" arguments): Deno passes their
 * address without copying, and this costs far less per call than building a
 * pointer object (see shared/reference/measured.md). Integers stay i32.
 *
 * @module
 */

import { followThreadCount, requestedThreads, SMALL_GEMM } from "./threads.ts";

const symbols = {
  cblas_sgemm: {
    parameters: [
      "i32", // order
      "i32", // transA
      "i32", // transB
      "i32", // m
      "i32", // n
      "i32", // k
      "f32", // alpha
      "buffer", // A
      "i32", // lda
      "buffer", // B
      "i32", // ldb
      "f32", // beta
      "buffer", // C
      "i32", // ldc
    ],
    result: "void",
  },
  cblas_sdot: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32"],
    result: "f32",
  },
  cblas_sasum: {
    parameters: ["i32", "buffer", "i32"],
    result: "f32",
  },
  openblas_set_num_threads: {
    parameters: ["i32"],
    result: "void",
    optional: true,
  },
  openblas_get_num_threads: {
    parameters: [],
    result: "i32",
    optional: true,
  },
} as const;

const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

/** Sonames tried in order when `MEC_BLAS` is not set. */
const DEFAULT_NAMES = [
  "libopenblas.so.0",
  "libopenblas.so",
  "libopenblas.dylib",
  "libopenblas.dll",
];

/**
 * sgemm's arguments in CBLAS's order (row-major): transA, transB, m, n, k,
 * alpha, A, lda, B, ldb, beta, C, ldc.
 */
export type SgemmArgs = Parameters<Blas["sgemm"]>;

/** The few CBLAS calls the CPU backend makes, with row-major semantics. */
export interface Blas {
  /** The library file that was loaded. */
  readonly path: string;
  /**
   * `C = alpha * op(A) op(B) + beta * C`, row-major. Pass subarrays to start
   * at an offset. Sizes are trusted: check them before calling.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
  sdot(
    n: number,
    x: Float32Array,
    incx: number,
    y: Float32Array,
    incy: number,
  ): number;
  /**
   * Whether the first `n` elements of x are all finite: their sum of
   * absolute values (one pass, on one thread) is, which a NaN or an
   * infinity prevents. A sum of finite values too large for float32 also
   * answers false; callers take the careful path then, never a wrong one.
   */
  allFinite(n: number, x: Float32Array): boolean;
  /** Sets the thread count (OpenBLAS); returns false if the library cannot. */
  setThreads(n: number): boolean;
  /** The thread count, or 0 if the library does not say. */
  threads(): number;
}

let loaded: Blas | null = null;

/** Loads the CBLAS library once per process (on first use). */
export function blas(): Blas {
  if (loaded === null) loaded = openBlas();
  return loaded;
}

/**
 * How long OpenBLAS's idle worker threads spin before they sleep, as log2 of
 * cycles (its default is 28). On two cores the spinning thread steals the
 * core that oneDNN or the TypeScript kernels need next: a short wait made a
 * ResNet-50 training step 10-15 % faster here and did not slow sgemm.
 * OpenBLAS reads it once, when the library loads; a user's setting wins.
 */
const THREAD_TIMEOUT = "4";

function openBlas(): Blas {
  if (Deno.env.get("OPENBLAS_THREAD_TIMEOUT") === undefined) {
    Deno.env.set("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT);
  }
  const env = Deno.env.get("MEC_BLAS");
  const candidates = env ? [env] : DEFAULT_NAMES;
  const failures: string[] = [];
  for (const name of candidates) {
    let lib: Deno.DynamicLibrary<typeof symbols>;
    try {
      lib = Deno.dlopen(name, symbols);
    } catch (e) {
      failures.push(`${name}: ${(e as Error).message}`);
      continue;
    }
    return wrap(lib, name);
  }
  const tried = candidates.join(", ");
  const hint = env
    ? `MEC_BLAS names "${env}", which could not be loaded`
    : `no OpenBLAS library was found (tried ${tried})`;
  throw new Error(
    `${hint}; install OpenBLAS (Debian/Ubuntu: apt-get install libopenblas0-pthread) ` +
      `or set MEC_BLAS to the path of a CBLAS library. Loader said: ${
        failures.at(-1)
      }`,
  );
}

function wrap(lib: Deno.DynamicLibrary<typeof symbols>, path: string): Blas {
  const s = lib.symbols;
  const setThreads = s.openblas_set_num_threads;
  /** OpenBLAS's thread count as last set (0: the library cannot say). */
  let pool = s.openblas_get_num_threads ? s.openblas_get_num_threads() : 0;
  const b: Blas = {
    path,
    sgemm(transA, transB, m, n, k, alpha, a, lda, bb, ldb, beta, c, ldc) {
      const single = pool > 1 && setThreads !== null &&
        m * n * k < SMALL_GEMM;
      if (single) setThreads!(1);
      s.cblas_sgemm(
        ROW_MAJOR,
        transA ? TRANS : NO_TRANS,
        transB ? TRANS : NO_TRANS,
        m,
        n,
        k,
        alpha,
        a,
        lda,
        bb,
        ldb,
        beta,
        c,
        ldc,
      );
      if (single) setThreads!(pool);
    },
    sdot(n, x, incx, y, incy) {
      return s.cblas_sdot(n, x, incx, y, incy);
    },
    allFinite(n, x) {
      // One thread: OpenBLAS's workers would wake and then spin while
      // oneDNN's OpenMP threads, which run the op this check guards, want
      // the same cores (2 ms lost per call on two cores, against 0.9 ms
      // for the check itself on [8, 256, 56, 56]).
      const single = pool > 1 && setThreads !== null;
      if (single) setThreads!(1);
      const sum = s.cblas_sasum(n, x, 1);
      if (single) setThreads!(pool);
      return Number.isFinite(sum);
    },
    setThreads(n) {
      if (!setThreads) return false;
      setThreads(n);
      pool = n;
      return true;
    },
    threads() {
      return s.openblas_get_num_threads ? s.openblas_get_num_threads() : 0;
    },
  };
  const threads = requestedThreads();
  if (threads !== null) b.setThreads(threads);
  else followThreadCount((n) => b.setThreads(n));
  return b;
}
