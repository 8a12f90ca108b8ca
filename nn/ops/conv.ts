/**
 * 2-D convolution (PyTorch's `F.conv2d`, groups 1, dilation 1).
 *
 * @module
 */

import type { ConvDesc } from "../backend.ts";
import { formatShape, recordGrad, Tensor } from "../tensor.ts";
import { backendOf, expectRank, pair, shapesOf } from "./util.ts";

export interface Conv2dOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
}

/** The cuDNN-style descriptor of conv2d(x, w), validated. */
export function convDesc(
  x: readonly number[],
  w: readonly number[],
  opts: Conv2dOptions,
): ConvDesc {
  const [strideH, strideW] = pair(opts.stride ?? 1);
  const [padH, padW] = pair(opts.padding ?? 0);
  const [n, c, h, wd] = x;
  const [k, cw, r, s] = w;
  const where = `input ${formatShape(x)}, weight ${formatShape(w)}`;
  for (const v of [strideH, strideW]) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(
        `conv2d: stride must be a positive integer, got ${v}`,
      );
    }
  }
  for (const v of [padH, padW]) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(
        `conv2d: padding must be a non-negative integer, got ${v}`,
      );
    }
  }
  if (cw !== c) {
    throw new RangeError(
      `conv2d: ${where}: the weight expects ${cw} input channels, the input has ${c}`,
    );
  }
  const oh = Math.floor((h + 2 * padH - r) / strideH) + 1;
  const ow = Math.floor((wd + 2 * padW - s) / strideW) + 1;
  if (oh < 1 || ow < 1 || r < 1 || s < 1) {
    throw new RangeError(
      `conv2d: ${where}: the kernel is larger than the padded input`,
    );
  }
  return { n, c, h, w: wd, k, r, s, strideH, strideW, padH, padW, oh, ow };
}

/**
 * Cross-correlation of x [n, c, h, w] with weight [k, c, r, s], plus an
 * optional bias [k]; output [n, k, oh, ow].
 */
export function conv2d(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null = null,
  opts: Conv2dOptions = {},
): Tensor {
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const backend = backendOf("conv2d", ...inputs);
  expectRank("conv2d", x, [4]);
  expectRank("conv2d", weight, [4], "weight");
  const d = convDesc(x.shape, weight.shape, opts);
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== d.k)) {
    throw new RangeError(
      `conv2d: bias ${formatShape(bias.shape)} does not match ${
        shapesOf(x, weight)
      }`,
    );
  }
  const plane = d.oh * d.ow;
  const out = Tensor.empty(backend, [d.n, d.k, d.oh, d.ow]);
  backend.conv2dForward({
    x: x.buffer,
    w: weight.buffer,
    y: out.buffer,
    desc: d,
  });
  if (bias) {
    backend.addTensor({
      alpha: 1,
      a: bias.buffer,
      aShape: [1, d.k, 1],
      beta: 1,
      c: out.buffer,
      shape: [d.n, d.k, plane],
    });
  }
  // dx needs the weight and dw the input: each is kept only if needed (the
  // stem's input image needs no gradient, so its weight is not kept).
  const saved = [weight.requiresGrad ? x : null, x.requiresGrad ? weight : null]
    .filter((t): t is Tensor => t !== null);
  return recordGrad(out, "conv2d", inputs, saved, (g, kept) => {
    const [sx, sw] = weight.requiresGrad ? kept : [null, kept[0]];
    let gx: Tensor | null = null;
    if (x.requiresGrad) {
      gx = Tensor.empty(backend, x.shape);
      backend.conv2dBackwardData({
        dy: g.buffer,
        w: sw!.buffer,
        dx: gx.buffer,
        desc: d,
      });
    }
    let gw: Tensor | null = null;
    if (weight.requiresGrad) {
      gw = Tensor.empty(backend, weight.shape);
      backend.conv2dBackwardFilter({
        x: sx!.buffer,
        dy: g.buffer,
        dw: gw.buffer,
        desc: d,
      });
    }
    const grads = [gx, gw];
    if (bias) {
      let gb: Tensor | null = null;
      if (bias.requiresGrad) {
        gb = Tensor.empty(backend, bias.shape);
        backend.reduceSum({
          alpha: 1,
          x: g.buffer,
          shape: [d.n, d.k, plane],
          beta: 0,
          y: gb.buffer,
          yShape: [1, d.k, 1],
        });
      }
      grads.push(gb);
    }
    return grads;
  });
}
