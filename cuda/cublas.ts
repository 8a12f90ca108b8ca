/**
 * cuBLAS (`libcublas.so.13`, or `.so.12`): a handle bound to a stream, the
 * math mode (exact float32 or TF32 tensor cores), SGEMM plain and strided
 * batched, and the level-1 calls the optimisers and reductions use.
 *
 * Names are the `_v2` ones `cublas_v2.h` `#define`s to: the unversioned
 * `cublasSgemm` the library also exports is the legacy `cublas.h` ABI, with
 * by-value scalars, and would corrupt every call.
 *
 * cuBLAS is column-major; the toolkit is row-major. `columnMajorGemm` turns a
 * row-major product into the column-major call that computes its transpose
 * in place (C^T = op(B)^T op(A)^T), with no copy.
 *
 * @module
 */

import { lazyLibrary, type Opened } from "./find.ts";
import { checker, out, pointer, pointerOut, readCString } from "./ffi.ts";

export const CUBLAS_SYMBOLS = {
  cublasGetStatusName: { parameters: ["i32"], result: "pointer" },
  cublasGetStatusString: { parameters: ["i32"], result: "pointer" },
  cublasGetProperty: { parameters: ["i32", "buffer"], result: "i32" },
  cublasGetCudartVersion: { parameters: [], result: "usize" },
  cublasCreate_v2: { parameters: ["buffer"], result: "i32" },
  cublasDestroy_v2: { parameters: ["pointer"], result: "i32" },
  cublasGetVersion_v2: { parameters: ["pointer", "buffer"], result: "i32" },
  cublasSetStream_v2: { parameters: ["pointer", "pointer"], result: "i32" },
  cublasSetMathMode: { parameters: ["pointer", "i32"], result: "i32" },
  cublasGetMathMode: { parameters: ["pointer", "buffer"], result: "i32" },
  cublasSetPointerMode_v2: { parameters: ["pointer", "i32"], result: "i32" },
  cublasSetWorkspace_v2: {
    parameters: ["pointer", "pointer", "usize"],
    result: "i32",
  },
  cublasSgemm_v2: {
    parameters: [
      "pointer", // handle
      "i32", // transa
      "i32", // transb
      "i32", // m
      "i32", // n
      "i32", // k
      "buffer", // alpha (host)
      "pointer", // A
      "i32", // lda
      "pointer", // B
      "i32", // ldb
      "buffer", // beta (host)
      "pointer", // C
      "i32", // ldc
    ],
    result: "i32",
  },
  cublasSgemmStridedBatched: {
    parameters: [
      "pointer", // handle
      "i32", // transa
      "i32", // transb
      "i32", // m
      "i32", // n
      "i32", // k
      "buffer", // alpha
      "pointer", // A
      "i32", // lda
      "i64", // strideA
      "pointer", // B
      "i32", // ldb
      "i64", // strideB
      "buffer", // beta
      "pointer", // C
      "i32", // ldc
      "i64", // strideC
      "i32", // batchCount
    ],
    result: "i32",
  },
  cublasSaxpy_v2: {
    parameters: [
      "pointer",
      "i32",
      "buffer",
      "pointer",
      "i32",
      "pointer",
      "i32",
    ],
    result: "i32",
  },
  cublasSscal_v2: {
    parameters: ["pointer", "i32", "buffer", "pointer", "i32"],
    result: "i32",
  },
  cublasSdot_v2: {
    parameters: [
      "pointer",
      "i32",
      "pointer",
      "i32",
      "pointer",
      "i32",
      "buffer",
    ],
    result: "i32",
  },
  cublasSnrm2_v2: {
    parameters: ["pointer", "i32", "pointer", "i32", "buffer"],
    result: "i32",
  },
  cublasSgeam: {
    parameters: [
      "pointer", // handle
      "i32", // transa
      "i32", // transb
      "i32", // m
      "i32", // n
      "buffer", // alpha
      "pointer", // A
      "i32", // lda
      "buffer", // beta
      "pointer", // B
      "i32", // ldb
      "pointer", // C
      "i32", // ldc
    ],
    result: "i32",
  },
} as const;

/** `cublasOperation_t`. */
export const OP_N = 0;
export const OP_T = 1;
/** `cublasMath_t`: exact float32, and TF32 tensor cores for float32 GEMM. */
export const DEFAULT_MATH = 0;
export const TF32_TENSOR_OP_MATH = 3;
/** `cublasPointerMode_t`: scalars (alpha, beta, results) in host memory. */
export const POINTER_MODE_HOST = 0;

/** cuBLAS, opened on first use; throws one sentence if it is missing. */
export const cublasLibrary: () => Opened<typeof CUBLAS_SYMBOLS> = lazyLibrary(
  "cublas",
  CUBLAS_SYMBOLS,
);

