/**
 * Fused optimiser updates, one pass over each tensor.
 *
 * @module
 */

import type { SgdStep } from "../nn/backend.ts";

export function sgdUpdate(
  param: Float32Array,
  grad: Float32Array,
  buf: Float32Array | null,
  length: number,
  s: SgdStep,
): void {
  const { lr, momentum, weightDecay: wd, nesterov } = s;
  if (buf === null || momentum === 0) {
    for (let i = 0; i < length; i++) param[i] -= lr * (grad[i] + wd * param[i]);
    return;
  }
  const keep = 1 - s.dampening;
  if (s.firstStep) {
    // PyTorch starts the buffer as the gradient itself, without dampening.
    for (let i = 0; i < length; i++) {
      const d = grad[i] + wd * param[i];
      buf[i] = d;
      param[i] -= lr * (nesterov ? d + momentum * d : d);
    }
    return;
  }
  for (let i = 0; i < length; i++) {
    const d = grad[i] + wd * param[i];
    const b = momentum * buf[i] + keep * d;
    buf[i] = b;
    param[i] -= lr * (nesterov ? d + momentum * b : b);
  }
}

export function larsAdapt(
  param: Float32Array,
  grad: Float32Array,
  length: number,
  trust: number,
  weightDecay: number,
  eps: number,
): void {
  let pp = 0;
  let gg = 0;
  for (let i = 0; i < length; i++) {
    pp += param[i] * param[i];
    gg += grad[i] * grad[i];
  }
  const pNorm = Math.sqrt(pp);
  const gNorm = Math.sqrt(gg);
  if (pNorm === 0 || gNorm === 0) return;
  const rate = (trust * pNorm) / (gNorm + weightDecay * pNorm + eps);
  for (let i = 0; i < length; i++) {
    grad[i] = (grad[i] + weightDecay * param[i]) * rate;
  }
}
