/**
 * Run by tests/dist_test.ts under `mpirun -np N`: each rank computes, in
 * the same process, the single-process reference (the whole global batch,
 * plain BatchNorm) and the data-parallel version (its shard, SyncBN,
 * gather, bucketed averaging), and prints one JSON line of the largest
 * relative differences, which the test bounds.
 */

import { gatherRows } from "../../dist/gather.ts";
import {
  broadcastState,
  DataParallel,
  joinRanks,
  syncBatchNorms,
} from "../../dist/parallel.ts";
import { shardOrder } from "../../data/sampler.ts";
import { syncBatchNorm } from "../../dist/sync_batchnorm.ts";
import {
  batchNorm,
  Generator,
  MEC,
  mecStep,
  randn,
  scope,
  setDefaultDevice,
  SGD,
  type Tensor,
  tensor,
  useDevice,
} from "../../mod.ts";

const ranks = joinRanks(60);
if (ranks === null) throw new Error("step_ranks.ts runs under mpirun");
// MEC_TEST_DEVICE=cuda: each rank on the GPU of its local rank, over NCCL.
const device = ranks.device(Deno.env.get("MEC_TEST_DEVICE") || "cpu");
const backend = await useDevice(device);
setDefaultDevice(device);
const comm = await ranks.communicator(backend);
const W = ranks.size;
const r = ranks.rank;

/**
 * max |a - b| / max(max |b|, floor): the error relative to the tensor's
 * largest value, or to `floor` for a tensor that is zero in exact
 * arithmetic and holds only rounding noise.
 */
