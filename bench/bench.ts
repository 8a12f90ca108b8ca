/**
 * Throughput of the toolkit on the CPU, in sections:
 *
 * - conv: OpenBLAS sgemm as the yardstick, then the conv2d kernels on
 *   ResNet-50's layers at batch 8, and all 53 of its convolutions;
 * - kernels: the memory-bound ops of a training step;
 * - models: whole networks through autograd (images/s);
 * - mec: one full MEC training step (image pairs/s);
 * - data: JPEG decoding and MEC's two views per core on one and two cores, the
 *   worker loader, fast decoding, and the ratios to jpeg-js and torchvision.
 *
 *     deno task bench [--json] [--profile] [--only conv,kernels,models,mec,data]
 *
 * Prints one line per measurement; with `--json`, one JSON object per line
 * (`{"name", "value", "unit"}`) and nothing else. Each rate is the best over
 * a few timed runs. Rates on the shared 2-core build machines vary by 15 %
 * and more between runs, so compare ratios from one run. `--profile` (or
 * `MEC_PROFILE=1`) prints each MEC step's time and memory by op kind to
 * stderr.
 *
 * @module
 */

import process from "node:process";
import { CpuBackend } from "../cpu/backend.ts";
import { blas } from "../cpu/blas.ts";
import { setDefaultDevice, useDevice } from "../mod.ts";
import type { ConvOp } from "../cpu/dnnl_conv.ts";
import type { DataBuffer } from "../nn/backend.ts";
import { peakResidentBytes } from "../nn/proc.ts";
import { runDataBench } from "./data_bench.ts";
import { mecCases, type ModelCase, modelCases } from "./models.ts";
import {
  convFlops,
  type ConvShape,
  resnet50Convs,
  resnet50Network,
} from "./conv_shapes.ts";

/** One timed workload: `run` does `flops` floating-point operations. */
interface Case {
  name: string;
  flops: number;
  run: () => void;
  /** Waits for the work `run` queued on its backend; absent for host work. */
  sync?: () => void;
  /** The implementation that ran it, where the backend chose one. */
  impl?: () => string | undefined;
  /** Bytes a memory-bound kernel must move per run, at least. */
  bytes?: number;
}

const BATCH = 8;
const WARM_UPS = 2;
const ROUNDS = 2;
/** Timed repetitions after the warm-up; fewer for workloads over a second. */
const REPS = 5;
const MIN_REPS = 2;

const lib = blas();
const json = Deno.args.includes("--json");
const SECTIONS = ["conv", "kernels", "models", "mec", "data"];
const onlyArg = Deno.args.find((a) => a.startsWith("--only="));
const only = onlyArg ? onlyArg.slice("--only=".length).split(",") : SECTIONS;
for (const name of only) {
  if (!SECTIONS.includes(name)) {
    console.error(
      `bench: unknown section "${name}" (sections: ${SECTIONS.join(", ")})`,
    );
    Deno.exit(2);
  }
}

function randomArray(length: number): Float32Array {
  const a = new Float32Array(length);
  for (let i = 0; i < length; i++) a[i] = Math.random() - 0.5;
  return a;
}

function sgemmCase(size: number): Case {
  const a = randomArray(size * size);
  const b = randomArray(size * size);
  const c = new Float32Array(size * size);
  return {
    name: `sgemm ${size}x${size}x${size}`,
    flops: 2 * size ** 3,
    run: () =>
      lib.sgemm(
        false,
        false,
        size,
        size,
        size,
        1,
        a,
        size,
        b,
        size,
        0,
        c,
        size,
      ),
  };
}

/**
 * Forward, backward-data, backward-filter and fwd+bwd cases of each layer,
 * through `be` as the network runs them, so each op uses the implementation
 * (im2col or oneDNN) that the backend picks for its shape on the first call,
 * which is a warm-up call here.
 */
