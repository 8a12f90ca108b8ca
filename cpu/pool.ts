/**
 * Max pooling over NCHW planes, PyTorch's semantics: padding never wins a
 * window, and the gradient goes to the first maximum in row-major order.
 *
 * @module
 */

import type { PoolDesc } from "../nn/backend.ts";

export function maxPoolForward(
  x: Float32Array,
  y: Float32Array,
  d: PoolDesc,
): void {
  const { h, w, oh, ow } = d;
  const planes = d.n * d.c;
  for (let p = 0; p < planes; p++) {
    const xb = p * h * w;
    const yb = p * oh * ow;
    for (let i = 0; i < oh; i++) {
      const h0 = i * d.strideH - d.padH;
      const hs = Math.max(h0, 0);
      const he = Math.min(h0 + d.kh, h);
      for (let j = 0; j < ow; j++) {
        const w0 = j * d.strideW - d.padW;
        const ws = Math.max(w0, 0);
        const we = Math.min(w0 + d.kw, w);
        let best = -Infinity;
        for (let r = hs; r < he; r++) {
          const row = xb + r * w;
          for (let q = ws; q < we; q++) best = Math.max(best, x[row + q]);
        }
        y[yb + i * ow + j] = best;
      }
    }
  }
}

export function maxPoolBackward(
  x: Float32Array,
  y: Float32Array,
  dy: Float32Array,
  dx: Float32Array,
  d: PoolDesc,
): void {
  const { h, w, oh, ow } = d;
  const planes = d.n * d.c;
  dx.fill(0);
  for (let p = 0; p < planes; p++) {
    const xb = p * h * w;
    const yb = p * oh * ow;
    for (let i = 0; i < oh; i++) {
      const h0 = i * d.strideH - d.padH;
      const hs = Math.max(h0, 0);
      const he = Math.min(h0 + d.kh, h);
      for (let j = 0; j < ow; j++) {
        const w0 = j * d.strideW - d.padW;
        const ws = Math.max(w0, 0);
        const we = Math.min(w0 + d.kw, w);
        const target = y[yb + i * ow + j];
        // The forward output is the window's maximum: find its first position.
        let at = -1;
        for (let r = hs; r < he && at < 0; r++) {
          const row = xb + r * w;
          for (let q = ws; q < we; q++) {
            if (x[row + q] === target) {
              at = row + q;
              break;
            }
          }
        }
        if (at >= 0) dx[at] += dy[yb + i * ow + j];
      }
    }
  }
}
