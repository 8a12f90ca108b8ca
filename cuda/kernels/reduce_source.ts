/**
 * CUDA C of the sums: reduceSum's two shapes of reduction, the pass that
 * adds up partial sums, and dot's first pass (cpu/elementwise.ts).
 *
 * A sum is split into chunks only by the launch plan (launch.ts), a pure
 * function of the shape, so the same shape is always summed in the same
 * order.
 *
 * @module
 */

export const REDUCE_SOURCE = `
// Writes output o of a sum: with one chunk, y[o] = alpha * s + beta * y[o]
// (y not read when beta == 0); with more, the partial sum of chunk g.
__device__ __forceinline__ void store_sum(double s, i64 o, int g, int chunks,
                                          double alpha, double beta,
                                          float* y, double* partials) {
  if (chunks == 1) {
    y[o] = beta == 0 ? (float)(alpha * s) : (float)(alpha * s + beta * y[o]);
  } else {
    partials[o * chunks + g] = s;
  }
}

// reduceSum when the innermost dimension is summed: x is [d0, m, d2] and
// output o sums x[i0, o, i2] over every i0 and i2. The (i0, i2) plane is
// cut into chunks of rows_per_chunk x cols_per_chunk, chunks2 of them along
// i2; block (o, g) sums chunk g = blockIdx.y of output o, its threads
// striding over i2 (coalesced), then a block tree.
extern "C" __global__ void sum_rows(const float* __restrict__ x, int d0,
                                    int m, int d2, int rows_per_chunk,
                                    int cols_per_chunk, int chunks2,
                                    double alpha, double beta, float* y,
                                    double* __restrict__ partials) {
  const int chunks = gridDim.y, g = blockIdx.y;
  const int g0 = g / chunks2, g2 = g - g0 * chunks2;
  const i64 r_begin = (i64)g0 * rows_per_chunk;
  const i64 r_end = min((i64)d0, r_begin + rows_per_chunk);
  const i64 c_begin = (i64)g2 * cols_per_chunk;
  const i64 c_end = min((i64)d2, c_begin + cols_per_chunk);
  for (i64 o = blockIdx.x; o < m; o += gridDim.x) {
    double s = 0;
    for (i64 i0 = r_begin; i0 < r_end; i0++) {
      const float* row = x + (i0 * m + o) * d2;
      for (i64 i2 = c_begin + threadIdx.x; i2 < c_end; i2 += blockDim.x) {
        s += row[i2];
      }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) store_sum(s, o, g, chunks, alpha, beta, y, partials);
  }
}

// reduceSum when the innermost dimension is kept: x is [d0, d1, d2] and
// output (i0, i2), at y[i0 * d2 + i2], sums x[i0, i1, i2] over i1. One
// thread per output, adjacent threads on adjacent i2 (coalesced), each
// adding its rows in order: no tree needed. blockIdx.y = g takes the rows
// [g * rows_per_chunk, (g + 1) * rows_per_chunk) of d1.
extern "C" __global__ void sum_cols(const float* __restrict__ x, int d0,
                                    int d1, int d2, int rows_per_chunk,
                                    double alpha, double beta, float* y,
                                    double* __restrict__ partials) {
  const int chunks = gridDim.y, g = blockIdx.y;
  const i64 r_begin = (i64)g * rows_per_chunk;
  const i64 r_end = min((i64)d1, r_begin + rows_per_chunk);
  const i64 blocks2 = ((i64)d2 + blockDim.x - 1) / blockDim.x;
  for (i64 b = blockIdx.x; b < d0 * blocks2; b += gridDim.x) {
    const i64 i0 = b / blocks2;
    const i64 i2 = (b - i0 * blocks2) * blockDim.x + threadIdx.x;
    if (i2 >= d2) continue;
    double s = 0;
    for (i64 i1 = r_begin; i1 < r_end; i1++) s += x[(i0 * d1 + i1) * d2 + i2];
    store_sum(s, i0 * d2 + i2, g, chunks, alpha, beta, y, partials);
  }
}

// The second pass: y[o] = alpha * sum_g partials[o * chunks + g] + beta * y[o],
// one block per output, the chunks in a fixed order.
extern "C" __global__ void sum_partials(const double* __restrict__ partials,
                                        int chunks, int m, double alpha,
                                        double beta, float* y) {
  for (i64 o = blockIdx.x; o < m; o += gridDim.x) {
    double s = 0;
    for (i64 g = threadIdx.x; g < chunks; g += blockDim.x) {
      s += partials[o * chunks + g];
    }
    s = block_sum(s);
    if (threadIdx.x == 0) store_sum(s, o, 0, 1, alpha, beta, y, nullptr);
  }
}

// dot's first pass: partials[block] = the block's share of
// sum_i x[i * incx] * y[i * incy]. The share is a grid-stride set, fixed by
// n and the grid, so it is the same on every run. Strides may be negative,
// as x and y are passed at their offsets (x[xOffset + i * incx] on the CPU).
extern "C" __global__ void dot_partial(int n, const float* x, int incx,
                                       const float* y, int incy,
                                       double* __restrict__ partials) {
  double s = 0;
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    s += (double)x[i * incx] * y[i * incy];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}
`;