function convCases(
  be: CpuBackend,
  shapes: ConvShape[],
): { all: Case[]; training: Case[] } {
  const all: Case[] = [];
  const training: Case[] = [];
  const buffer = (length: number) => {
    const b = be.alloc(length);
    be.write(b, randomArray(length));
    return b;
  };
  for (const { name, desc: d, first } of shapes) {
    const x = buffer(d.n * d.c * d.h * d.w);
    const w = buffer(d.k * d.c * d.r * d.s);
    const y = buffer(d.n * d.k * d.oh * d.ow);
    const dy = buffer(y.length);
    const dx = buffer(x.length);
    const dw = buffer(w.length);
    const flops = convFlops(d);
    const forward = () => be.conv2dForward({ x, w, y, desc: d });
    const data = () => be.conv2dBackwardData({ dy, w, dx, desc: d });
    const filter = () => be.conv2dBackwardFilter({ x, dy, dw, desc: d });
    const sync = () => be.synchronize();
    const op = (kind: ConvOp, run: () => void): Case => ({
      name: `conv ${name} ${opNames[kind]}`,
      flops,
      run,
      sync,
      impl: () => be.convImplementation(kind, d),
    });
    all.push(op("forward", forward));
    if (!first) all.push(op("backwardData", data));
    all.push(op("backwardFilter", filter));
    // The stem's input is the image, which needs no gradient in training.
    const step: Case = first
      ? {
        name: `conv ${name} fwd+bwd-filter`,
        flops: 2 * flops,
        run: () => {
          forward();
          filter();
        },
        sync,
      }
      : {
        name: `conv ${name} fwd+bwd`,
        flops: 3 * flops,
        run: () => {
          forward();
          data();
          filter();
        },
        sync,
      };
    all.push(step);
    training.push(step);
  }
  return { all, training };
}

const opNames: Record<ConvOp, string> = {
  forward: "fwd",
  backwardData: "bwd-data",
  backwardFilter: "bwd-filter",
};

/**
 * Best seconds of a case's `run` over a few calls after warm-up calls. The
 * best rather than the median, because other load on the shared machines
 * comes and goes and only slows a run down; the warm-up is two calls because
 * V8 optimises the copy loops only after their first. The clock is read only
 * after the backend has finished what was queued (a no-op on the CPU).
 */
function time({ run, sync = () => {} }: Case): number {
  sync();
  let t = performance.now();
  for (let i = 0; i < WARM_UPS; i++) run();
  sync();
  const warm = (performance.now() - t) / 1000 / WARM_UPS;
  const reps = warm > 1 ? MIN_REPS : REPS;
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    t = performance.now();
    run();
    sync();
    best = Math.min(best, (performance.now() - t) / 1000);
  }
  return best;
}

/**
 * Best seconds of each case over `ROUNDS` passes through all of them, so
 * that a burst of other load on the machine spoils at most one pass.
 */
function timeAll(cases: Case[]): Map<Case, number> {
  const seconds = new Map<Case, number>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of cases) {
      seconds.set(c, Math.min(seconds.get(c) ?? Infinity, time(c)));
    }
  }
  return seconds;
}

/** One line; `impl` names the implementation that ran, if chosen per case. */
function report(
  name: string,
  value: number,
  unit: string,
  note = "",
  impl?: string,
): void {
  if (json) {
    const v = Number(value.toFixed(3));
    console.log(
      JSON.stringify(
        impl === undefined
          ? { name, value: v, unit }
          : { name, value: v, unit, impl },
      ),
    );
  } else {
    const shown = unit === "GFLOP/s" ? value.toFixed(1) : value.toFixed(2);
    const using = impl === undefined ? "" : `  ${impl}`;
    console.log(
      `${name.padEnd(44)} ${shown.padStart(7)} ${unit}${note}${using}`,
    );
  }
}

/**
 * The memory-bound kernels of a training step on a layer1-sized activation
 * [8, 256, 56, 56] (the stem's [8, 64, 112, 112] for max pooling), through
 * the backend interface, beside a 256 MB copy that measures the machine's
 * memory bandwidth. `flops` counts elements here; `bytes` is the traffic
 * each kernel cannot avoid (4 bytes per element read or written, counting
 * the reads a two-pass kernel makes: batch norm reads x once for the
 * statistics and once to normalise), so that GB/s over the copy's GB/s says
 * how close a kernel runs to the memory's limit.
 */
