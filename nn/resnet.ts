/**
 * ResNets exactly as torchvision builds them (v1.5: the stride of a
 * bottleneck sits on its 3x3 conv), with the same module names, so that
 * torchvision state dicts load key for key.
 *
 * Two options torchvision lacks: `smallStem` (a 3x3 stride-1 first conv and
 * no max-pool, as SSL libraries use for 32 px images) and `width` (the base
 * width, 64 in torchvision; stage widths are width x 1, 2, 4, 8).
 *
 * @module
 */

import { Generator } from "./random.ts";
import {
  AdaptiveAvgPool2d,
  BatchNorm2d,
  Conv2d,
  Identity,
  Linear,
  MaxPool2d,
  ReLU,
  Sequential,
} from "./layers.ts";
import { kaimingNormalFanOut } from "./init.ts";
import { Layer } from "./module.ts";
import { addReluInPlace } from "./ops/activation.ts";
import { forwardScope, type Tensor } from "./tensor.ts";

export interface ResNetOptions {
  /** Outputs of the final Linear layer `fc`; default 1000. */
  numClasses?: number;
  /** Start the last BN of each residual branch at gamma 0; default false. */
  zeroInitResidual?: boolean;
  /** 3x3 stride-1 first conv without max-pool, for small images. */
  smallStem?: boolean;
  /** Base width (torchvision: 64). */
  width?: number;
  /** Generator for the initial weights; default `new Generator(0)`. */
  gen?: Generator;
  device?: string;
}

interface BlockArgs {
  inplanes: number;
  planes: number;
  stride: number;
  downsample: Sequential | null;
  gen: Generator;
  device?: string;
}

/** torchvision's conv init: Kaiming-normal, fan_out, for ReLU. */
const weightInit = kaimingNormalFanOut;
const conv3x3 = (
  i: number,
  o: number,
  stride: number,
  gen: Generator,
  device?: string,
) =>
  new Conv2d(i, o, 3, {
    stride,
    padding: 1,
    bias: false,
    gen,
    device,
    weightInit,
  });
const conv1x1 = (
  i: number,
  o: number,
  stride: number,
  gen: Generator,
  device?: string,
) => new Conv2d(i, o, 1, { stride, bias: false, gen, device, weightInit });

/** The residual branch's last batch norm, zeroed by `zeroInitResidual`. */
interface Block extends Layer {
  readonly lastBn: BatchNorm2d;
}

/** Two 3x3 convs (resnet18, resnet34). */
export class BasicBlock extends Layer implements Block {
  static readonly expansion = 1;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly downsample: Sequential | null;

  constructor(a: BlockArgs) {
    super();
    const { gen, device } = a;
    this.conv1 = this.addModule(
      "conv1",
      conv3x3(a.inplanes, a.planes, a.stride, gen, device),
    );
    this.bn1 = this.addModule("bn1", new BatchNorm2d(a.planes, { device }));
    this.addModule("relu", new ReLU());
    this.conv2 = this.addModule(
      "conv2",
      conv3x3(a.planes, a.planes, 1, gen, device),
    );
    this.bn2 = this.addModule("bn2", new BatchNorm2d(a.planes, { device }));
    this.downsample = a.downsample
      ? this.addModule("downsample", a.downsample)
      : null;
  }

  get lastBn(): BatchNorm2d {
    return this.bn2;
  }

  /**
   * As torchvision's, whose ReLUs and shortcut sum work in place: the
   * ReLUs overwrite the batch norms' outputs, the sum and its ReLU the last
   * one's, and every intermediate the graph does not keep is freed when the
   * block returns.
   */
  forward(x: Tensor): Tensor {
    return forwardScope(() => {
      const out = this.bn1.forwardRelu(this.conv1.forward(x));
      const branch = this.bn2.forward(this.conv2.forward(out));
      return addReluInPlace(
        branch,
        this.downsample ? this.downsample.forward(x) : x,
      );
    });
  }
}

/** 1x1 reduce, 3x3 (strided), 1x1 expand by 4 (resnet50 and deeper). */
export class Bottleneck extends Layer implements Block {
  static readonly expansion = 4;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly conv3: Conv2d;
  readonly bn3: BatchNorm2d;
  readonly downsample: Sequential | null;

  constructor(a: BlockArgs) {
    super();
    const { gen, device, planes } = a;
    this.conv1 = this.addModule(
      "conv1",
      conv1x1(a.inplanes, planes, 1, gen, device),
    );
    this.bn1 = this.addModule("bn1", new BatchNorm2d(planes, { device }));
    this.conv2 = this.addModule(
      "conv2",
      conv3x3(planes, planes, a.stride, gen, device),
    );
    this.bn2 = this.addModule("bn2", new BatchNorm2d(planes, { device }));
    this.conv3 = this.addModule(
      "conv3",
      conv1x1(planes, planes * 4, 1, gen, device),
    );
    this.bn3 = this.addModule("bn3", new BatchNorm2d(planes * 4, { device }));
    this.addModule("relu", new ReLU());
    this.downsample = a.downsample
      ? this.addModule("downsample", a.downsample)
      : null;
  }

