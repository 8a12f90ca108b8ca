/** ConvDesc of a convolution given PyTorch-style, the output size computed. */

import type { ConvDesc } from "../nn/backend.ts";

export type Pair = [number, number];

export function convShape(
  n: number,
  c: number,
  [h, w]: Pair,
  k: number,
  [r, s]: Pair,
  [strideH, strideW]: Pair,
  [padH, padW]: Pair,
): ConvDesc {
  return {
    n,
    c,
    h,
    w,
    k,
    r,
    s,
    strideH,
    strideW,
    padH,
    padW,
    oh: Math.floor((h + 2 * padH - r) / strideH) + 1,
    ow: Math.floor((w + 2 * padW - s) / strideW) + 1,
  };
}