function kernelCases(): Case[] {
  const be = new CpuBackend();
  const [n, c, hw] = [BATCH, 256, 56 * 56];
  const size = n * c * hw;
  const buffer = (length: number) => {
    const b = be.alloc(length);
    be.write(b, randomArray(length));
    return b;
  };
  const [x, y, dy, dx] = [
    buffer(size),
    buffer(size),
    buffer(size),
    buffer(size),
  ];
  const [gamma, beta, mean, variance, saveMean, saveInvStd, dGamma, dBeta] =
    Array.from({ length: 8 }, () => buffer(c));
  be.fill({ y: variance, value: 1 });
  const rows = buffer(n * c);
  const bn = { n, c, spatial: hw, eps: 1e-5, momentum: 0.1 };
  const pool = {
    n,
    c: 64,
    h: 112,
    w: 112,
    kh: 3,
    kw: 3,
    strideH: 2,
    strideW: 2,
    padH: 1,
    padW: 1,
    oh: 56,
    ow: 56,
  };
  const poolIn = n * 64 * 112 * 112;
  const full = [1, 1, size] as const;
  const k = (
    name: string,
    elements: number,
    bytesPerElement: number,
    run: () => void,
  ): Case => ({
    name: `kernel ${name}`,
    flops: elements,
    bytes: elements * bytesPerElement,
    run,
    sync: () => be.synchronize(),
  });
  // The same tensors in oneDNN's blocked layout, as the network's
  // convolutions leave them (cpu/layout.ts): 1x1 convolutions' outputs.
  const blocked = (from: DataBuffer, channels: number, side: number) => {
    const desc = {
      n,
      c: channels,
      h: side,
      w: side,
      k: channels,
      r: 1,
      s: 1,
      strideH: 1,
      strideW: 1,
      padH: 0,
      padW: 0,
      oh: side,
      ow: side,
    };
    const out = be.alloc(size);
    be.conv2dForward({ x: from, w: buffer(channels * channels), y: out, desc });
    return out;
  };
  const [xb, dyb] = [blocked(x, c, 56), blocked(dy, c, 56)];
  const [yb, dxb] = [be.alloc(size), be.alloc(size)];
  const poolB = blocked(x, 64, 112);
  const bnTrain = (xIn: DataBuffer, yOut: DataBuffer, relu: boolean) => () =>
    be.batchNormForwardTraining({
      x: xIn,
      y: yOut,
      scale: gamma,
      bias: beta,
      runningMean: mean,
      runningVar: variance,
      saveMean,
      saveInvStd,
      desc: bn,
      relu,
    });
  const bnEval = (xIn: DataBuffer, yOut: DataBuffer) => () =>
    be.batchNormForwardInference({
      x: xIn,
      y: yOut,
      scale: gamma,
      bias: beta,
      estimatedMean: mean,
      estimatedVariance: variance,
      desc: bn,
    });
  const bnBackward =
    (xIn: DataBuffer, dyIn: DataBuffer, dxOut: DataBuffer) => () =>
      be.batchNormBackward({
        x: xIn,
        dy: dyIn,
        dx: dxOut,
        scale: gamma,
        dScale: dGamma,
        dBias: dBeta,
        saveMean,
        saveInvStd,
        desc: bn,
      });
  // As training runs it: the forward keeps the maxima's positions in a
  // reserve (where the backend has one) and the backward reads dy and
  // those and writes dx: 5 bytes an input element, dy being a quarter.
  const poolBackward = (
    xIn: DataBuffer,
    yOut: DataBuffer,
    dyIn: DataBuffer,
    dxOut: DataBuffer,
  ) => {
    const length = be.maxPoolReserve(xIn, pool);
    const reserve = length > 0 ? be.alloc(length) : null;
    be.maxPoolForward({ x: xIn, y: yOut, desc: pool, reserve });
    return () =>
      be.maxPoolBackward({
        x: xIn,
        y: yOut,
        dy: dyIn,
        dx: dxOut,
        desc: pool,
        reserve,
      });
  };
  const copyLength = 64 * 2 ** 20;
  const [copyFrom, copyTo] = [buffer(copyLength), buffer(copyLength)];
  return [
    k("copy 256 MB", copyLength, 8, () =>
      be.copy({
        src: copyFrom,
        srcOffset: 0,
        dst: copyTo,
        dstOffset: 0,
        length: copyLength,
      })),
    k("batch norm fwd train", size, 12, bnTrain(x, y, false)),
    k("batch norm fwd eval", size, 8, bnEval(x, y)),
    k("batch norm bwd", size, 20, bnBackward(x, dy, dx)),
    k("relu fwd", size, 8, () => be.reluForward({ x, y, length: size })),
    k("relu bwd", size, 12, () => be.reluBackward({ y, dy, dx, length: size })),
    k("add", size, 12, () =>
      be.opTensor({
        op: "add",
        alpha1: 1,
        a: x,
        alpha2: 1,
        b: dy,
        bShape: full,
        beta: 0,
        c: y,
        shape: full,
      })),
    k(
      "axpby",
      size,
      12,
      () => be.axpby({ n: size, alpha: 1, x, beta: 1, y }),
    ),
    k("global avg pool", size, 4, () =>
      be.reduceSum({
        alpha: 1 / hw,
        x,
        shape: [1, n * c, hw],
        beta: 0,
        y: rows,
        yShape: [1, n * c, 1],
      })),
    k(
      "max pool 3x3/2 fwd",
      poolIn,
      5,
      () => be.maxPoolForward({ x, y, desc: pool }),
    ),
    k(
      "max pool 3x3/2 bwd",
      poolIn,
      5,
      poolBackward(x, y, dy, dx),
    ),
    k("batch norm fwd train, blocked", size, 12, bnTrain(xb, yb, false)),
    k("batch norm + relu fwd train, blocked", size, 12, bnTrain(xb, yb, true)),
    k("batch norm fwd eval, blocked", size, 8, bnEval(xb, yb)),
    k("batch norm bwd, blocked", size, 20, bnBackward(xb, dyb, dxb)),
    k(
      "max pool 3x3/2 fwd, blocked",
      poolIn,
      5,
      () => be.maxPoolForward({ x: poolB, y: yb, desc: pool }),
    ),
    k(
      "max pool 3x3/2 bwd, blocked",
      poolIn,
      5,
      poolBackward(poolB, yb, dyb, dxb),
    ),
  ];
}

