/**
 * The cuDNN descriptors of each op of the CUDA backend, built from the
 * backend interface's own descriptions (ConvDesc, PoolDesc, BatchNormDesc),
 * and cached: a ResNet step makes the same few dozen shapes again and again,
 * and a descriptor costs several native calls to build.
 *
 * @module
 */

import type { BatchNormDesc, ConvDesc, PoolDesc } from "../nn/backend.ts";
import {
  BATCHNORM_SPATIAL,
  type ConvDescriptors,
  ConvolutionDescriptor,
  deriveBatchNormDescriptor,
  FilterDescriptor,
  POOLING_MAX,
  PoolingDescriptor,
  TensorDescriptor,
} from "./cudnn.ts";

/** The four descriptors of a convolution: x, w, the conv itself and y. */
export function convDescriptors(d: ConvDesc): ConvDescriptors {
  return {
    x: TensorDescriptor.nchw(d.n, d.c, d.h, d.w),
    w: new FilterDescriptor(d.k, d.c, d.r, d.s),
    conv: new ConvolutionDescriptor(d.padH, d.padW, d.strideH, d.strideW),
    y: TensorDescriptor.nchw(d.n, d.k, d.oh, d.ow),
  };
}

/** Max pooling: the window and the input and output tensors. */
export interface PoolDescriptors {
  pool: PoolingDescriptor;
  x: TensorDescriptor;
  y: TensorDescriptor;
}

export function poolDescriptors(d: PoolDesc): PoolDescriptors {
  return {
    pool: new PoolingDescriptor(
      d.kh,
      d.kw,
      d.padH,
      d.padW,
      d.strideH,
      d.strideW,
      POOLING_MAX,
    ),
    x: TensorDescriptor.nchw(d.n, d.c, d.h, d.w),
    y: TensorDescriptor.nchw(d.n, d.c, d.oh, d.ow),
  };
}

/** Batch norm: x as n x c x spatial x 1, and its per-channel tensors. */
export interface BatchNormDescriptors {
  x: TensorDescriptor;
  /** 1 x c x 1 x 1: scale, bias, means and variances. */
  channels: TensorDescriptor;
}

/**
 * Spatial mode over n x c x spatial x 1 serves both of PyTorch's cases:
 * BatchNorm2d normalises each channel over n, h and w (spatial = h * w),
 * and BatchNorm1d on [n, c] over n alone (spatial = 1), which is what
 * cuDNN's per-activation mode would do on the same tensor.
 */
export function batchNormDescriptors(d: BatchNormDesc): BatchNormDescriptors {
  const x = TensorDescriptor.nchw(d.n, d.c, d.spatial, 1);
  return { x, channels: deriveBatchNormDescriptor(x, BATCHNORM_SPATIAL) };
}

/** A contiguous tensor of `length` elements, for elementwise cuDNN calls. */
export function flatDescriptor(length: number): TensorDescriptor {
  return TensorDescriptor.nchw(1, 1, 1, length);
}

/** Values built once per key and kept for the life of the backend. */
export class DescriptorCache<K, V> {
  readonly #made = new Map<string, V>();

  constructor(
    readonly build: (key: K) => V,
    readonly keyOf: (key: K) => string = (k) => JSON.stringify(k),
  ) {}

  get(key: K): V {
    const k = this.keyOf(key);
    let v = this.#made.get(k);
    if (v === undefined) {
      v = this.build(key);
      this.#made.set(k, v);
    }
    return v;
  }

  get size(): number {
    return this.#made.size;
  }

  /** Every value made so far, for disposal. */
  values(): IterableIterator<V> {
    return this.#made.values();
  }

  clear(): void {
    this.#made.clear();
  }
}