const sym = () => cublasLibrary().symbols;

/** `CUBLAS_STATUS_X (description)`, from cuBLAS itself. */
export function cublasStatusString(status: number): string {
  const s = sym();
  return `${readCString(s.cublasGetStatusName(status))} (${
    readCString(s.cublasGetStatusString(status))
  })`;
}

const check = checker("cuBLAS", cublasStatusString);

/** The library's version, e.g. "13.1.1" (needs no GPU). */
export function cublasVersion(): string {
  const parts = [0, 1, 2].map((p) => {
    const v = out.i32();
    check(sym().cublasGetProperty(p, v), "cublasGetProperty");
    return v[0];
  });
  return parts.join(".");
}

/** The CUDA runtime version cuBLAS was built with (13000 for 13.0). */
export function cublasCudartVersion(): number {
  return Number(sym().cublasGetCudartVersion());
}

/** A column-major GEMM exactly as `cublasSgemm_v2` takes it. */
export interface ColumnMajorGemm {
  transa: number;
  transb: number;
  m: number;
  n: number;
  k: number;
  /** Element offsets of A, B and C, and their leading dimensions. */
  a: number;
  lda: number;
  b: number;
  ldb: number;
  c: number;
  ldc: number;
}

/** A row-major GEMM, `C = alpha op(A) op(B) + beta C` (as nn's GemmArgs). */
export interface RowMajorGemm {
  transA: boolean;
  transB: boolean;
  m: number;
  n: number;
  k: number;
  aOffset: number;
  lda: number;
  bOffset: number;
  ldb: number;
  cOffset: number;
  ldc: number;
}

/** The column-major call of a row-major GEMM, with the buffers to pass. */
export interface ColumnMajorCall<T> extends ColumnMajorGemm {
  /** What to pass as cuBLAS's A (the row-major B) and B (the row-major A). */
  A: T;
  B: T;
  /** Element strides between batched products, swapped the same way. */
  strideA: number;
  strideB: number;
  strideC: number;
}

/** Products of a strided batch: count and each operand's element stride. */
export interface GemmBatch {
  count: number;
  strideA: number;
  strideB: number;
  strideC: number;
}

/**
 * The column-major call that computes a row-major product. A row-major
 * r x c matrix with leading dimension ld is, read column-major, its own
 * c x r transpose with the same ld; so row-major C = op(A) op(B) is
 * column-major C^T = op(B)^T op(A)^T: swap the operands (buffers, offsets
 * and leading dimensions) and m with n, and keep each operand's transpose
 * flag. Generic over the buffer type so that the test runs it on host arrays.
 */
export function columnMajorGemm<T>(
  g: RowMajorGemm,
  a: T,
  b: T,
  batch?: GemmBatch,
): ColumnMajorCall<T> {
  return {
    strideA: batch?.strideB ?? 0,
    strideB: batch?.strideA ?? 0,
    strideC: batch?.strideC ?? 0,
    transa: g.transB ? OP_T : OP_N,
    transb: g.transA ? OP_T : OP_N,
    m: g.n,
    n: g.m,
    k: g.k,
    A: b,
    a: g.bOffset,
    lda: g.ldb,
    B: a,
    b: g.aOffset,
    ldb: g.lda,
    c: g.cOffset,
    ldc: g.ldc,
  };
}

/** A cuBLAS handle bound to one stream, host pointer mode. */
export class CublasHandle {
  readonly #handle: Deno.PointerValue;
  #alpha = new Float32Array(1);
  #beta = new Float32Array(1);

