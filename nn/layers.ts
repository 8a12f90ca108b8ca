/**
 * The layers a ResNet, the MEC heads and a linear probe are made of, with
 * PyTorch's parameter names, defaults and initialisation.
 *
 * @module
 */

import { full, zeros } from "./creation.ts";
import { defaultWeight, fans, uniform } from "./init.ts";
import { Layer } from "./module.ts";
import { relu, reluInPlace } from "./ops/activation.ts";
import { conv2d } from "./ops/conv.ts";
import { linear } from "./ops/linalg.ts";
import { batchNorm, type BatchNormOptions } from "./ops/normalization.ts";
import { globalAvgPool2d, maxPool2d } from "./ops/pool.ts";
import { expectRank, pair } from "./ops/util.ts";
import type { Generator } from "./random.ts";
import { forwardScope, noGrad, type Tensor } from "./tensor.ts";

/** Options of layers that draw initial weights. */
export interface InitOptions {
  /** The generator initial weights are drawn from. */
  gen: Generator;
  /** Device of the parameters; the default device when omitted. */
  device?: string;
}

export interface Conv2dLayerOptions extends InitOptions {
  stride?: number | [number, number];
  padding?: number | [number, number];
  bias?: boolean;
  /** How to draw the weight; PyTorch's default (kaiming_uniform, a = sqrt 5). */
  weightInit?: (
    shape: readonly number[],
    gen: Generator,
    device?: string,
  ) => Tensor;
}

/** `torch.nn.Conv2d` (groups 1, dilation 1): `weight` [out, in, kh, kw], `bias`. */
export class Conv2d extends Layer {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly stride: [number, number];
  readonly padding: [number, number];

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    kernelSize: number | [number, number],
    opts: Conv2dLayerOptions,
  ) {
    super();
    const [kh, kw] = pair(kernelSize);
    const shape = [outChannels, inChannels, kh, kw];
    const init = opts.weightInit ?? defaultWeight;
    this.weight = this.addParameter(
      "weight",
      init(shape, opts.gen, opts.device),
    );
    this.bias = opts.bias ?? true
      ? this.addParameter(
        "bias",
        uniform(
          [outChannels],
          1 / Math.sqrt(fans(shape).fanIn),
          opts.gen,
          opts.device,
        ),
      )
      : null;
    this.stride = pair(opts.stride ?? 1);
    this.padding = pair(opts.padding ?? 0);
  }

  forward(x: Tensor): Tensor {
    return conv2d(x, this.weight, this.bias, {
      stride: this.stride,
      padding: this.padding,
    });
  }
}

export interface LinearOptions extends InitOptions {
  bias?: boolean;
}

/** `torch.nn.Linear`: `weight` [out, in], `bias` [out]. */
export class Linear extends Layer {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: LinearOptions,
  ) {
    super();
    this.weight = this.addParameter(
      "weight",
      defaultWeight([outFeatures, inFeatures], opts.gen, opts.device),
    );
    this.bias = opts.bias ?? true
      ? this.addParameter(
        "bias",
        uniform(
          [outFeatures],
          1 / Math.sqrt(inFeatures),
          opts.gen,
          opts.device,
        ),
      )
      : null;
  }

  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

export interface BatchNormLayerOptions {
  eps?: number;
  momentum?: number;
  /** Learnable `weight` (gamma) and `bias` (beta); default true. */
  affine?: boolean;
  /** Keep running statistics for eval mode; default true. */
  trackRunningStats?: boolean;
  device?: string;
}

/**
 * Batch statistics computed over more than this process's batch (SyncBN):
 * when a layer has one, its training-mode forward calls it in place of
 * `batchNorm`, with the same options.
 */
export interface BatchNormSync {
  batchNorm(x: Tensor, opts: BatchNormOptions): Tensor;
}

/** Shared body of BatchNorm1d and BatchNorm2d. */
abstract class BatchNormBase extends Layer {
  /** Where batch statistics come from in training; null: this batch alone. */
  sync: BatchNormSync | null = null;
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;
  readonly runningMean: Tensor | null;
  readonly runningVar: Tensor | null;
  readonly numBatchesTracked: Tensor | null;
  readonly eps: number;
  readonly momentum: number;

  constructor(readonly numFeatures: number, opts: BatchNormLayerOptions = {}) {
    super();
    const device = opts.device;
    this.eps = opts.eps ?? 1e-5;
    this.momentum = opts.momentum ?? 0.1;
    const affine = opts.affine ?? true;
    this.weight = affine
      ? this.addParameter("weight", full([numFeatures], 1, { device }))
      : null;
    this.bias = affine
      ? this.addParameter("bias", zeros([numFeatures], { device }))
      : null;
    if (opts.trackRunningStats ?? true) {
      this.runningMean = this.addBuffer(
        "running_mean",
        zeros([numFeatures], { device }),
      );
      this.runningVar = this.addBuffer(
        "running_var",
        full([numFeatures], 1, { device }),
      );
      this.numBatchesTracked = this.addBuffer(
        "num_batches_tracked",
        zeros([], { device }),
      );
    } else {
      this.runningMean = this.runningVar = this.numBatchesTracked = null;
    }
  }

