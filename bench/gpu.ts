/**
 * The GPU measurements of `deno task gpu-check`: a ResNet-50 forward and
 * backward (batch 64, 224 px) and the full MEC training step (ResNet-50,
 * batch 64 and 128, 224 px, random data), in images/s with the peak device
 * memory. bench/gpu_reference.py measures the same on PyTorch.
 *
 *     deno run -A bench/gpu.ts --case mec-128 [--device cuda:0] [--json] [--tf32]
 *
 * Cases: resnet50-64, mec-64, mec-128. One case per process, so that the
 * peak device memory is that case's alone. It warms up (cuDNN's algorithm
 * search, kernel loading, the allocator's first blocks) before it is timed.
 *
 * @module
 */

import {
  crossEntropy,
  Generator,
  MEC,
  mecStep,
  randn,
  resnet50,
  scope,
  setDefaultDevice,
  SGD,
  useDevice,
} from "../mod.ts";

const arg = (name: string) => {
  const i = Deno.args.indexOf(name);
  return i < 0 ? undefined : Deno.args[i + 1];
};
const json = Deno.args.includes("--json");
const deviceName = arg("--device") ?? "cuda";
const backend = await useDevice(deviceName);
setDefaultDevice(backend.name);
backend.configure?.({ tf32: Deno.args.includes("--tf32") });

const WARM_UPS = 3;
const STEPS = 10;

interface Result {
  name: string;
  imagesPerSecond: number;
  peakBytes: number | null;
}

function time(name: string, images: number, step: () => void): Result {
  for (let i = 0; i < WARM_UPS; i++) step();
  backend.synchronize();
  const t0 = performance.now();
  for (let i = 0; i < STEPS; i++) step();
  backend.synchronize();
  const seconds = (performance.now() - t0) / 1000;
  const peak = backend.memory().peak ?? null;
  return { name, imagesPerSecond: (images * STEPS) / seconds, peakBytes: peak };
}

function resnet50Step(batch: number): Result {
  const net = resnet50();
  const gen = new Generator(0);
  const x = randn([batch, 3, 224, 224], gen);
  const labels = Array.from({ length: batch }, (_, i) => i % 1000);
  return time(
    `resnet50 224px batch ${batch} forward+backward`,
    batch,
    () =>
      scope(() => {
        crossEntropy(net.train().forward(x), labels).backward();
        for (const p of net.parameters()) {
          p.grad?.dispose();
          p.grad = null;
        }
      }),
  );
}

function mecTrainingStep(batch: number): Result {
  const model = new MEC({ arch: "resnet50", gen: new Generator(0) });
  const optimizer = new SGD(model.trainableParameters(), {
    lr: 0.5 * batch / 256,
    momentum: 0.9,
    weightDecay: 1e-5,
  });
  const gen = new Generator(1);
  const x1 = randn([batch, 3, 224, 224], gen);
  const x2 = randn([batch, 3, 224, 224], gen);
  let iteration = 0;
  return time(
    `mec step resnet50 224px batch ${batch}`,
    batch,
    () =>
      void mecStep(model, optimizer, x1, x2, {
        iteration: iteration++,
        lr: 0.5 * batch / 256,
        teacherMomentum: 0.996,
        lamdaInv: batch * 64 / model.dim,
        mu: (batch + model.dim) / 2,
      }),
  );
}

const CASES: Record<string, () => Result> = {
  "resnet50-64": () => resnet50Step(64),
  "mec-64": () => mecTrainingStep(64),
  "mec-128": () => mecTrainingStep(128),
};
const name = arg("--case") ?? "";
if (!(name in CASES)) {
  console.error(
    `--case must be one of ${Object.keys(CASES).join(", ")}, not "${name}".`,
  );
  Deno.exit(2);
}
{
  const r = CASES[name]();
  if (json) {
    console.log(JSON.stringify({ ...r, device: backend.name }));
  } else {
    const peak = r.peakBytes === null
      ? ""
      : `  peak ${(r.peakBytes / 2 ** 30).toFixed(2)} GiB`;
    console.log(
      `${r.name.padEnd(46)} ${
        r.imagesPerSecond.toFixed(1).padStart(8)
      } images/s${peak}`,
    );
  }
}
