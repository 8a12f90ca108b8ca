/**
 * Batch-norm kernels over [n, c, spatial] (PyTorch's BatchNorm1d/2d math).
 *
 * Statistics are accumulated in float64 (JavaScript numbers) with a separate
 * pass for the variance, so they do not lose digits on large batches. Loops
 * run channel by channel and, inside, over contiguous spatial rows.
 *
 * @module
 */

import type { BatchNormDesc } from "../nn/backend.ts";

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
  for (let ch = 0; ch < c; ch++) {
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      for (let j = base; j < base + s; j++) sum += x[j];
    }
    const mean = sum / count;
    let sq = 0;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      for (let j = base; j < base + s; j++) {
        const t = x[j] - mean;
        sq += t * t;
      }
    }
    const variance = sq / count;
    const invStd = 1 / Math.sqrt(variance + eps);
    saveMean[ch] = mean;
    saveInvStd[ch] = invStd;
    const scale = (gamma ? gamma[ch] : 1) * invStd;
    const shift = (beta ? beta[ch] : 0) - mean * scale;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      for (let j = base; j < base + s; j++) y[j] = x[j] * scale + shift;
    }
    if (runningMean && runningVar) {
      // PyTorch updates the running variance with the unbiased estimate.
      const unbiased = count > 1 ? sq / (count - 1) : variance;
      runningMean[ch] = (1 - momentum) * runningMean[ch] + momentum * mean;
      runningVar[ch] = (1 - momentum) * runningVar[ch] + momentum * unbiased;
    }
  }
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
      for (let j = base; j < base + s; j++) y[j] = x[j] * scale + shift;
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
  for (let ch = 0; ch < c; ch++) {
    const mean = saveMean[ch];
    const invStd = saveInvStd[ch];
    let sumDy = 0;
    let sumDyXc = 0;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      for (let j = base; j < base + s; j++) {
        const g = dy[j];
        sumDy += g;
        sumDyXc += g * (x[j] - mean);
      }
    }
    // dx = gamma * invStd * (dy - mean(dy) - xhat * mean(dy * xhat))
    const g = (gamma ? gamma[ch] : 1) * invStd;
    const meanDy = sumDy / count;
    const k = (sumDyXc / count) * invStd * invStd;
    for (let i = 0; i < n; i++) {
      const base = i * plane + ch * s;
      for (let j = base; j < base + s; j++) {
        dx[j] = g * (dy[j] - meanDy - (x[j] - mean) * k);
      }
    }
    if (dGamma) dGamma[ch] = sumDyXc * invStd;
    if (dBeta) dBeta[ch] = sumDy;
  }
}
