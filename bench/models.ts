/**
 * Whole-network throughput through tensors and autograd: what a training or
 * inference step costs, not only its convolutions.
 *
 * @module
 */

import {
  crossEntropy,
  Generator,
  noGrad,
  randn,
  type ResNet,
  resnet18,
  resnet50,
  scope,
} from "../mod.ts";

/** One model workload: `run` processes `images` images. */
export interface ModelCase {
  name: string;
  images: number;
  run: () => void;
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
  return [
    {
      name: `${label} forward`,
      images: batch,
      run: () => noGrad(() => scope(() => void net.eval().forward(x))),
    },
    {
      name: `${label} forward+backward`,
      images: batch,
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
