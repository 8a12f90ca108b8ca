/**
 * CUDA C of the fused optimiser updates: SGD with momentum, on one tensor or
 * on a table of them in one launch (with the teacher's EMA, axpby_many), and
 * LARC's rescaling (cpu/optim.ts).
 *
 * @module
 */

export const OPTIM_SOURCE = `
// One SGD step (torch.optim.SGD) on element i: d = grad + wd * param; with
// momentum the buffer becomes d on its first step (SGD_FIRST: buf is not
// read, it may hold garbage) and momentum * buf + keep * d later (keep = 1 -
// dampening), and the step is buf, or d + momentum * buf with Nesterov;
// param -= lr * step. In SGD_PLAIN mode buf is not touched (it may be null).
// As the CPU, the step uses the double value of the new buffer, not its
// float copy. sgd_update and sgd_update_many share it, so they compute the
// same bits.
__device__ __forceinline__ void sgd_element(i64 i, float* param,
                                            const float* grad, float* buf,
                                            int mode, int nesterov, double lr,
                                            double momentum, double keep,
                                            double weight_decay) {
  const double p = param[i];
  const double d = grad[i] + weight_decay * p;
  double step = d;
  if (mode != SGD_PLAIN) {
    const double b = mode == SGD_FIRST ? d : momentum * buf[i] + keep * d;
    buf[i] = (float)b;
    step = nesterov ? d + momentum * b : b;
  }
  param[i] = (float)(p - lr * step);
}

// sgd_element over one tensor of n elements.
extern "C" __global__ void sgd_update(int n, float* __restrict__ param,
                                      const float* __restrict__ grad,
                                      float* __restrict__ buf, int mode,
                                      int nesterov, double lr,
                                      double momentum, double keep,
                                      double weight_decay) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    sgd_element(i, param, grad, buf, mode, nesterov, lr, momentum, keep,
                weight_decay);
  }
}

// --- multi-tensor launches ----------------------------------------------------
// One launch over a list of tensors, as apex's multi_tensor_apply and
// PyTorch's _foreach ops do, but with the list in device memory (a table the
// host caches; tables.ts) rather than in the kernel's parameters. The table,
// in 64-bit words, for a list of "tensors" tensors:
//
//   offsets[0 .. tensors]    prefix sums of the lengths: tensor t is
//                            elements offsets[t] .. offsets[t + 1] - 1 of the
//                            launch, and offsets[tensors] is the total;
//   columns[k * tensors + t] after the offsets, one column per operand: the
//                            address of operand k of tensor t (SGD: param,
//                            grad, buf; axpby: x, y). A column is contiguous,
//                            so the host can rewrite the gradients' alone.
//
// One 64-bit grid-stride loop covers 0 .. total - 1, so consecutive threads
// read consecutive elements of a tensor (coalesced) and every element is
// visited once. Element i belongs to the last tensor t with offsets[t] <= i
// (which skips zero-length tensors), found by binary search. A thread's i
// only grows, so it searches only when i passes the end of its tensor, and
// then only among the tensors after it; in a large tensor most steps cost one
// comparison.

// Where a thread is in the table: its tensor and that tensor's range.
struct TensorCursor {
  const i64* offsets;
  int tensors;
  int t;  // -1 before the first seek
  i64 begin, end;
};

__device__ __forceinline__ TensorCursor cursor_start(const i64* offsets,
                                                     int tensors) {
  TensorCursor c;
  c.offsets = offsets;
  c.tensors = tensors;
  c.t = -1;
  c.begin = 0;
  c.end = 0;
  return c;
}

// Moves the cursor to the tensor of element i, which must be at least the
// cursor's begin and below the total; true when the tensor changed. The
// answer lies in [t + 1, tensors - 1]: offsets[t + 1] <= i, and
// offsets[tensors] = total > i.
__device__ __forceinline__ bool cursor_seek(TensorCursor& c, i64 i) {
  if (i < c.end) return false;
  int lo = c.t + 1, hi = c.tensors - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (c.offsets[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  c.t = lo;
  c.begin = c.offsets[lo];
  c.end = c.offsets[lo + 1];
  return true;
}

// The address of operand k of tensor t.
__device__ __forceinline__ float* table_address(const i64* columns,
                                                int tensors, int k, int t) {
  return (float*)columns[(i64)k * tensors + t];
}

// sgd_element over every tensor of the table, columns (param, grad, buf);
// buf is 0 in SGD_PLAIN mode. The step's hyper-parameters are sgd_update's.
extern "C" __global__ void sgd_update_many(int tensors,
                                           const i64* __restrict__ table,
                                           int mode, int nesterov, double lr,
                                           double momentum, double keep,
                                           double weight_decay) {
  const i64 total = table[tensors];
  const i64* columns = table + tensors + 1;
  TensorCursor c = cursor_start(table, tensors);
  float* param = nullptr;
  const float* grad = nullptr;
  float* buf = nullptr;
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    if (cursor_seek(c, i)) {
      param = table_address(columns, tensors, 0, c.t);
      grad = table_address(columns, tensors, 1, c.t);
      buf = table_address(columns, tensors, 2, c.t);
    }
    sgd_element(i - c.begin, param, grad, buf, mode, nesterov, lr, momentum,
                keep, weight_decay);
  }
}

// axpby_element (elementwise_source.ts) over every tensor of the table,
// columns (x, y): the teacher's EMA in one launch.
extern "C" __global__ void axpby_many(int tensors,
                                      const i64* __restrict__ table,
                                      double alpha, double beta) {
  const i64 total = table[tensors];
  const i64* columns = table + tensors + 1;
  TensorCursor c = cursor_start(table, tensors);
  const float* x = nullptr;
  float* y = nullptr;
  for (i64 i = first_index(); i < total; i += grid_stride()) {
    if (cursor_seek(c, i)) {
      x = table_address(columns, tensors, 0, c.t);
      y = table_address(columns, tensors, 1, c.t);
    }
    axpby_element(i - c.begin, alpha, x, beta, y);
  }
}

// LARC's first pass: the block's shares of sum a^2 and sum b^2, at
// partials[block] and partials[gridDim.x + block].
extern "C" __global__ void sum_squares2(int n, const float* __restrict__ a,
                                        const float* __restrict__ b,
                                        double* __restrict__ partials) {
  double sa = 0, sb = 0;
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    const double va = a[i], vb = b[i];
    sa += va * va;
    sb += vb * vb;
  }
  sa = block_sum(sa);
  sb = block_sum(sb);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = sa;
    partials[gridDim.x + blockIdx.x] = sb;
  }
}

// LARC's second pass, one block: the two norms from the partial sums, and
// rate[0] = 1 with rate[1] = trust * ||p|| / (||g|| + wd * ||p|| + eps) when
// both norms are non-zero, else rate[0] = 0 (the gradient is left as it is).
// A NaN norm is not zero, so it gives a NaN rate, as on the CPU.
extern "C" __global__ void lars_rate(const double* __restrict__ partials,
                                     int chunks, double trust,
                                     double weight_decay, double eps,
                                     double* __restrict__ rate) {
  double pp = 0, gg = 0;
  for (i64 g = threadIdx.x; g < chunks; g += blockDim.x) {
    pp += partials[g];
    gg += partials[chunks + g];
  }
  pp = block_sum(pp);
  gg = block_sum(gg);
  if (threadIdx.x == 0) {
    const double p_norm = sqrt(pp), g_norm = sqrt(gg);
    const bool skip = p_norm == 0 || g_norm == 0;
    rate[0] = skip ? 0.0 : 1.0;
    rate[1] = skip ? 0.0
                   : (trust * p_norm) / (g_norm + weight_decay * p_norm + eps);
  }
}

// LARC's third pass: grad = (grad + wd * param) * rate, unless lars_rate
// said to leave it.
extern "C" __global__ void lars_apply(int n, const double* __restrict__ rate,
                                      double weight_decay,
                                      const float* __restrict__ param,
                                      float* __restrict__ grad) {
  if (rate[0] == 0) return;
  const double r = rate[1];
  for (i64 i = first_index(); i < n; i += grid_stride()) {
    grad[i] = (float)((grad[i] + weight_decay * param[i]) * r);
  }
}
`;
