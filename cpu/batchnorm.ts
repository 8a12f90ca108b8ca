/**
 * Batch-norm kernels over [n, c, spatial] (PyTorch's BatchNorm1d/2d math).
 *
 * Statistics take one pass: sums of x - K and (x - K)^2 in float64, with K
 * the channel's first element. Shifting by a value of the data keeps the
 * variance accurate when the mean is large next to the spread, and float64
 * sums of float32 data lose nothing at these counts. Each loop over a
 * contiguous spatial row is a small function (see elementwise.ts on why).
 *
 * @module
 */

import type { BatchNormDesc } from "../nn/backend.ts";

/** Sums of (x - k) and (x - k)^2 over x[from..to), added into out[0..1]. */
function shiftedMoments(
  x: Float32Array,
  from: number,
  to: number,
  k: number,
  out: Float64Array,
): void {
  let s = 0;
  let q = 0;
  for (let j = from; j < to; j++) {
    const t = x[j] - k;
    s += t;
    q += t * t;
  }
  out[0] += s;
  out[1] += q;
}

/** y = x * scale + shift over [from, to). */
function scaleRange(
  x: Float32Array,
  y: Float32Array,
  from: number,
  to: number,
  scale: number,
  shift: number,
): void {
  for (let j = from; j < to; j++) y[j] = x[j] * scale + shift;
}

/** Sums of dy and dy * (x - mean) over [from, to), added into out[0..1]. */
function gradientMoments(
  x: Float32Array,
  dy: Float32Array,
  from: number,
  to: number,
  mean: number,
  out: Float64Array,
): void {
  let s = 0;
  let q = 0;
  for (let j = from; j < to; j++) {
    const g = dy[j];
    s += g;
    q += g * (x[j] - mean);
  }
  out[0] += s;
  out[1] += q;
}

/** dx = g * (dy - meanDy - (x - mean) * k) over [from, to). */
function gradientRange(
  x: Float32Array,
  dy: Float32Array,
  dx: Float32Array,
  from: number,
  to: number,
  g: number,
  meanDy: number,
  mean: number,
  k: number,
): void {
  for (let j = from; j < to; j++) {
    dx[j] = g * (dy[j] - meanDy - (x[j] - mean) * k);
  }
}

export function batchNormForwardTraining(
  x: Float32Array,
  y: Float32Array,
  gamma: Float32Array | null,
  beta: Float32Array | null,
  runningMean: Float32Array | null,
  runningVar: Float32Array | null,
  saveMean: Float32Array,
  saveInvStd: Float32Array,
  d: BatchNormDesc,
): void {
  const { n, c, spatial: s, eps, momentum } = d;
  const count = n * s;
  const plane = c * s;
  const m = new Float64Array(2);
  for (let ch = 0; ch < c; ch++) {
    const k = x[ch * s];
    m[0] = 0;
    m[1] = 0;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      shiftedMoments(x, base, base + s, k, m);
    }
    const shiftedMean = m[0] / count;
    const mean = k + shiftedMean;
    // Sum of squared deviations from the mean, never below 0 after rounding.
    const sq = Math.max(m[1] - m[0] * shiftedMean, 0);
    const variance = sq / count;
    const invStd = 1 / Math.sqrt(variance + eps);
    saveMean[ch] = mean;
    saveInvStd[ch] = invStd;
    const scale = (gamma ? gamma[ch] : 1) * invStd;
    const shift = (beta ? beta[ch] : 0) - mean * scale;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      scaleRange(x, y, base, base + s, scale, shift);
    }
    if (runningMean && runningVar) {
      // PyTorch updates the running variance with the unbiased estimate.
      const unbiased = count > 1 ? sq / (count - 1) : variance;
      runningMean[ch] = (1 - momentum) * runningMean[ch] + momentum * mean;
      runningVar[ch] = (1 - momentum) * runningVar[ch] + momentum * unbiased;
    }
  }
}

/**
 * A bound far below float32's largest value (3.4e38): the margin covers
 * every rounding in the statistics many times over, and real data sits
 * thirty orders of magnitude under it.
 */
const FINITE_BOUND = 1e30;

/**
 * Whether a training forward that saved these statistics wrote only
 * finite values, known from the statistics alone: a NaN or an infinity in
 * a channel's input makes its mean or variance NaN or infinite, and with
 * finite statistics every input x obeys |x| <= sqrt(count * E[x^2]),
 * E[x^2] = var + mean^2 <= 1/invStd^2 + mean^2, so each output
 * gamma * (x - mean) * invStd + beta is bounded by the channel's figures.
 * False (not known) whenever a bound reaches FINITE_BOUND.
 */
export function trainingOutputFinite(
  saveMean: Float32Array,
  saveInvStd: Float32Array,
  gamma: Float32Array | null,
  beta: Float32Array | null,
  d: BatchNormDesc,
): boolean {
  const count = d.n * d.spatial;
  for (let ch = 0; ch < d.c; ch++) {
    const mean = Math.abs(saveMean[ch]);
    const invStd = saveInvStd[ch];
    const g = gamma ? Math.abs(gamma[ch]) : 1;
    const b = beta ? Math.abs(beta[ch]) : 0;
    const x = Math.sqrt(count * (1 / (invStd * invStd) + mean * mean));
    const bound = g * (x + mean) * invStd + b;
    // Written so that a NaN anywhere fails the test.
    if (!(invStd > 0 && bound < FINITE_BOUND)) return false;
  }
  return true;
}

export function batchNormForwardInference(
  x: Float32Array,
  y: Float32Array,
  gamma: Float32Array | null,
  beta: Float32Array | null,
  mean: Float32Array,
  variance: Float32Array,
  d: BatchNormDesc,
): void {
  const { n, c, spatial: s, eps } = d;
  const plane = c * s;
  for (let ch = 0; ch < c; ch++) {
    const scale = (gamma ? gamma[ch] : 1) / Math.sqrt(variance[ch] + eps);
    const shift = (beta ? beta[ch] : 0) - mean[ch] * scale;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      scaleRange(x, y, base, base + s, scale, shift);
    }
  }
}

export function batchNormBackward(
  x: Float32Array,
  dy: Float32Array,
  dx: Float32Array,
  gamma: Float32Array | null,
  dGamma: Float32Array | null,
  dBeta: Float32Array | null,
  saveMean: Float32Array,
  saveInvStd: Float32Array,
  d: BatchNormDesc,
): void {
  const { n, c, spatial: s } = d;
  const count = n * s;
  const plane = c * s;
  const m = new Float64Array(2);
  for (let ch = 0; ch < c; ch++) {
    const mean = saveMean[ch];
    const invStd = saveInvStd[ch];
    m[0] = 0;
    m[1] = 0;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      gradientMoments(x, dy, base, base + s, mean, m);
    }
    const [sumDy, sumDyXc] = m;
    // dx = gamma * invStd * (dy - mean(dy) - xhat * mean(dy * xhat))
    const g = (gamma ? gamma[ch] : 1) * invStd;
    const k = (sumDyXc / count) * invStd * invStd;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      gradientRange(x, dy, dx, base, base + s, g, sumDy / count, mean, k);
    }
    if (dGamma) dGamma[ch] = sumDyXc * invStd;
    if (dBeta) dBeta[ch] = sumDy;
  }
}
