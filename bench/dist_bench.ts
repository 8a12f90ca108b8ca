/**
 * The MEC step alone and under `mpirun` at the same global batch: median
 * step time, the time waiting for the gradient all-reduce after backward
 * (what the overlap did not hide), and the bytes all-reduced per step.
 *
 * ```sh
 * deno run -A bench/dist_bench.ts --batch 32
 * mpirun -np 2 deno run -A bench/dist_bench.ts --batch 32
 * ```
 *
 * Flags: --arch (resnet18), --width (32), --size (32 px), --dim (256),
 * --batch (global, 32), --steps (8, after 2 untimed).
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  broadcastState,
  DataParallel,
  joinRanks,
  syncBatchNorms,
} from "../dist/parallel.ts";
import type { StepParallel } from "../mec/train.ts";
import {
  Generator,
  MEC,
  mecStep,
  randn,
  type ResNetName,
  scope,
  SGD,
  useDevice,
} from "../mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    arch: { type: "string", default: "resnet18" },
    width: { type: "string", default: "32" },
    size: { type: "string", default: "32" },
    dim: { type: "string", default: "256" },
    batch: { type: "string", default: "32" },
    steps: { type: "string", default: "8" },
  },
});
const ranks = joinRanks();
if (ranks !== null && Deno.env.get("MEC_THREADS") === undefined) {
  // The cores shared out among the ranks, as the tools do.
  const cores = navigator.hardwareConcurrency || 1;
  Deno.env.set(
    "MEC_THREADS",
    String(Math.max(1, Math.floor(cores / ranks.world.localSize))),
  );
}
const backend = await useDevice("cpu");
const size = ranks?.size ?? 1;
const global = Number(values.batch);
const local = global / size;
const px = Number(values.size);
const dim = Number(values.dim);
const model = new MEC({
  arch: values.arch as ResNetName,
  width: Number(values.width),
  smallStem: px <= 64,
  dim,
  predDim: Math.max(8, dim / 4),
  gen: new Generator(0),
});
const optimizer = new SGD(model.trainableParameters(), {
  lr: 0.1,
  momentum: 0.9,
  weightDecay: 1e-5,
});
let parallel: DataParallel | null = null;
let waitMs = 0;
let wrapped: StepParallel | undefined;
if (ranks !== null) {
  const comm = await ranks.communicator(backend);
  syncBatchNorms(model, comm);
  broadcastState(comm, model);
  const dp = new DataParallel(
    ranks,
    comm,
    model.namedParameters().filter(([, p]) => p.requiresGrad),
  );
  parallel = dp;
  // The same step, timing what is left of the all-reduce after backward.
  wrapped = {
    worldSize: dp.worldSize,
    gather: (x) => dp.gather(x),
    checkBatch: (rows) => dp.checkBatch(rows),
    backwardOptions: () => dp.backwardOptions(),
    finishGradients: () => {
      const t0 = performance.now();
      dp.finishGradients();
      waitMs += performance.now() - t0;
    },
  };
}
const gen = new Generator(1, ranks?.rank ?? 0);
const x1 = randn([local, 3, px, px], gen);
const x2 = randn([local, 3, px, px], gen);
const settings = {
  iteration: 0,
  lr: 0.1,
  teacherMomentum: 0.99,
  lamdaInv: global * 64 / dim,
  mu: (global + dim) / 2,
};
const steps = Number(values.steps);
const times: number[] = [];
const waits: number[] = [];
const mpiWaits: number[] = [];
for (let i = 0; i < steps + 2; i++) {
  ranks?.barrier();
  waitMs = 0;
  const waited = ranks?.world.waitedMs ?? 0;
  const t0 = performance.now();
  scope(() => mecStep(model, optimizer, x1, x2, settings, wrapped));
  if (i >= 2) {
    times.push(performance.now() - t0);
    waits.push(waitMs);
    mpiWaits.push((ranks?.world.waitedMs ?? 0) - waited);
  }
}
const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
if (ranks === null || ranks.isRoot) {
  console.log(JSON.stringify({
    ranks: size,
    arch: values.arch,
    width: Number(values.width),
    px,
    globalBatch: global,
    stepMs: Number(median(times).toFixed(1)),
    waitAfterBackwardMs: Number(median(waits).toFixed(2)),
    // Every collective of the step: SyncBN, the gathers, the buckets.
    waitInCollectivesMs: Number(median(mpiWaits).toFixed(1)),
    allReducedBytes: parallel?.gradientBytes ?? 0,
    buckets: parallel?.buckets.buckets.length ?? 0,
    startedDuringBackward: parallel?.buckets.startedDuringBackward ?? 0,
  }));
}
ranks?.finalize();
