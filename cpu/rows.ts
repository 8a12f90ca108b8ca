/**
 * Row-wise fused kernels: L2 normalisation and softmax cross-entropy. Each
 * row's reductions run in float64.
 *
 * @module
 */

export function l2NormalizeForward(
  x: Float32Array,
  y: Float32Array,
  norms: Float32Array,
  rows: number,
  cols: number,
  eps: number,
): void {
  for (let i = 0; i < rows; i++) {
    const base = i * cols;
    let sq = 0;
    for (let j = base; j < base + cols; j++) sq += x[j] * x[j];
    const norm = Math.sqrt(sq);
    norms[i] = norm;
    const inv = 1 / Math.max(norm, eps);
    for (let j = base; j < base + cols; j++) y[j] = x[j] * inv;
  }
}

export function l2NormalizeBackward(
  y: Float32Array,
  norms: Float32Array,
  dy: Float32Array,
  dx: Float32Array,
  rows: number,
  cols: number,
  eps: number,
): void {
  for (let i = 0; i < rows; i++) {
    const base = i * cols;
    const norm = norms[i];
    if (norm >= eps) {
      // d(x/|x|) = (dy - y (y . dy)) / |x|
      let proj = 0;
      for (let j = base; j < base + cols; j++) proj += y[j] * dy[j];
      const inv = 1 / norm;
      for (let j = base; j < base + cols; j++) {
        dx[j] = (dy[j] - y[j] * proj) * inv;
      }
    } else {
      // Below eps the divisor is the constant eps (PyTorch's clamp_min).
      const inv = 1 / eps;
      for (let j = base; j < base + cols; j++) dx[j] = dy[j] * inv;
    }
  }
}

function label(labels: Float32Array, i: number, cols: number): number {
  const t = labels[i];
  if (!Number.isInteger(t) || t < 0 || t >= cols) {
    throw new RangeError(
      `crossEntropy: label ${t} of row ${i} is not a class index in [0, ${cols})`,
    );
  }
  return t;
}

export function softmaxCrossEntropyForward(
  logits: Float32Array,
  labels: Float32Array,
  probs: Float32Array,
  losses: Float32Array,
  rows: number,
  cols: number,
): void {
  for (let i = 0; i < rows; i++) {
    const base = i * cols;
    const t = label(labels, i, cols);
    let max = -Infinity;
    for (let j = base; j < base + cols; j++) max = Math.max(max, logits[j]);
    let sum = 0;
    for (let j = base; j < base + cols; j++) sum += Math.exp(logits[j] - max);
    const logSum = Math.log(sum);
    for (let j = base; j < base + cols; j++) {
      probs[j] = Math.exp(logits[j] - max - logSum);
    }
    losses[i] = max + logSum - logits[base + t];
  }
}

export function softmaxCrossEntropyBackward(
  probs: Float32Array,
  labels: Float32Array,
  dLosses: Float32Array,
  dx: Float32Array,
  rows: number,
  cols: number,
): void {
  for (let i = 0; i < rows; i++) {
    const base = i * cols;
    const g = dLosses[i];
    for (let j = base; j < base + cols; j++) dx[j] = g * probs[j];
    dx[base + label(labels, i, cols)] -= g;
  }
}