function convSection(): void {
  const gemms = [512, 1024, 2048].map(sgemmCase);
  const convBackend = new CpuBackend();
  const convs = convCases(convBackend, resnet50Convs(BATCH));
  const network = resnet50Network(BATCH);
  const networkCases = convCases(convBackend, network.map((l) => l.shape));
  const networkSteps = networkCases.training;
  const seconds = timeAll([...gemms, ...convs.all, ...networkSteps]);
  const rate = (c: Case) => c.flops / seconds.get(c)! / 1e9;
  for (const c of [...gemms, ...convs.all]) {
    report(c.name, rate(c), "GFLOP/s", "", c.impl?.());
  }
  // Each distinct layer of the whole network, with the implementation each of
  // its ops chose.
  network.forEach(({ shape, count }, i) => {
    const d = shape.desc;
    const ops: ConvOp[] = shape.first
      ? ["forward", "backwardFilter"]
      : ["forward", "backwardData", "backwardFilter"];
    const impl = ops.map((op) =>
      `${opNames[op]}: ${convBackend.convImplementation(op, d)}`
    ).join(", ");
    const step = networkSteps[i];
    report(
      `resnet50 ${shape.name} x${count} ${step.name.split(" ").at(-1)}`,
      rate(step),
      "GFLOP/s",
      "",
      impl,
    );
  });
  const sgemmRate = gemms.reduce((sum, c) => sum + rate(c), 0) / gemms.length;

  /** Flop-weighted rate of cases run `counts[i]` times each. */
  function overall(cases: Case[], counts: number[]): number {
    let flops = 0;
    let total = 0;
    cases.forEach((c, i) => {
      flops += counts[i] * c.flops;
      total += counts[i] * seconds.get(c)!;
    });
    return flops / total / 1e9;
  }

  const summaries: [string, number][] = [
    [
      "conv fwd+bwd overall",
      overall(convs.training, convs.training.map(() => 1)),
    ],
    [
      "resnet50 all 53 convs fwd+bwd",
      overall(networkSteps, network.map((l) => l.count)),
    ],
  ];
  for (const [name, value] of summaries) {
    if (json) {
      report(name, value, "GFLOP/s");
      report(`${name} / sgemm`, value / sgemmRate, "ratio");
    } else {
      const ratio = (value / sgemmRate).toFixed(2);
      report(name, value, "GFLOP/s", ` = ${ratio} of sgemm`);
    }
  }
}