  get lastBn(): BatchNorm2d {
    return this.bn3;
  }

  /** In place and freeing as it goes, as `BasicBlock.forward`. */
  forward(x: Tensor): Tensor {
    return forwardScope(() => {
      let out = this.bn1.forwardRelu(this.conv1.forward(x));
      out = this.bn2.forwardRelu(this.conv2.forward(out));
      const branch = this.bn3.forward(this.conv3.forward(out));
      return addReluInPlace(
        branch,
        this.downsample ? this.downsample.forward(x) : x,
      );
    });
  }
}

type BlockClass = (typeof BasicBlock | typeof Bottleneck) & {
  expansion: number;
};

export class ResNet extends Layer {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly maxpool: Layer;
  readonly layers: Sequential[];
  readonly avgpool: AdaptiveAvgPool2d;
  /** The head: Linear by default; replace it with `setHead`. */
  fc: Layer;
  /** Channels of the pooled features that enter `fc`. */
  readonly featureDim: number;

  constructor(
    block: BlockClass,
    depths: readonly number[],
    opts: ResNetOptions = {},
  ) {
    super();
    const gen = opts.gen ?? new Generator(0);
    const device = opts.device;
    const width = opts.width ?? 64;
    if (!Number.isInteger(width) || width < 1) {
      throw new RangeError(
        `ResNet: width must be a positive integer, got ${width}`,
      );
    }
    this.conv1 = this.addModule(
      "conv1",
      opts.smallStem
        ? new Conv2d(3, width, 3, {
          stride: 1,
          padding: 1,
          bias: false,
          gen,
          device,
          weightInit,
        })
        : new Conv2d(3, width, 7, {
          stride: 2,
          padding: 3,
          bias: false,
          gen,
          device,
          weightInit,
        }),
    );
    this.bn1 = this.addModule("bn1", new BatchNorm2d(width, { device }));
    this.addModule("relu", new ReLU());
    this.maxpool = this.addModule(
      "maxpool",
      opts.smallStem ? new Identity() : new MaxPool2d(3, 2, 1),
    );
    let inplanes = width;
    this.layers = depths.map((count, stage) => {
      const planes = width * 2 ** stage;
      const stride = stage === 0 ? 1 : 2;
      const out = planes * block.expansion;
      const blocks: Layer[] = [];
      for (let i = 0; i < count; i++) {
        const s = i === 0 ? stride : 1;
        const downsample = i === 0 && (s !== 1 || inplanes !== out)
          ? new Sequential(
            conv1x1(inplanes, out, s, gen, device),
            new BatchNorm2d(out, { device }),
          )
          : null;
        blocks.push(
          new block({ inplanes, planes, stride: s, downsample, gen, device }),
        );
        inplanes = out;
      }
      return this.addModule(`layer${stage + 1}`, new Sequential(...blocks));
    });
    this.avgpool = this.addModule("avgpool", new AdaptiveAvgPool2d(1));
    this.featureDim = inplanes;
    this.fc = this.addModule(
      "fc",
      new Linear(inplanes, opts.numClasses ?? 1000, { gen, device }),
    );
    if (opts.zeroInitResidual) {
      // Each residual branch starts as zero, so each block starts as identity.
      for (const [, m] of this.namedModules()) {
        if (m instanceof BasicBlock || m instanceof Bottleneck) {
          const g = m.lastBn.weight!;
          g.backend.fill({ y: g.buffer, value: 0 });
        }
      }
    }
  }

  /** Replaces `fc` (keeping its name, so keys read `fc.0.weight`, ...). */
  setHead(head: Layer): void {
    this.fc = this.addModule("fc", head);
  }

  /** Pooled features [n, featureDim], the input of `fc`. */
  features(x: Tensor): Tensor {
    return forwardScope(() => {
      let h = this.bn1.forwardRelu(this.conv1.forward(x));
      h = this.maxpool.forward(h);
      for (const layer of this.layers) h = layer.forward(h);
      return this.avgpool.forward(h).flatten(1);
    });
  }

  forward(x: Tensor): Tensor {
    return forwardScope(() => this.fc.forward(this.features(x)));
  }
}

export const resnet18 = (opts?: ResNetOptions) =>
  new ResNet(BasicBlock, [2, 2, 2, 2], opts);
export const resnet34 = (opts?: ResNetOptions) =>
  new ResNet(BasicBlock, [3, 4, 6, 3], opts);
export const resnet50 = (opts?: ResNetOptions) =>
  new ResNet(Bottleneck, [3, 4, 6, 3], opts);
export const resnet101 = (opts?: ResNetOptions) =>
  new ResNet(Bottleneck, [3, 4, 23, 3], opts);
export const resnet152 = (opts?: ResNetOptions) =>
  new ResNet(Bottleneck, [3, 8, 36, 3], opts);

/** The ResNet constructors by torchvision name. */
export const resnets = {
  resnet18,
  resnet34,
  resnet50,
  resnet101,
  resnet152,
} as const;
export type ResNetName = keyof typeof resnets;
