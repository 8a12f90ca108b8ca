/**
 * The linear probe's network: the head of the official `main_lincls.py`,
 * the frozen backbone it sits on (pretrained, at MEC's initialisation, or
 * none for raw pixels) with the head registered as `fc`, the check that the
 * backbone did not change, and top-1/top-5 on the validation split.
 *
 * @module
 */

import {
  accuracy,
  BatchNorm1d,
  Generator,
  Layer,
  Linear,
  MEC,
  type Module,
  noGrad,
  type ResNet,
  resnets,
  scope,
  Sequential,
  type Tensor,
} from "../mod.ts";
import type { Ranks } from "../dist/parallel.ts";
import type { LinclsArgs } from "./lincls_args.ts";
import type { EvalSplit, Feeder } from "./probe_features.ts";

/**
 * BatchNorm1d(features, affine=False, eps=1e-6) then Linear(features,
 * classes) with weight ~ N(0, 0.01) and bias 0, as MEC's probe builds it.
 */
export function probeHead(
  features: number,
  classes: number,
  gen: Generator,
): Sequential {
  const linear = new Linear(features, classes, { gen });
  noGrad(() => {
    const w = new Float32Array(linear.weight.size);
    gen.fillNormal(w, 0, 0.01);
    linear.weight.backend.write(linear.weight.buffer, w);
    linear.bias!.backend.fill({ y: linear.bias!.buffer, value: 0 });
  });
  return new Sequential(
    new BatchNorm1d(features, { affine: false, eps: 1e-6 }),
    linear,
  );
}

/** Copies of every tensor of `module` except those under `skipPrefix`. */
export function snapshotState(
  module: Module,
  skipPrefix = "fc.",
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [key, t] of module.stateDict()) {
    if (!key.startsWith(skipPrefix)) out.set(key, t.toArray().slice());
  }
  return out;
}

/**
 * Throws, naming the first tensor and element that differs, when any
 * backbone tensor (weights and BN statistics alike) is not bit for bit what
 * the snapshot holds: a probe on a backbone that moved is not a linear probe.
 */
export function assertFrozen(
  snapshot: ReadonlyMap<string, Float32Array>,
  module: Module,
): void {
  const state = module.stateDict();
  for (const [key, before] of snapshot) {
    const t = state.get(key);
    if (t === undefined) {
      throw new Error(
        `The frozen backbone lost its tensor ${key} during linear probing; the probe is invalid.`,
      );
    }
    const after = t.toArray();
    for (let i = 0; i < before.length; i++) {
      if (!Object.is(before[i], after[i])) {
        throw new Error(
          `The frozen backbone changed during linear probing: ${key}[${i}] was ${
            before[i]
          } and is now ${after[i]}; the probe is invalid.`,
        );
      }
    }
  }
}

/** The backbone (or none, for raw pixels) with the head registered as `fc`. */
export class Probe {
  constructor(
    /** The module whose state dict is saved: ResNet with fc = head, or the head's holder. */
    readonly net: Module,
    readonly backbone: ResNet | null,
    readonly head: Sequential,
    readonly featureDim: number,
    /** The number of classes the head predicts. */
    readonly classes: number,
  ) {}

  /** Frozen features of a batch [n, 3, s, s] (no autograd, eval mode). */
  features(x: Tensor): Tensor {
    return noGrad(() =>
      this.backbone === null ? x.flatten(1) : this.backbone.features(x)
    );
  }
}

/** Holds a head under the name `fc`, for the raw-pixel probe's checkpoints. */
export class HeadOnly extends Layer {
  constructor(readonly head: Sequential) {
    super();
    this.addModule("fc", head);
  }

  forward(x: Tensor): Tensor {
    return this.head.forward(x.flatten(1));
  }
}

/** A ResNet's state without its head, for loading and comparing backbones. */
export class BackboneView extends Layer {
  constructor(readonly net: ResNet) {
    super();
    for (const [name, child] of net.children()) {
      if (name !== "fc") this.addModule(name, child);
    }
  }

  forward(x: Tensor): Tensor {
    return this.net.features(x);
  }
}

/** The probe `args` ask for, with a head for `classes` classes. */
export function buildProbe(args: LinclsArgs, classes: number): Probe {
  const gen = new Generator(args.seed);
  if (args.rawPixels) {
    const featureDim = 3 * args.imageSize * args.imageSize;
    const head = probeHead(featureDim, classes, gen);
    return new Probe(new HeadOnly(head), null, head, featureDim, classes);
  }
  let backbone: ResNet;
  if (args.randomInit) {
    // Exactly the encoder MEC pretraining starts from with this seed.
    const mec = new MEC({
      arch: args.arch,
      smallStem: args.smallStem,
      width: args.width,
      dim: 16,
      predDim: 16,
      gen,
    });
    backbone = mec.encoder;
  } else {
    backbone = resnets[args.arch]({
      smallStem: args.smallStem,
      width: args.width,
      numClasses: 1,
      gen,
    });
  }
  const head = probeHead(
    backbone.featureDim,
    classes,
    new Generator(args.seed, 1),
  );
  backbone.setHead(head);
  return new Probe(
    backbone,
    backbone,
    head,
    backbone.featureDim,
    classes,
  );
}

/**
 * Top-1 and top-5 (or top-k for fewer classes) in percent on a split;
 * under `mpirun` each rank counts its shard and the counts are summed.
 */
export async function evaluate(
  probe: Probe,
  feeder: Feeder,
  split: EvalSplit = "val",
  ranks: Ranks | null = null,
): Promise<[number, number]> {
  probe.head.eval();
  let n = 0;
  let c1 = 0;
  let c5 = 0;
  for await (const { x, labels } of feeder.evalChunks(split)) {
    const [a1, a5] = noGrad(() =>
      scope(() =>
        accuracy(probe.head.forward(x), labels, [1, Math.min(5, probe.classes)])
      )
    );
    x.dispose();
    // accuracy() gives percentages of the chunk; weigh them by its size.
    c1 += a1 * labels.length / 100;
    c5 += a5 * labels.length / 100;
    n += labels.length;
  }
  probe.head.train();
  if (ranks !== null) {
    [c1, c5, n] = ranks.sum([c1, c5, n], "the accuracy counts");
  }
  return [100 * c1 / n, 100 * c5 / n];
}
