/**
 * One MEC training step case in its own process, timed as
 * bench/cpu_reference.py times PyTorch's: a warm-up step, then the best of
 * `--steps` steps, with the process's CPU time of that step (every thread;
 * time stolen by other tenants is not CPU time) and its peak resident
 * memory. Prints one JSON line.
 *
 *     deno run -A bench/mec_step.ts [--batch 16] [--size 224] [--steps 2] [--demo]
 *
 * `--demo` runs the demo's network (tools/demo.ts) instead of ResNet-50.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import {
  Generator,
  MEC,
  mecStep,
  randn,
  setDefaultDevice,
  SGD,
  useDevice,
} from "../mod.ts";
import { peakResidentBytes } from "../nn/proc.ts";

const { values } = parseArgs({
  options: {
    batch: { type: "string", default: "16" },
    size: { type: "string", default: "224" },
    steps: { type: "string", default: "2" },
    demo: { type: "boolean", default: false },
  },
});
const batch = Number(values.batch);
const size = Number(values.size);
const steps = Number(values.steps);

await useDevice("cpu");
setDefaultDevice("cpu");
const model = new MEC(
  values.demo
    ? { arch: "resnet18", width: 16, smallStem: true, dim: 512, predDim: 128 }
    : { arch: "resnet50" },
);
const optimizer = new SGD(model.trainableParameters(), {
  lr: 0.1,
  momentum: 0.9,
  weightDecay: 1e-5,
});
const gen = new Generator(0);
const x1 = randn([batch, 3, size, size], gen);
const x2 = randn([batch, 3, size, size], gen);
const settings = (iteration: number) => ({
  iteration,
  lr: 0.1,
  teacherMomentum: 0.996,
  lamdaInv: batch * 64 / model.dim,
  mu: (batch + model.dim) / 2,
});
mecStep(model, optimizer, x1, x2, settings(0));
let best = { seconds: Infinity, cpuSeconds: 0 };
for (let i = 1; i <= steps; i++) {
  const t = performance.now();
  const c = process.cpuUsage();
  mecStep(model, optimizer, x1, x2, settings(i));
  const cpu = process.cpuUsage(c);
  const seconds = (performance.now() - t) / 1000;
  if (seconds < best.seconds) {
    best = { seconds, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
  }
}
console.log(JSON.stringify({
  name: `deno-mec mec step ${
    values.demo ? "demo resnet18" : "resnet50"
  } ${size}px batch ${batch}`,
  pairsPerSecond: batch / best.seconds,
  ...best,
  peakResidentBytes: peakResidentBytes(),
  threads: Deno.env.get("MEC_THREADS") ?? "default",
}));