function relErr(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  floor = 1e-30,
): number {
  let diff = 0;
  let scale = floor;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/** Rows `rows` of a [n, ...] array. */
function rowsOf(data: Float32Array, n: number, rows: Int32Array): Float32Array {
  const per = data.length / n;
  const out = new Float32Array(rows.length * per);
  rows.forEach((row, j) =>
    out.set(data.subarray(row * per, (row + 1) * per), j * per)
  );
  return out;
}

const report: Record<string, number> = {};
const worst = (name: string, e: number) => {
  report[name] = Math.max(report[name] ?? 0, e);
};

// --- the sampler: shards of an order of 10 cover it, padded to ceil(10/W).
{
  const order = new Generator(3, 0, -1).permutation(10);
  const mine = shardOrder(order, r, W);
  const all = new Float64Array(10);
  for (const i of mine) all[i] += 1;
  ranks.world.allReduce(all, "sum");
  // Each index at least once; the padding adds W * ceil(10 / W) - 10 visits.
  report.samplerMissing = all.filter((c) => c === 0).length;
  report.samplerExtra = all.reduce((s, c) => s + c, 0) - 10;
}

// --- SyncBN over [3, 4, 2, 2] per rank = BatchNorm over the [3W, ...] batch.
scope(() => {
  const n = 3, c = 4;
  const gen = new Generator(7);
  const xAll = randn([n * W, c, 2, 2], gen);
  const gAll = randn([n * W, c, 2, 2], gen);
  const wAll = randn([c], gen);
  const bAll = randn([c], gen);
  const mine = Int32Array.from({ length: n }, (_, j) => r * n + j);
  const make = () => {
    const weight = tensor(wAll.toArray(), [c]);
    const bias = tensor(bAll.toArray(), [c]);
    weight.requiresGrad = bias.requiresGrad = true;
    const rm = tensor(new Float32Array(c), [c]);
    const rv = tensor(new Float32Array(c).fill(1), [c]);
    return { weight, bias, rm, rv };
  };
  const ref = make();
  const xr = tensor(xAll.toArray(), xAll.shape);
  xr.requiresGrad = true;
  const yr = batchNorm(xr, {
    weight: ref.weight,
    bias: ref.bias,
    runningMean: ref.rm,
    runningVar: ref.rv,
    training: true,
  });
  yr.backward(gAll);
  const dist = make();
  const xd = tensor(rowsOf(xAll.toArray(), n * W, mine), [n, c, 2, 2]);
  xd.requiresGrad = true;
  const yd = syncBatchNorm(comm, xd, {
    weight: dist.weight,
    bias: dist.bias,
    runningMean: dist.rm,
    runningVar: dist.rv,
    training: true,
  });
  yd.backward(tensor(rowsOf(gAll.toArray(), n * W, mine), yd.shape));
  worst("syncbnY", relErr(yd.toArray(), rowsOf(yr.toArray(), n * W, mine)));
  worst(
    "syncbnDx",
    relErr(xd.grad!.toArray(), rowsOf(xr.grad!.toArray(), n * W, mine)),
  );
  // gamma's and beta's gradients are local: their sum over ranks is the whole.
  for (const k of ["weight", "bias"] as const) {
    const g = Float64Array.from(dist[k].grad!.toArray());
    ranks.world.allReduce(g, "sum");
    worst(`syncbnD${k}`, relErr(g, ref[k].grad!.toArray()));
  }
  worst("syncbnRunningMean", relErr(dist.rm.toArray(), ref.rm.toArray()));
  worst("syncbnRunningVar", relErr(dist.rv.toArray(), ref.rv.toArray()));
});

// --- gather: forward is the concatenation; backward sums over ranks.
scope(() => {
  const x = tensor(Float32Array.from({ length: 6 }, (_, i) => 10 * r + i), [
    2,
    3,
  ]);
  x.requiresGrad = true;
  const y = gatherRows(comm, x);
  const expected = Float32Array.from(
    { length: 6 * W },
    (_, i) => 10 * Math.floor(i / 6) + (i % 6),
  );
  worst("gatherForward", relErr(y.toArray(), expected));
  // Upstream gradient (rank + 1) everywhere: the sum over ranks is W(W+1)/2.
  y.backward(tensor(new Float32Array(6 * W).fill(r + 1), y.shape));
  worst(
    "gatherBackward",
    relErr(x.grad!.toArray(), new Float32Array(6).fill(W * (W + 1) / 2)),
  );
});

// --- one MEC step: global batch 12 on one process vs 12 / W per rank.
const m = 12;
const small = () =>
  new MEC({
    arch: "resnet18",
    width: 4,
    smallStem: true,
    dim: 16,
    predDim: 8,
    gen: new Generator(5),
  });
const settings = {
  iteration: 0,
  lr: 0.5,
  teacherMomentum: 0.9,
  lamdaInv: 48,
  mu: (m + 16) / 2,
};
const gen = new Generator(11);
const x1 = randn([m, 3, 8, 8], gen);
const x2 = randn([m, 3, 8, 8], gen);

const reference = small();
const refOpt = new SGD(reference.trainableParameters(), {
  lr: settings.lr,
  momentum: 0.9,
  weightDecay: 1e-5,
});
const refResult = mecStep(reference, refOpt, x1, x2, settings);

const model = small();
// Rank 0's weights everywhere (they already agree; the broadcast must keep them).
syncBatchNorms(model, comm);
broadcastState(comm, model);
const named = model.namedParameters().filter(([, p]) => p.requiresGrad);
// Small buckets, so that several start during backward.
const parallel = new DataParallel(ranks, comm, named, {
  bucketBytes: 4096,
  firstBucketBytes: 1024,
});
const opt = new SGD(named.map(([, p]) => p), {
  lr: settings.lr,
  momentum: 0.9,
  weightDecay: 1e-5,
});
const rows = shardOrder(Int32Array.from({ length: m }, (_, i) => i), r, W);
const mineOf = (x: Tensor) =>
  tensor(rowsOf(x.toArray(), m, rows), [rows.length, 3, 8, 8]);
const result = mecStep(model, opt, mineOf(x1), mineOf(x2), settings, parallel);

report.loss = Math.abs(result.loss - refResult.loss) / Math.abs(refResult.loss);
report.mec = Math.abs(result.mec - refResult.mec) / Math.abs(refResult.mec);
const refParams = new Map(reference.namedParameters());
for (const [name, p] of named) {
  worst(
    "grad",
    relErr(p.grad!.toArray(), refParams.get(name)!.grad!.toArray()),
  );
}
const refState = reference.stateDict();
for (const [name, t] of model.stateDict()) {
  const kind = name.startsWith("teacher.")
    ? "teacher"
    : /running_|num_batches/.test(name)
    ? "bnStats"
    : "weights";
  // predictor.1's running mean is the mean of a linear map of a zero-mean
  // BN output: zero in exact arithmetic, rounding noise near 1e-9 here, so
  // statistics are compared relative to at least 1e-3.
  const floor = kind === "bnStats" ? 1e-3 : 1e-30;
  worst(kind, relErr(t.toArray(), refState.get(name)!.toArray(), floor));
}
// Every rank holds the same state after the step, bit for bit: the
// largest value over ranks of each element is this rank's own.
report.ranksDiffer = 0;
for (const t of model.stateDict().values()) {
  const mine = Float64Array.from(t.toArray());
  const most = Float64Array.from(mine);
  ranks.world.allReduce(most, "max");
  if (most.some((v, i) => v !== mine[i])) report.ranksDiffer++;
}
report.bucketsStartedInBackward = parallel.buckets.startedDuringBackward;
report.buckets = parallel.buckets.buckets.length;
report.gradientBytes = parallel.gradientBytes;

console.log(JSON.stringify({ rank: r, size: W, engine: comm.engine, report }));
ranks.finalize();
