/**
 * CUDA C of the elementwise kernels: fill, axpby, scaleShift, unary, and
 * the broadcasting opTensor and addTensor (cpu/elementwise.ts).
 *
 * @module
 */

export const ELEMENTWISE_SOURCE = `
// y[i * stride] = value for i < count; the host passes y at the offset.
extern "C" __global__ void fill(float* y, int count, int stride, float value) {
  for (i64 i = first_index(); i < count; i += grid_stride()) {
    y[i * stride] = value;
  }
}

// y[i] = alpha * x[i] + beta * y[i]. With beta == 0, y is not read: whatever
// it holds (NaN included) must not leak into the result. axpby and
// axpby_many (optim_source.ts) share it, so they compute the same bits.
__device__ __forceinline__ void axpby_element(i64 i, double alpha,
                                              const float* x, double beta,
                                              float* y) {
  y[i] = beta == 0 ? (float)(alpha * x[i])
                   : (float)(alpha * x[i] + beta * y[i]);
}

extern "C" __global__ void axpby(int n, double alpha, const float* x,
                                 double beta, float* y) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    axpby_element(i, alpha, x, beta, y);
  }
}

// y = scale * x + shift.
extern "C" __global__ void scale_shift(int n, const float* x, float* y,
                                       double scale, double shift) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    y[i] = (float)(scale * x[i] + shift);
  }
}

__device__ double unary_value(int op, double v) {
  switch (op) {
    case UNARY_SQRT: return sqrt(v);
    case UNARY_RSQRT: return 1.0 / sqrt(v);
    case UNARY_SQUARE: return v * v;
    case UNARY_EXP: return exp(v);
    case UNARY_LOG: return log(v);
    case UNARY_ABS: return fabs(v);
    default: return nan_value();
  }
}

// y = f(x) for the UnaryOp op; the branch is the same for every thread.
extern "C" __global__ void unary(int op, int n, const float* x, float* y) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    y[i] = (float)unary_value(op, x[i]);
  }
}

// The broadcast form of opTensor and addTensor, folded on the host
// (shapes.ts): the output is rows x cols, row r being (i0, i1) with
// r = i0 * d1 + i1, and the broadcast operand's element for (i0, i1, j) is
// at i0 * s0 + i1 * s1 + j * s2 (a stride is 0 along a broadcast dimension).
// A 2-D grid-stride loop: y over rows, x over columns, so the row's
// division happens once per row and the columns are read coalesced.
#define FOR_EACH_ROW(r, rows) \\
  for (i64 r = (i64)blockIdx.y * blockDim.y + threadIdx.y; r < (rows); \\
       r += (i64)blockDim.y * gridDim.y)
#define FOR_EACH_COLUMN(j, cols) \\
  for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < (cols); \\
       j += (i64)blockDim.x * gridDim.x)

// c = op(alpha1 * a, alpha2 * b) + beta * c, b broadcast; a and c are
// rows x cols. As the CPU: add and mul read c only when beta != 0; min and
// max add beta * c, or +0 when beta == 0 (which turns -0 into +0).
extern "C" __global__ void op_tensor(int op, double alpha1, const float* a,
                                     double alpha2, const float* b,
                                     double beta, float* c, int rows, int d1,
                                     int cols, int s0, int s1, int s2) {
  FOR_EACH_ROW(r, rows) {
    const i64 i0 = r / d1, i1 = r - i0 * d1;
    const float* a_row = a + r * cols;
    const float* b_row = b + i0 * s0 + i1 * s1;
    float* c_row = c + r * cols;
    FOR_EACH_COLUMN(j, cols) {
      const double av = a_row[j], bv = b_row[j * s2];
      double v;
      switch (op) {
        case BINARY_ADD:
          v = alpha1 * av + alpha2 * bv;
          if (beta != 0) v = v + beta * c_row[j];
          break;
        case BINARY_MUL:
          v = alpha1 * alpha2 * av * bv;
          if (beta != 0) v = v + beta * c_row[j];
          break;
        case BINARY_MIN:
          v = js_min(alpha1 * av, alpha2 * bv) +
              (beta == 0 ? 0.0 : beta * c_row[j]);
          break;
        case BINARY_MAX:
          v = js_max(alpha1 * av, alpha2 * bv) +
              (beta == 0 ? 0.0 : beta * c_row[j]);
          break;
        default:
          v = nan_value();
      }
      c_row[j] = (float)v;
    }
  }
}

// c = alpha * a + beta * c, a broadcast; c is read only when beta != 0.
extern "C" __global__ void add_tensor(double alpha, const float* a,
                                      double beta, float* c, int rows, int d1,
                                      int cols, int s0, int s1, int s2) {
  FOR_EACH_ROW(r, rows) {
    const i64 i0 = r / d1, i1 = r - i0 * d1;
    const float* a_row = a + i0 * s0 + i1 * s1;
    float* c_row = c + r * cols;
    FOR_EACH_COLUMN(j, cols) {
      const double v = alpha * a_row[j * s2];
      c_row[j] = beta == 0 ? (float)v : (float)(v + beta * c_row[j]);
    }
  }
}
`;
