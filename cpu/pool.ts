/**
 * Max pooling over NCHW planes, PyTorch's semantics: padding never wins a
 * window, and the gradient goes to the first maximum in row-major order.
 *
 * Comparisons run on integer keys of the floats' bits, which order exactly as
 * the floats do: a branchless integer select is several times faster than
 * `Math.max` or a float ternary, which V8 compiles to branches that
 * mispredict on real data. A NaN, of either sign, takes the window from
 * every number, so it propagates.
 *
 * @module
 */

import type { PoolDesc } from "../nn/backend.ts";
import { bits } from "./elementwise.ts";

/** Float bits -> an integer with the same order (an involution). */
function key(b: number): number {
  return b ^ ((b >> 31) & 0x7fffffff);
}

/** Window bounds of output index i along one axis, clipped to [0, size). */
function lo(i: number, stride: number, pad: number): number {
  const start = i * stride - pad;
  return start < 0 ? 0 : start;
}

function hi(i: number, stride: number, pad: number, k: number, size: number) {
  const end = i * stride - pad + k;
  return end > size ? size : end;
}

/**
 * The flat index of the first maximum of the window [r0, r1) x [c0, c1) of
 * the plane at `base`.
 */
function argmaxWindow(
  xb: Int32Array,
  base: number,
  w: number,
  r0: number,
  r1: number,
  c0: number,
  c1: number,
): number {
  let at = base + r0 * w + c0;
  // Below every key: the window's first element always takes it.
  let best = -0x80000000;
  for (let r = r0; r < r1; r++) {
    const row = base + r * w;
    for (let q = row + c0; q < row + c1; q++) {
      const v = xb[q];
      // All ones for a NaN of either sign, which takes the window as in
      // PyTorch's kernel (a later NaN over an earlier one too) and keeps
      // it with the highest key.
      const nan = (0x7f800000 - (v & 0x7fffffff)) >> 31;
      const k = (key(v) & ~nan) | (0x7fffffff & nan);
      // All ones when k beats best strictly (the first maximum stays).
      const m = -(+(k > best)) | nan;
      best = (k & m) | (best & ~m);
      at = (q & m) | (at & ~m);
    }
  }
  return at;
}

function poolPlane(
  xb: Int32Array,
  xBase: number,
  yb: Int32Array,
  yBase: number,
  d: PoolDesc,
): void {
  const { h, w, oh, ow } = d;
  for (let i = 0; i < oh; i++) {
    const r0 = lo(i, d.strideH, d.padH);
    const r1 = hi(i, d.strideH, d.padH, d.kh, h);
    for (let j = 0; j < ow; j++) {
      const c0 = lo(j, d.strideW, d.padW);
      const c1 = hi(j, d.strideW, d.padW, d.kw, w);
      yb[yBase + i * ow + j] = xb[argmaxWindow(xb, xBase, w, r0, r1, c0, c1)];
    }
  }
}

function unpoolPlane(
  xb: Int32Array,
  xBase: number,
  dy: Float32Array,
  dx: Float32Array,
  yBase: number,
  d: PoolDesc,
): void {
  const { h, w, oh, ow } = d;
  for (let i = 0; i < oh; i++) {
    const r0 = lo(i, d.strideH, d.padH);
    const r1 = hi(i, d.strideH, d.padH, d.kh, h);
    for (let j = 0; j < ow; j++) {
      const c0 = lo(j, d.strideW, d.padW);
      const c1 = hi(j, d.strideW, d.padW, d.kw, w);
      dx[argmaxWindow(xb, xBase, w, r0, r1, c0, c1)] += dy[yBase + i * ow + j];
    }
  }
}

export function maxPoolForward(
  x: Float32Array,
  y: Float32Array,
  d: PoolDesc,
): void {
  const xb = bits(x);
  const yb = bits(y);
  const planes = d.n * d.c;
  for (let p = 0; p < planes; p++) {
    poolPlane(xb, p * d.h * d.w, yb, p * d.oh * d.ow, d);
  }
}

/** The gradient goes to the window's first maximum, found again from x. */
export function maxPoolBackward(
  x: Float32Array,
  _y: Float32Array,
  dy: Float32Array,
  dx: Float32Array,
  d: PoolDesc,
): void {
  const xb = bits(x);
  dx.fill(0);
  const planes = d.n * d.c;
  for (let p = 0; p < planes; p++) {
    unpoolPlane(xb, p * d.h * d.w, dy, dx, p * d.oh * d.ow, d);
  }
}
