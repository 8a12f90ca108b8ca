/**
 * The CUDA C source of every kernel, as one NVRTC program: a prelude of
 * shared helpers, then the kernels grouped as the CPU backend groups its
 * TypeScript ones (cpu/elementwise.ts, cpu/optim.ts, cpu/rows.ts).
 *
 * Conventions of every kernel:
 * - Arithmetic is done in double, in the order the CPU backend writes it
 *   (JavaScript numbers are doubles), and stored as float. The program is
 *   compiled with `--fmad=false`, so no multiply-add is contracted and an
 *   elementwise result should be the CPU backend's bit for bit (exp and log
 *   aside, whose libraries differ; the only fused multiply-adds in the PTX
 *   are theirs). The kernels are bound by memory traffic, so the
 *   double arithmetic costs nothing on the data-centre GPUs this targets.
 * - Sums run in double, each thread over a fixed set of elements, then a tree
 *   in shared memory in a fixed order: no atomics, so a sum is bitwise the same
 *   on every run (exact `--resume` depends on it). A sum too long for one
 *   block is cut into chunks whose partial sums a second kernel adds up.
 * - Element counts fit an `int` (the host checks); indices are computed in
 *   64 bits, so `offset + i * stride` cannot overflow.
 * - `__restrict__` only where the interface makes buffers distinct
 *   (optimiser state, scratch); elementwise ops may run in place, as on the
 *   CPU.
 *
 * @module
 */

import { ELEMENTWISE_SOURCE } from "./elementwise_source.ts";
import { OPTIM_SOURCE } from "./optim_source.ts";
import { REDUCE_SOURCE } from "./reduce_source.ts";
import { ROWS_SOURCE } from "./rows_source.ts";
import { BINARY_OPS, cEnum, SGD_MODES, UNARY_OPS } from "./ops.ts";

const PRELUDE = `
typedef long long i64;

${cEnum("BinaryOp", "BINARY", BINARY_OPS)}
${cEnum("UnaryOp", "UNARY", UNARY_OPS)}
${cEnum("SgdMode", "SGD", SGD_MODES)}

// The index where thread i of a 1-D grid-stride loop starts, and its step.
__device__ __forceinline__ i64 first_index() {
  return (i64)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ i64 grid_stride() {
  return (i64)blockDim.x * gridDim.x;
}

__device__ __forceinline__ double nan_value() {
  return __longlong_as_double(0x7ff8000000000000LL);
}
__device__ __forceinline__ double minus_infinity() {
  return __longlong_as_double((i64)0xfff0000000000000ULL);
}

// JavaScript's Math.min and Math.max, which the CPU backend uses: NaN when
// either is NaN (fmin and fmax would return the other one), and -0 < +0.
__device__ double js_min(double a, double b) {
  if (isnan(a) || isnan(b)) return nan_value();
  if (a == b) return signbit(a) ? a : b;
  return a < b ? a : b;
}
__device__ double js_max(double a, double b) {
  if (isnan(a) || isnan(b)) return nan_value();
  if (a == b) return signbit(a) ? b : a;
  return a > b ? a : b;
}

// Dynamic shared memory of the block reductions: blockDim.x doubles.
extern __shared__ double shared_sums[];

// The sum of v over the block's threads, returned to every thread. A tree
// in shared memory whose pairs are fixed by the thread indices, so the
// result never depends on timing. blockDim.x must be a power of two (the
// launch configurations make it so) and every thread of the block must call
// it. The last barrier lets the caller reduce again at once.
__device__ double block_sum(double v) {
  const unsigned t = threadIdx.x;
  shared_sums[t] = v;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) shared_sums[t] += shared_sums[t + half];
    __syncthreads();
  }
  const double total = shared_sums[0];
  __syncthreads();
  return total;
}

// The maximum of v over the block, with js_max; as block_sum.
__device__ double block_max(double v) {
  const unsigned t = threadIdx.x;
  shared_sums[t] = v;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (t < half) shared_sums[t] = js_max(shared_sums[t], shared_sums[t + half]);
    __syncthreads();
  }
  const double total = shared_sums[0];
  __syncthreads();
  return total;
}
`;

/** The whole program NVRTC compiles. */
export const KERNEL_SOURCE: string = [
  PRELUDE,
  ELEMENTWISE_SOURCE,
  REDUCE_SOURCE,
  OPTIM_SOURCE,
  ROWS_SOURCE,
].join("\n");
