/**
 * CUDA C of the row-wise fused kernels: L2 normalisation and softmax
 * cross-entropy (cpu/rows.ts). One block per row; each row's sums run in
 * double, as on the CPU.
 *
 * @module
 */

export const ROWS_SOURCE = `
#define FOR_EACH_BLOCK_ROW(r, rows) \\
  for (i64 r = blockIdx.x; r < (rows); r += gridDim.x)
#define FOR_EACH_THREAD_COLUMN(j, cols) \\
  for (i64 j = threadIdx.x; j < (cols); j += blockDim.x)

// y = x / max(||x||, eps) per row (F.normalize), norms[r] = ||x_r||. y may
// be x: the row is read whole before the first write (block_sum's barrier).
extern "C" __global__ void l2_normalize_forward(const float* x, float* y,
                                                float* norms, int rows,
                                                int cols, double eps) {
  FOR_EACH_BLOCK_ROW(r, rows) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double sq = 0;
    FOR_EACH_THREAD_COLUMN(j, cols) {
      const double v = xr[j];
      sq += v * v;
    }
    const double norm = sqrt(block_sum(sq));
    if (threadIdx.x == 0) norms[r] = (float)norm;
    const double inv = 1 / js_max(norm, eps);
    FOR_EACH_THREAD_COLUMN(j, cols) yr[j] = (float)(xr[j] * inv);
  }
}

// dx = (dy - y (y . dy)) / ||x|| where ||x|| >= eps, else dy / eps (the
// divisor is the constant eps there, PyTorch's clamp_min). The branch is the
// same for the whole block, as it depends on the row only.
extern "C" __global__ void l2_normalize_backward(const float* y,
                                                 const float* norms,
                                                 const float* dy, float* dx,
                                                 int rows, int cols,
                                                 double eps) {
  FOR_EACH_BLOCK_ROW(r, rows) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    const double norm = norms[r];
    if (norm >= eps) {
      double proj = 0;
      FOR_EACH_THREAD_COLUMN(j, cols) proj += (double)yr[j] * dyr[j];
      proj = block_sum(proj);
      const double inv = 1 / norm;
      FOR_EACH_THREAD_COLUMN(j, cols) {
        dxr[j] = (float)((dyr[j] - yr[j] * proj) * inv);
      }
    } else {
      const double inv = 1 / eps;
      FOR_EACH_THREAD_COLUMN(j, cols) dxr[j] = (float)(dyr[j] * inv);
    }
  }
}

// Whether a label is a class index: an integral float in [0, cols).
__device__ __forceinline__ bool is_class(float t, int cols) {
  return t == floorf(t) && t >= 0 && t < cols;
}

// probs = softmax of each row, the row's max subtracted first, and
// losses[r] = max + log(sum) - logits[label] = -log softmax[label]. The CPU
// throws for a label that is not a class index; a kernel cannot, so that
// row's loss is NaN, which the training loop's finite-loss check catches.
extern "C" __global__ void softmax_cross_entropy_forward(
    const float* logits, const float* labels, float* probs, float* losses,
    int rows, int cols) {
  FOR_EACH_BLOCK_ROW(r, rows) {
    const float* xr = logits + r * cols;
    float* pr = probs + r * cols;
    double max = minus_infinity();
    FOR_EACH_THREAD_COLUMN(j, cols) max = js_max(max, xr[j]);
    max = block_max(max);
    double sum = 0;
    FOR_EACH_THREAD_COLUMN(j, cols) sum += exp(xr[j] - max);
    const double log_sum = log(block_sum(sum));
    FOR_EACH_THREAD_COLUMN(j, cols) pr[j] = (float)exp(xr[j] - max - log_sum);
    if (threadIdx.x == 0) {
      const float t = labels[r];
      losses[r] = is_class(t, cols) ? (float)(max + log_sum - xr[(int)t])
                                    : (float)nan_value();
    }
  }
}

// dx[r, j] = dLosses[r] * (probs[r, j] - [j == label]), rounded as the CPU
// does it: the product to float first, then the label's element minus g.
// A row whose label is not a class index gets NaN (see the forward).
extern "C" __global__ void softmax_cross_entropy_backward(
    const float* probs, const float* labels, const float* d_losses,
    float* dx, int rows, int cols) {
  FOR_EACH_BLOCK_ROW(r, rows) {
    const float* pr = probs + r * cols;
    float* dxr = dx + r * cols;
    const double g = d_losses[r];
    const float t = labels[r];
    const bool valid = is_class(t, cols);
    const i64 label = valid ? (i64)t : -1;
    FOR_EACH_THREAD_COLUMN(j, cols) {
      float v = (float)(g * pr[j]);
      if (j == label) v = (float)(v - g);
      dxr[j] = valid ? v : (float)nan_value();
    }
  }
}
`;