  constructor(stream: Deno.PointerValue) {
    const h = out.u64();
    check(sym().cublasCreate_v2(h), "cublasCreate_v2");
    this.#handle = pointerOut(h);
    check(sym().cublasSetStream_v2(this.#handle, stream), "cublasSetStream_v2");
    check(
      sym().cublasSetPointerMode_v2(this.#handle, POINTER_MODE_HOST),
      "cublasSetPointerMode_v2",
    );
    this.setTf32(false);
  }

  /**
   * TF32 tensor cores for float32 GEMM (10-bit mantissa products), or exact
   * float32 as PyTorch's matmul does by default.
   */
  setTf32(on: boolean): void {
    check(
      sym().cublasSetMathMode(
        this.#handle,
        on ? TF32_TENSOR_OP_MATH : DEFAULT_MATH,
      ),
      "cublasSetMathMode",
    );
  }

  /**
   * Row-major `C = alpha op(A) op(B) + beta C` on device addresses; with
   * `batch`, that many products whose operands lie `stride*` elements apart.
   */
  gemm(
    g: RowMajorGemm,
    alpha: number,
    a: bigint,
    b: bigint,
    beta: number,
    c: bigint,
    batch?: {
      count: number;
      strideA: number;
      strideB: number;
      strideC: number;
    },
  ): void {
    const call = columnMajorGemm(g, a, b);
    if (!batch) return this.sgemm(call, alpha, call.A, call.B, beta, c);
    this.sgemmStridedBatched(
      call,
      alpha,
      call.A,
      batch.strideB,
      call.B,
      batch.strideA,
      beta,
      c,
      batch.strideC,
      batch.count,
    );
  }

  /** `C = alpha op(A) op(B) + beta C`, column-major; float32 buffers. */
  sgemm(
    g: ColumnMajorGemm,
    alpha: number,
    a: bigint,
    b: bigint,
    beta: number,
    c: bigint,
  ): void {
    this.#alpha[0] = alpha;
    this.#beta[0] = beta;
    check(
      sym().cublasSgemm_v2(
        this.#handle,
        g.transa,
        g.transb,
        g.m,
        g.n,
        g.k,
        this.#alpha,
        pointer(a + BigInt(g.a * 4)),
        g.lda,
        pointer(b + BigInt(g.b * 4)),
        g.ldb,
        this.#beta,
        pointer(c + BigInt(g.c * 4)),
        g.ldc,
      ),
      "cublasSgemm_v2",
    );
  }

  /** `batch` GEMMs whose operands lie `stride*` elements apart. */
  sgemmStridedBatched(
    g: ColumnMajorGemm,
    alpha: number,
    a: bigint,
    strideA: number,
    b: bigint,
    strideB: number,
    beta: number,
    c: bigint,
    strideC: number,
    batch: number,
  ): void {
    this.#alpha[0] = alpha;
    this.#beta[0] = beta;
    check(
      sym().cublasSgemmStridedBatched(
        this.#handle,
        g.transa,
        g.transb,
        g.m,
        g.n,
        g.k,
        this.#alpha,
        pointer(a + BigInt(g.a * 4)),
        g.lda,
        BigInt(strideA),
        pointer(b + BigInt(g.b * 4)),
        g.ldb,
        BigInt(strideB),
        this.#beta,
        pointer(c + BigInt(g.c * 4)),
        g.ldc,
        BigInt(strideC),
        batch,
      ),
      "cublasSgemmStridedBatched",
    );
  }

  /** `y += alpha x` over n elements with unit strides. */
  saxpy(n: number, alpha: number, x: bigint, y: bigint): void {
    this.#alpha[0] = alpha;
    check(
      sym().cublasSaxpy_v2(
        this.#handle,
        n,
        this.#alpha,
        pointer(x),
        1,
        pointer(y),
        1,
      ),
      "cublasSaxpy_v2",
    );
  }

  /** `x *= alpha`. */
  sscal(n: number, alpha: number, x: bigint): void {
    this.#alpha[0] = alpha;
    check(
      sym().cublasSscal_v2(this.#handle, n, this.#alpha, pointer(x), 1),
      "cublasSscal_v2",
    );
  }

  /** The dot product, returned to the host (waits for the stream). */
  sdot(n: number, x: bigint, incx: number, y: bigint, incy: number): number {
    const r = out.f32();
    check(
      sym().cublasSdot_v2(
        this.#handle,
        n,
        pointer(x),
        incx,
        pointer(y),
        incy,
        r,
      ),
      "cublasSdot_v2",
    );
    return r[0];
  }

  /** The Euclidean norm, returned to the host (waits for the stream). */
  snrm2(n: number, x: bigint): number {
    const r = out.f32();
    check(
      sym().cublasSnrm2_v2(this.#handle, n, pointer(x), 1, r),
      "cublasSnrm2_v2",
    );
    return r[0];
  }

  /** `C = alpha op(A) + beta op(B)`, column-major m x n (also a transpose). */
  sgeam(
    transa: number,
    transb: number,
    m: number,
    n: number,
    alpha: number,
    a: bigint,
    lda: number,
    beta: number,
    b: bigint,
    ldb: number,
    c: bigint,
    ldc: number,
  ): void {
    this.#alpha[0] = alpha;
    this.#beta[0] = beta;
    check(
      sym().cublasSgeam(
        this.#handle,
        transa,
        transb,
        m,
        n,
        this.#alpha,
        pointer(a),
        lda,
        this.#beta,
        pointer(b),
        ldb,
        pointer(c),
        ldc,
      ),
      "cublasSgeam",
    );
  }

  dispose(): void {
    check(sym().cublasDestroy_v2(this.#handle), "cublasDestroy_v2");
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
