/**
 * ResNet-50 convolution layers (torchvision, 224 px input) that the bench
 * times: the stem and one 3×3 and one 1×1 conv of each stage.
 *
 * @module
 */

import type { ConvDesc } from "../nn/backend.ts";

/** A named convolution shape. */
export interface ConvShape {
  name: string;
  desc: ConvDesc;
  /** The layer reads the input image, so training never needs its dx. */
  first: boolean;
}

/** A square convolution's description, output size PyTorch's way. */
export function convDesc(
  n: number,
  c: number,
  size: number,
  k: number,
  kernel: number,
  stride: number,
  pad: number,
): ConvDesc {
  const out = Math.floor((size + 2 * pad - kernel) / stride) + 1;
  return {
    n,
    c,
    h: size,
    w: size,
    k,
    r: kernel,
    s: kernel,
    strideH: stride,
    strideW: stride,
    padH: pad,
    padW: pad,
    oh: out,
    ow: out,
  };
}

/** The timed layers at batch `n`. */
export function resnet50Convs(n: number): ConvShape[] {
  const shape = (
    name: string,
    c: number,
    size: number,
    k: number,
    kernel: number,
    stride: number,
    pad: number,
    first = false,
  ): ConvShape => ({
    name: `${name} ${kernel}x${kernel}/${stride} ${c}>${k} @${size}`,
    desc: convDesc(n, c, size, k, kernel, stride, pad),
    first,
  });
  return [
    shape("conv1", 3, 224, 64, 7, 2, 3, true),
    shape("layer1", 64, 56, 64, 3, 1, 1),
    shape("layer2", 128, 28, 128, 3, 1, 1),
    shape("layer3", 256, 14, 256, 3, 1, 1),
    shape("layer4", 512, 7, 512, 3, 1, 1),
    shape("layer1", 256, 56, 64, 1, 1, 0),
    shape("layer2", 512, 28, 128, 1, 1, 0),
    shape("layer3", 1024, 14, 256, 1, 1, 0),
    shape("layer4", 2048, 7, 512, 1, 1, 0),
  ];
}

/** Multiply-adds times two of one pass (forward, backward-data or -filter). */
export function convFlops(d: ConvDesc): number {
  return 2 * d.n * d.k * d.c * d.r * d.s * d.oh * d.ow;
}