function kernelSection(): void {
  const kernels = kernelCases();
  const kernelSeconds = timeAll(kernels);
  const gbps = (c: Case) => c.bytes! / kernelSeconds.get(c)! / 1e9;
  const copy = gbps(kernels[0]);
  for (const c of kernels) {
    const elements = c.flops / kernelSeconds.get(c)! / 1e9;
    if (json) {
      report(c.name, elements, "Gelem/s");
      report(`${c.name} bandwidth`, gbps(c), "GB/s");
      report(`${c.name} / copy bandwidth`, gbps(c) / copy, "ratio");
    } else {
      const note = ` = ${gbps(c).toFixed(1)} GB/s, ${
        (100 * gbps(c) / copy).toFixed(0)
      } % of the copy's`;
      report(c.name, elements, "Gelem/s", note);
    }
  }
}

/**
 * Best images/s over `rounds` runs after one warm-up run, reading the clock
 * after the device has finished the queued work (`sync`), with the process's
 * CPU time during that run (all threads; time other tenants of a shared
 * machine take is not in it).
 */
async function imagesPerSecond(
  c: {
    images: number;
    run: () => void | Promise<void>;
    sync?: () => void;
  },
  rounds: number,
): Promise<{ rate: number; seconds: number; cpuSeconds: number }> {
  const sync = c.sync ?? (() => {});
  await c.run();
  sync();
  let best = { seconds: Infinity, cpuSeconds: 0 };
  for (let r = 0; r < rounds; r++) {
    const t = performance.now();
    const cpu = process.cpuUsage();
    await c.run();
    sync();
    const seconds = (performance.now() - t) / 1000;
    const used = process.cpuUsage(cpu);
    if (seconds < best.seconds) {
      best = { seconds, cpuSeconds: (used.user + used.system) / 1e6 };
    }
  }
  return { rate: c.images / best.seconds, ...best };
}

/**
 * Each case's rate, with its CPU seconds beside its wall seconds and the
 * process's peak resident memory so far (cases run in order, so a case's
 * figure covers the cases before it too: run one section alone to see one).
 */
async function modelSection(cases: ModelCase[], unit: string): Promise<void> {
  for (const c of cases) {
    const r = await imagesPerSecond(c, 1);
    const peak = peakResidentBytes();
    if (json) {
      report(c.name, r.rate, unit);
      report(
        `${c.name} cpu seconds per wall second`,
        r.cpuSeconds / r.seconds,
        "ratio",
      );
      if (peak !== null) {
        report(`${c.name} peak resident`, peak / 2 ** 20, "MB");
      }
    } else {
      const memory = peak === null
        ? ""
        : `, peak resident ${(peak / 2 ** 20).toFixed(0)} MB`;
      report(
        c.name,
        r.rate,
        unit,
        `  (${r.seconds.toFixed(2)} s wall, ${
          r.cpuSeconds.toFixed(2)
        } s CPU${memory})`,
      );
    }
  }
}

async function dataSection(): Promise<void> {
  await runDataBench((r) =>
    report(
      r.name,
      r.value,
      r.unit,
      r.wall === undefined ? "" : ` (${r.wall.toFixed(1)}/s by the clock)`,
    )
  );
}

// The models and the MEC step run on the default device, the CPU here; the
// conv and kernel sections call their own CpuBackend instances.
if (Deno.args.includes("--profile")) Deno.env.set("MEC_PROFILE", "1");
await useDevice("cpu");
setDefaultDevice("cpu");
if (only.includes("conv")) convSection();
if (only.includes("kernels")) kernelSection();
if (only.includes("models")) await modelSection(modelCases(), "images/s");
if (only.includes("mec")) await modelSection(mecCases(), "pairs/s");
if (only.includes("data")) await dataSection();
