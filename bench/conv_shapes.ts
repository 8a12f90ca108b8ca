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

/**
 * Every convolution of torchvision's ResNet-50 at 224 px and batch `n`, as
 * distinct shapes with the number of layers of each shape (53 in all).
 */
export function resnet50Network(
  n: number,
): { shape: ConvShape; count: number }[] {
  const layers: [
    string,
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ][] = [];
  const add = (
    name: string,
    c: number,
    size: number,
    k: number,
    kernel: number,
    stride: number,
    count: number,
  ) =>
    layers.push([name, c, size, k, kernel, stride, (kernel - 1) >> 1, count]);
  add("conv1", 3, 224, 64, 7, 2, 1);
  const stages = [[64, 3, 56], [128, 4, 56], [256, 6, 28], [
    512,
    3,
    14,
  ]] as const;
  let inC = 64;
  stages.forEach(([width, blocks, size], i) => {
    const stride = i === 0 ? 1 : 2;
    const out = size / stride;
    const name = `layer${i + 1}`;
    // Block 0: 1x1 reduce at the input size, strided 3x3, 1x1 expand, downsample.
    add(name, inC, size, width, 1, 1, 1);
    add(name, width, size, width, 3, stride, 1);
    add(name, width, out, 4 * width, 1, 1, 1);
    add(`${name} downsample`, inC, size, 4 * width, 1, stride, 1);
    // The other blocks.
    add(name, 4 * width, out, width, 1, 1, blocks - 1);
    add(name, width, out, width, 3, 1, blocks - 1);
    add(name, width, out, 4 * width, 1, 1, blocks - 1);
    inC = 4 * width;
  });
  // Merge equal shapes.
  const merged = new Map<string, { shape: ConvShape; count: number }>();
  for (const [name, c, size, k, kernel, stride, pad, count] of layers) {
    const key = [c, size, k, kernel, stride].join();
    const have = merged.get(key);
    if (have) {
      have.count += count;
      continue;
    }
    merged.set(key, {
      shape: {
        name: `${name} ${kernel}x${kernel}/${stride} ${c}>${k} @${size}`,
        desc: convDesc(n, c, size, k, kernel, stride, pad),
        first: name === "conv1",
      },
      count,
    });
  }
  return [...merged.values()];
}

/** Multiply-adds times two of one pass (forward, backward-data or -filter). */
export function convFlops(d: ConvDesc): number {
  return 2 * d.n * d.k * d.c * d.r * d.s * d.oh * d.ow;
}
