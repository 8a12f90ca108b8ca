/**
 * Whole-network throughput through tensors and autograd: what a training or
 * inference step costs, not only its convolutions.
 *
 * @module
 */

import {
  crossEntropy,
  Generator,
  MEC,
  type MecModelOptions,
  mecStep,
  noGrad,
  randn,
  type ResNet,
  resnet18,
  resnet50,
  scope,
  SGD,
} from "../mod.ts";

/** One model workload: `run` processes `images` images. */
export interface ModelCase {
  name: string;
  images: number;
  run: () => void;
  /** Waits for the device's queued work, before the clock is read. */
  sync: () => void;
}

function cases(
  label: string,
  net: ResNet,
  batch: number,
  size: number,
  classes: number,
): ModelCase[] {
  const gen = new Generator(0);
  const x = randn([batch, 3, size, size], gen);
  const labels = Array.from({ length: batch }, (_, i) => i % classes);
  const sync = () => x.backend.synchronize();
  return [
    {
      name: `${label} forward`,
      images: batch,
      run: () => noGrad(() => scope(() => void net.eval().forward(x))),
      sync,
    },
    {
      name: `${label} forward+backward`,
      images: batch,
      sync,
      run: () =>
        scope(() => {
          crossEntropy(net.train().forward(x), labels).backward();
          for (const p of net.parameters()) {
            p.grad?.dispose();
            p.grad = null;
          }
        }),
    },
  ];
}

/** ResNet-50 at 224 px, batch 8; resnet18 with the small-image stem at 32 px, batch 128. */
export function modelCases(): ModelCase[] {
  return [
    ...cases("resnet50 224px batch 8", resnet50(), 8, 224, 1000),
    ...cases(
      "resnet18 small-stem 32px batch 128",
      resnet18({ smallStem: true, numClasses: 10 }),
      128,
      32,
      10,
    ),
  ];
}

function mecCase(
  label: string,
  opts: MecModelOptions,
  batch: number,
  size: number,
): ModelCase {
  const model = new MEC(opts);
  const optimizer = new SGD(model.trainableParameters(), {
    lr: 0.1,
    momentum: 0.9,
    weightDecay: 1e-5,
  });
  const gen = new Generator(0);
  const x1 = randn([batch, 3, size, size], gen);
  const x2 = randn([batch, 3, size, size], gen);
  const dim = model.dim;
  let iteration = 0;
  return {
    name: `mec step ${label}`,
    images: batch,
    sync: () => x1.backend.synchronize(),
    run: () =>
      void mecStep(model, optimizer, x1, x2, {
        iteration: iteration++,
        lr: 0.1,
        teacherMomentum: 0.996,
        lamdaInv: batch * 64 / dim,
        mu: (batch + dim) / 2,
      }),
  };
}

/**
 * One full MEC training step (two views, student forward+backward, teacher
 * forward, loss, SGD, EMA); `images` counts image pairs.
 */
export function mecCases(): ModelCase[] {
  return [
    mecCase("resnet50 224px batch 16", { arch: "resnet50" }, 16, 224),
    mecCase(
      "resnet18 small-stem 32px batch 256",
      { arch: "resnet18", smallStem: true },
      256,
      32,
    ),
  ];
}
