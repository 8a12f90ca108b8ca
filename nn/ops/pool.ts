/**
 * Pooling: max pooling with a window and global average pooling.
 *
 * @module
 */

import type { PoolDesc } from "../backend.ts";
import { formatShape, needsGrad, recordGrad, Tensor } from "../tensor.ts";
import { expectRank, pair } from "./util.ts";

export interface MaxPool2dOptions {
  kernelSize: number | [number, number];
  /** Defaults to the kernel size, as in PyTorch. */
  stride?: number | [number, number];
  padding?: number | [number, number];
}

/** The cuDNN-style descriptor of maxPool2d on input shape x, validated. */
export function poolDesc(
  x: readonly number[],
  opts: MaxPool2dOptions,
): PoolDesc {
  const [kh, kw] = pair(opts.kernelSize);
  const [strideH, strideW] = pair(opts.stride ?? opts.kernelSize);
  const [padH, padW] = pair(opts.padding ?? 0);
  for (const v of [kh, kw, strideH, strideW]) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(
        `maxPool2d: kernel size and stride must be positive integers, got ${v}`,
      );
    }
  }
  if (!(padH >= 0 && padW >= 0 && 2 * padH <= kh && 2 * padW <= kw)) {
    throw new RangeError(
      `maxPool2d: padding must be between 0 and half the kernel size, got ${padH}, ${padW} for kernel ${kh}x${kw}`,
    );
  }
  const [n, c, h, w] = x;
  const oh = Math.floor((h + 2 * padH - kh) / strideH) + 1;
  const ow = Math.floor((w + 2 * padW - kw) / strideW) + 1;
  if (oh < 1 || ow < 1) {
    throw new RangeError(
      `maxPool2d: the ${kh}x${kw} window is larger than the padded input ${
        formatShape(x)
      }`,
    );
  }
  return { n, c, h, w, kh, kw, strideH, strideW, padH, padW, oh, ow };
}

/** PyTorch's `F.max_pool2d` (ceil_mode false, dilation 1). */
export function maxPool2d(x: Tensor, opts: MaxPool2dOptions): Tensor {
  expectRank("maxPool2d", x, [4]);
  const d = poolDesc(x.shape, opts);
  const { n, c, oh, ow } = d;
  const backend = x.backend;
  const out = Tensor.empty(backend, [n, c, oh, ow]);
  // The maxima's positions, kept for the backward where the backend can.
  const reserveLength = needsGrad([x])
    ? backend.maxPoolReserve?.(x.buffer, d) ?? 0
    : 0;
  const reserve = reserveLength > 0
    ? Tensor.empty(backend, [reserveLength])
    : null;
  backend.maxPoolForward({
    x: x.buffer,
    y: out.buffer,
    desc: d,
    reserve: reserve?.buffer ?? null,
  });
  const saved = [x, out, ...(reserve ? [reserve] : [])];
  return recordGrad(out, "maxPool2d", [x], saved, (g, [sx, y, r]) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.maxPoolBackward({
      x: sx.buffer,
      y: y.buffer,
      dy: g.buffer,
      dx: gx.buffer,
      desc: d,
      reserve: r?.buffer ?? null,
    });
    return [gx];
  });
}

/** Mean over each plane: [n, c, h, w] -> [n, c, 1, 1] (AdaptiveAvgPool2d(1)). */
export function globalAvgPool2d(x: Tensor): Tensor {
  expectRank("globalAvgPool2d", x, [4]);
  const [n, c, h, w] = x.shape;
  const backend = x.backend;
  const out = Tensor.empty(backend, [n, c, 1, 1]);
  const shape = [1, n * c, h * w] as const;
  const small = [1, n * c, 1] as const;
  backend.reduceSum({
    alpha: 1 / (h * w),
    x: x.buffer,
    shape,
    beta: 0,
    y: out.buffer,
    yShape: small,
  });
  return recordGrad(out, "globalAvgPool2d", [x], (g) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.addTensor({
      alpha: 1 / (h * w),
      a: g.buffer,
      aShape: small,
      beta: 0,
      c: gx.buffer,
      shape,
    });
    return [gx];
  });
}