  /** The batch norm of x, then max(·, 0) where `relu` (in one op if it can). */
  protected normalize(x: Tensor, relu = false): Tensor {
    // As PyTorch: batch statistics in training, or always without running ones.
    const useBatch = this.training || this.runningMean === null;
    const update = this.training && this.runningMean !== null;
    // As PyTorch's SyncBatchNorm: synchronised only in training mode.
    const synced = this.training && this.sync !== null;
    const norm = synced ? this.sync!.batchNorm.bind(this.sync) : batchNorm;
    const out = norm(x, {
      weight: this.weight,
      bias: this.bias,
      runningMean: update || !useBatch ? this.runningMean : null,
      runningVar: update || !useBatch ? this.runningVar : null,
      training: useBatch,
      momentum: this.momentum,
      eps: this.eps,
      relu: relu && !synced,
    });
    const counter = this.numBatchesTracked;
    if (update && counter) {
      noGrad(() =>
        counter.backend.scaleShift({
          x: counter.buffer,
          y: counter.buffer,
          length: 1,
          scale: 1,
          shift: 1,
        })
      );
    }
    return relu && synced ? reluInPlace(out) : out;
  }
}

/** `torch.nn.BatchNorm1d` over [n, c] or [n, c, l]. */
export class BatchNorm1d extends BatchNormBase {
  forward(x: Tensor): Tensor {
    expectRank("BatchNorm1d", x, [2, 3]);
    return this.normalize(x);
  }
}

/** `torch.nn.BatchNorm2d` over [n, c, h, w]. */
export class BatchNorm2d extends BatchNormBase {
  forward(x: Tensor): Tensor {
    expectRank("BatchNorm2d", x, [4]);
    return this.normalize(x);
  }

  /**
   * relu(forward(x)), with the ReLU inside the batch norm's op in training
   * (nothing in between to read or write; the backward reads the output).
   */
  forwardRelu(x: Tensor): Tensor {
    expectRank("BatchNorm2d", x, [4]);
    return this.normalize(x, true);
  }
}

export class ReLU extends Layer {
  forward(x: Tensor): Tensor {
    return relu(x);
  }
}

/** `torch.nn.MaxPool2d` (stride defaults to the kernel size). */
export class MaxPool2d extends Layer {
  constructor(
    readonly kernelSize: number | [number, number],
    readonly stride: number | [number, number] = kernelSize,
    readonly padding: number | [number, number] = 0,
  ) {
    super();
  }

  forward(x: Tensor): Tensor {
    return maxPool2d(x, {
      kernelSize: this.kernelSize,
      stride: this.stride,
      padding: this.padding,
    });
  }
}

/** `torch.nn.AdaptiveAvgPool2d(1)`: [n, c, h, w] -> [n, c, 1, 1]. */
export class AdaptiveAvgPool2d extends Layer {
  constructor(outputSize: number | [number, number] = 1) {
    super();
    const [h, w] = pair(outputSize);
    if (h !== 1 || w !== 1) {
      throw new RangeError(
        `AdaptiveAvgPool2d: only output size 1 is supported, got ${h}x${w}`,
      );
    }
  }

  forward(x: Tensor): Tensor {
    return globalAvgPool2d(x);
  }
}

/** `torch.nn.Flatten`: flattens dimensions start..end (default 1..-1). */
export class Flatten extends Layer {
  constructor(readonly startDim = 1, readonly endDim = -1) {
    super();
  }

  forward(x: Tensor): Tensor {
    return x.flatten(this.startDim, this.endDim);
  }
}

export class Identity extends Layer {
  forward(x: Tensor): Tensor {
    return x;
  }
}

/** `torch.nn.Sequential`: layers named "0", "1", ... applied in order. */
export class Sequential extends Layer {
  readonly layers: Layer[];

  constructor(...layers: Layer[]) {
    super();
    this.layers = layers;
    layers.forEach((m, i) => this.addModule(String(i), m));
  }

  /**
   * Each layer's output is disposed once the next layer has used it; what
   * the graph saved of it stays for the backward pass.
   */
  forward(x: Tensor): Tensor {
    return forwardScope(() => {
      let h = x;
      for (const m of this.layers) {
        const next = m.forward(h);
        if (h !== x && next !== h) h.dispose();
        h = next;
      }
      return h;
    });
  }
}
