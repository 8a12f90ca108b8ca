/**
 * CUDA C of the fused optimiser updates: SGD with momentum and LARC's
 * rescaling (cpu/optim.ts).
 *
 * @module
 */

export const OPTIM_SOURCE = `
// One SGD step (torch.optim.SGD): d = grad + wd * param; with momentum the
// buffer becomes d on its first step (SGD_FIRST: buf is not read, it may
// hold garbage) and momentum * buf + keep * d later (keep = 1 - dampening),
// and the step is buf, or d + momentum * buf with Nesterov; param -= lr *
// step. In SGD_PLAIN mode buf is not touched (it may be null). As the CPU,
// the step uses the double value of the new buffer, not its float copy.
extern "C" __global__ void sgd_update(int n, float* __restrict__ param,
                                      const float* __restrict__ grad,
                                      float* __restrict__ buf, int mode,
                                      int nesterov, double lr,
                                      double momentum, double keep,
                                      double weight_decay) {
  for (i64 i = first_index(); i < n; i += grid_stride()) {
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
