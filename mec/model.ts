/**
 * The MEC model of the official code: a ResNet encoder whose `fc` is a
 * 3-layer projector, a 2-layer predictor, and a teacher (a copy of the
 * encoder with its projector) that gets no gradients and follows the student
 * by an exponential moving average after each optimiser step.
 *
 * Module names follow the official PyTorch model (`encoder.conv1.weight`,
 * `encoder.fc.0.weight`, `predictor.0.weight`, `teacher.fc.6.bias`, ...), so
 * checkpoints line up key for key.
 *
 * The teacher's batch-norm running statistics: the EMA moves parameters only,
 * as the official code's does; the teacher's BN buffers (running mean and
 * variance, batch count) come from its own forward passes, which run in
 * training mode like the rest of the model.
 *
 * @module
 */

import type { Backend, DataBuffer } from "../nn/backend.ts";
import { BatchNorm1d, Linear, ReLU, Sequential } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { Generator } from "../nn/random.ts";
import { type ResNetName, resnets } from "../nn/resnet.ts";
import type { ResNet } from "../nn/resnet.ts";
import { noGrad, type Tensor } from "../nn/tensor.ts";

export interface MecModelOptions {
  /** Backbone (default resnet50). */
  arch?: ResNetName;
  /** Output dimension of the projector (default 2048). */
  dim?: number;
  /** Hidden dimension of the predictor (default 512). */
  predDim?: number;
  /** Small-image stem for 32 px images. */
  smallStem?: boolean;
  /** Base width of the ResNet (default 64). */
  width?: number;
  gen?: Generator;
  device?: string;
}

/** The student encoder with its projector: ResNet(zero_init_residual) + 3-layer MLP. */
function encoder(opts: MecModelOptions, gen: Generator): ResNet {
  const dim = opts.dim ?? 2048;
  const net = resnets[opts.arch ?? "resnet50"]({
    numClasses: dim,
    zeroInitResidual: true,
    smallStem: opts.smallStem,
    width: opts.width,
    gen,
    device: opts.device,
  });
  const prev = net.featureDim;
  const device = opts.device;
  // The official projector reuses the ResNet's own fc (Linear(prev, dim)) as
  // its third layer.
  const fc = net.fc as Linear;
  net.setHead(
    new Sequential(
      new Linear(prev, prev, { bias: false, gen, device }),
      new BatchNorm1d(prev, { device }),
      new ReLU(),
      new Linear(prev, prev, { bias: false, gen, device }),
      new BatchNorm1d(prev, { device }),
      new ReLU(),
      fc,
      new BatchNorm1d(dim, { affine: false, device }),
    ),
  );
  // The bias feeds a BN without affine: it cannot change the output.
  fc.bias!.requiresGrad = false;
  return net;
}

/** The tensors of one `axpbyMany` call. */
interface AxpbyLists {
  xs: DataBuffer[];
  ys: DataBuffer[];
  lengths: number[];
}

/** What one forward pass of both views gives. */
export interface MecOutputs {
  /** Student predictions of view 1 and view 2: predictor(encoder(x)). */
  z1: Tensor;
  z2: Tensor;
  /** Teacher projections of view 1 and view 2 (no gradient). */
  p1: Tensor;
  p2: Tensor;
}

export class MEC extends Module {
  readonly encoder: ResNet;
  readonly predictor: Sequential;
  readonly teacher: ResNet;
  /** Output dimension d. */
  readonly dim: number;

  constructor(opts: MecModelOptions = {}) {
    super();
    const gen = opts.gen ?? new Generator(0);
    const device = opts.device;
    this.dim = opts.dim ?? 2048;
    const predDim = opts.predDim ?? 512;
    this.encoder = this.addModule("encoder", encoder(opts, gen));
    this.predictor = this.addModule(
      "predictor",
      new Sequential(
        new Linear(this.dim, predDim, { bias: false, gen, device }),
        new BatchNorm1d(predDim, { device }),
        new ReLU(),
        new Linear(predDim, this.dim, { gen, device }),
      ),
    );
    // The teacher starts as an exact copy of the student encoder.
    const teacher = encoder(opts, new Generator(0));
    teacher.loadStateDict(this.encoder.stateDict());
    for (const p of teacher.parameters()) p.requiresGrad = false;
    this.teacher = this.addModule("teacher", teacher);
  }

  /** Parameters that the optimiser trains (teacher and frozen bias excluded). */
  trainableParameters(): Tensor[] {
    return this.parameters().filter((p) => p.requiresGrad);
  }

  /** Both views through student and teacher (the teacher without autograd). */
  forward(x1: Tensor, x2: Tensor): MecOutputs {
    const z1 = this.predictor.forward(this.encoder.forward(x1));
    const z2 = this.predictor.forward(this.encoder.forward(x2));
    const [p1, p2] = noGrad(
      () => [this.teacher.forward(x1), this.teacher.forward(x2)],
    );
    return { z1, z2, p1, p2 };
  }

  /**
   * teacher = m * teacher + (1 - m) * student, parameters only: one
   * `axpbyMany` per backend (one kernel launch on a GPU), the same numbers
   * as one `axpby` per parameter.
   */
  updateTeacher(m: number): void {
    const student = this.encoder.parameters();
    const teacher = this.teacher.parameters();
    const lists = new Map<Backend, AxpbyLists>();
    teacher.forEach((t, i) => {
      let l = lists.get(t.backend);
      if (l === undefined) {
        l = { xs: [], ys: [], lengths: [] };
        lists.set(t.backend, l);
      }
      l.xs.push(student[i].buffer);
      l.ys.push(t.buffer);
      l.lengths.push(t.size);
    });
    noGrad(() => {
      for (const [backend, l] of lists) {
        backend.axpbyMany({ alpha: 1 - m, beta: m, ...l });
      }
    });
  }
}
