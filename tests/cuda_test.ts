/**
 * The CUDA backend against the CPU backend on the same seeded inputs
 * (DESIGN.md section 6): every op of nn/backend.ts through the Backend
 * interface; the forward and every gradient of the differentiable ops through
 * autograd; a few training steps of a small ResNet and of MEC from the same
 * weights; and flat device memory over 50 training steps.
 *
 * `MEC_COMPARE_DEVICE` names the device compared with the CPU: "cuda" (the
 * default) or "cuda:N". Where that device cannot be used every test here is
 * ignored and one line says why. `MEC_COMPARE_DEVICE=cpu` compares the CPU
 * backend with a second, fresh `CpuBackend` instead, which checks the
 * comparisons themselves on any machine:
 *
 *     MEC_COMPARE_DEVICE=cpu deno test -A tests/cuda_test.ts
 *
 * In that mode the second backend runs its convolutions with im2col and
 * OpenBLAS (`MEC_CONV=im2col`) while the reference uses oneDNN where it is
 * installed, so the convolution tolerances meet two real summation orders;
 * the other ops run the same code on both sides and agree exactly. The
 * autograd level makes its tensors on the second backend directly
 * (`Tensor.empty`), as that backend has no device name. The model and memory
 * levels build their models by device name, so in that mode both sides run
 * on "cpu" and what they check is the tests' own plumbing: copying the
 * weights across, stepping both, comparing losses, weights and memory.
 *
 * Tolerances: both sides compute in float32 but sum in other orders (the CPU
 * kernels mostly in float64), so results agree to a few float32 roundings of
 * the size of the terms summed: about 1e-5 relative for elementwise ops and
 * short sums, about 1e-4 for long reductions and convolutions, exactly where
 * an op only moves, selects or compares values (copy, fill, relu, max-pool).
 * In the CPU-vs-CPU mode oneDNN and im2col convolutions differ by at most 3 %
 * of the convolution tolerance. The convolution and gemm tolerances assume
 * full float32 arithmetic: TF32 tensor-core math (inputs rounded to 10-bit
 * mantissas; emulated on the CPU, it fails every gemm and convolution case
 * here) fails them by design, as it would silently change training numerics.
 *
 * @module
 */

import { CpuBackend } from "../cpu/mod.ts";
import {
  add,
  batchNorm,
  conv2d,
  crossEntropy,
  device,
  Generator,
  globalAvgPool2d,
  linear,
  matmul,
  maxPool2d,
  mean,
  MEC,
  mecLoss,
  mecStep,
  memoryStats,
  type Module,
  mul,
  normalize,
  parseDeviceName,
  relu,
  type ResNet,
  resnet18,
  resnet50,
  scope,
  SGD,
  sub,
  sum,
  Tensor,
  tensor,
  useDevice,
} from "../mod.ts";
import type {
  Backend,
  BinaryOp,
  ConvDesc,
  Dims3,
  PoolDesc,
  SgdStep,
  UnaryOp,
} from "../nn/backend.ts";
import { assert } from "./assert.ts";
import {
  assertNear,
  assertSame,
  BackendPair,
  type Closeness,
  type Selection,
} from "./compare.ts";
import { convShape, type Pair } from "./conv_desc.ts";

// --- the two backends ----------------------------------------------------------

/** The device compared with the CPU: "cpu" (a second CPU backend) or "cuda:N". */
const target = parseDeviceName(Deno.env.get("MEC_COMPARE_DEVICE") || "cuda")
  .name;

/** The reference: the CPU backend that `useDevice("cpu")` opens. */
const reference: Backend = await useDevice("cpu");

/**
 * A second CPU backend that runs its convolutions with im2col: it reads
 * MEC_CONV on its first convolution, which runs here with the variable set.
 */
function secondCpuBackend(): Backend {
  const cpu = new CpuBackend();
  const saved = Deno.env.get("MEC_CONV");
  Deno.env.set("MEC_CONV", "im2col");
  try {
    const [x, w, y] = [cpu.alloc(1), cpu.alloc(1), cpu.alloc(1)];
    cpu.fill({ y: x, value: 1 });
    cpu.fill({ y: w, value: 1 });
    const desc = convShape(1, 1, [1, 1], 1, [1, 1], [1, 1], [0, 0]);
    cpu.conv2dForward({ x, w, y, desc });
    for (const b of [x, w, y]) cpu.free(b);
  } finally {
    if (saved === undefined) Deno.env.delete("MEC_CONV");
    else Deno.env.set("MEC_CONV", saved);
  }
  return cpu;
}

/** The backend under test, or null with the reason in `skipped`. */
let other: Backend | null = null;
let skipped: string | null = null;
if (target === "cpu") {
  other = secondCpuBackend();
} else {
  try {
    other = await useDevice(target);
  } catch (e) {
    skipped = (e instanceof Error ? e.message : String(e)).split("\n")[0];
    console.log(`CUDA-vs-CPU comparison skipped: ${skipped}`);
  }
}

/** How test names call the backend under test. */
const label = target === "cpu" ? "a second CPU backend" : target;

/** A test that is ignored when the device under test cannot be used. */
function test(name: string, fn: () => void): void {
  Deno.test({ name, ignore: other === null, fn });
}

/** The reference and the backend under test, side by side. */
function backends(): BackendPair {
  return new BackendPair(reference, other!);
}

// --- tolerances ------------------------------------------------------------------

/**
 * Elementwise ops: one or two float32 roundings on each side (with or
 * without a fused multiply-add); the absolute part covers results that
 * cancel to near zero.
 */
const ELEMENTWISE: Closeness = { rtol: 1e-5, atol: 1e-6 };
/** Sums of up to about a thousand terms, in another order on each side. */
const SHORT_SUM: Closeness = { rtol: 1e-5, atol: 1e-5 };
/**
 * Long reductions (thousands of terms: convolutions, large gemms, batch
 * statistics of big tensors): float32 rounding grows with the square root of
 * the number of terms in a tree or blocked sum, more in a sequential one.
 */
const LONG_SUM: Closeness = { rtol: 1e-4, atol: 1e-4 };

/** The tolerance of a result that sums `terms` terms. */
function sumTolerance(terms: number): Closeness {
  return terms > 1000 ? LONG_SUM : SHORT_SUM;
}

// --- data --------------------------------------------------------------------------

function uniform(g: Generator, n: number, low = -1, high = 1): Float32Array {
  return g.fillUniform(new Float32Array(n), low, high);
}

/**
 * Multiples of 1/8 in [-2, 2]: sums of a few of them are exact in float32 in
 * any order, so ops that add a handful of them agree exactly.
 */
function dyadic(g: Generator, n: number): Float32Array {
  return Float32Array.from({ length: n }, () => g.integer(-16, 17) / 8);
}

/** Small integers in [0, levels): ties everywhere. */
function levels(g: Generator, n: number, count: number): Float32Array {
  return Float32Array.from({ length: n }, () => g.integer(0, count));
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Elements below `n` (an op's output at the start of a longer buffer). */
const below = (n: number): Selection => (i) => i < n;
/** Elements from `n` on (the part of a buffer that an op must not touch). */
const from = (n: number): Selection => (i) => i >= n;
const not = (s: Selection): Selection => (i) => !s(i);

// =====================================================================================
// 1. The Backend interface, op by op
// =====================================================================================

test(`copy() on ${label} moves exactly the CPU's values and touches nothing else`, () => {
  using p = backends();
  const g = new Generator(101);
  const src = p.input(uniform(g, 100));
  const dst = p.input(uniform(g, 80));
  for (
    const c of [
      { srcOffset: 0, dstOffset: 0, length: 80 },
      { srcOffset: 5, dstOffset: 17, length: 40 },
      { srcOffset: 99, dstOffset: 0, length: 1 },
      { srcOffset: 3, dstOffset: 79, length: 1 },
      { srcOffset: 10, dstOffset: 10, length: 0 },
    ]
  ) {
    p.run((b, on) => b.copy({ src: on(src), dst: on(dst), ...c }));
    p.expectSame(dst, `copy ${JSON.stringify(c)}`);
  }
  // Between disjoint ranges of one buffer.
  p.run((b, on) =>
    b.copy({
      src: on(src),
      srcOffset: 60,
      dst: on(src),
      dstOffset: 10,
      length: 30,
    })
  );
  p.expectSame(src, "copy within one buffer");
  // A large copy, past any one-block kernel.
  const big = p.input(uniform(g, 300_007));
  const bigDst = p.nan(300_010);
  p.run((b, on) =>
    b.copy({
      src: on(big),
      srcOffset: 7,
      dst: on(bigDst),
      dstOffset: 3,
      length: 300_000,
    })
  );
  p.expectSame(bigDst, "copy of 300000 elements");
});

test(`fill() on ${label} with offsets, counts and strides sets exactly the CPU's elements`, () => {
  using p = backends();
  const g = new Generator(102);
  const y = p.input(uniform(g, 101));
  for (
    const f of [
      { value: 3.5 },
      { value: -2, offset: 10, count: 20 },
      { value: 0, offset: 3, stride: 7 }, // every 7th to the end
      { value: 1.25, offset: 1, count: 5, stride: 9 },
      { value: 0.1, offset: 40 }, // rounded to float32 on both sides
      { value: NaN, offset: 50, count: 3 },
      { value: Infinity, offset: 100, count: 1 },
      { value: -7, offset: 0, count: 0 },
      { value: 5, stride: 100 },
    ]
  ) {
    p.run((b, on) => b.fill({ y: on(y), ...f }));
    p.expectSame(y, `fill ${JSON.stringify(f)}`);
  }
  const big = p.input(uniform(g, 200_003));
  p.run((b, on) => b.fill({ y: on(big), value: 2, offset: 5, count: 150_000 }));
  p.expectSame(big, "fill of 150000 elements");
  p.run((b, on) => b.fill({ y: on(big), value: -1, offset: 1, stride: 2 }));
  p.expectSame(big, "fill of every other element of 200003");
});

// --- BLAS ------------------------------------------------------------------------------

/**
 * A rows x cols matrix stored from `offset` with leading dimension `ld`, in a
 * buffer with two spare elements at the end; `inside` selects its elements.
 */
function storedMatrix(
  rows: number,
  cols: number,
  ld: number,
  offset: number,
): { length: number; inside: Selection } {
  return {
    length: offset + rows * ld + 2,
    inside: (i) => {
      const at = i - offset;
      return at >= 0 && at < rows * ld && at % ld < cols;
    },
  };
}

/** Random values inside the matrix and `outside` (NaN: never read) elsewhere. */
function matrixData(
  g: Generator,
  m: { length: number; inside: Selection },
  outside = NaN,
): Float32Array {
  const data = uniform(g, m.length);
  for (let i = 0; i < data.length; i++) if (!m.inside(i)) data[i] = outside;
  return data;
}

/** [m, n, k]: tiny, long and thin, one-term sums, and long reductions. */
const GEMM_SIZES: [number, number, number][] = [
  [5, 3, 7],
  [1, 1, 1],
  [1, 1, 33],
  [17, 9, 1],
  [64, 2, 130],
  [96, 80, 300],
  [32, 32, 2048], // MEC's batch-form correlation of 2048 features
];

const GEMM_LAYOUTS = [
  { what: "packed, alpha 1, beta 0", offsets: [0, 0, 0], pads: [0, 0, 0] },
  {
    what: "offsets and padded leading dimensions, alpha -0.75, beta 0",
    offsets: [3, 5, 2],
    pads: [3, 1, 2],
    alpha: -0.75,
  },
  {
    what: "offsets, padding, alpha 1.5, beta 0.5",
    offsets: [1, 4, 7],
    pads: [1, 5, 3],
    alpha: 1.5,
    beta: 0.5,
  },
  {
    what: "alpha 0.5, beta 1",
    offsets: [0, 2, 0],
    pads: [0, 0, 1],
    alpha: 0.5,
    beta: 1,
  },
];

test(`gemm() on ${label} matches the CPU for all four transposes, offsets, padded leading dimensions and beta 0 or not`, () => {
  using p = backends();
  const g = new Generator(103);
  for (const [m, n, k] of GEMM_SIZES) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const layout of GEMM_LAYOUTS) {
          const alpha = layout.alpha ?? 1;
          const beta = layout.beta ?? 0;
          const [ao, bo, co] = layout.offsets;
          const [ap, bp, cp] = layout.pads;
          // A is stored m x k (k x m transposed), B k x n (n x k transposed).
          const [ar, ac] = transA ? [k, m] : [m, k];
          const [br, bc] = transB ? [n, k] : [k, n];
          const a = storedMatrix(ar, ac, ac + ap, ao);
          const b = storedMatrix(br, bc, bc + bp, bo);
          const c = storedMatrix(m, n, n + cp, co);
          const A = p.input(matrixData(g, a));
          const B = p.input(matrixData(g, b));
          // With beta 0, C starts as NaN everywhere: it must not be read.
          const C = beta === 0
            ? p.nan(c.length)
            : p.input(uniform(g, c.length));
          p.run((be, on) =>
            be.gemm({
              transA,
              transB,
              m,
              n,
              k,
              alpha,
              a: on(A),
              aOffset: ao,
              lda: ac + ap,
              b: on(B),
              bOffset: bo,
              ldb: bc + bp,
              beta,
              c: on(C),
              cOffset: co,
              ldc: n + cp,
            })
          );
          const what =
            `gemm ${m}x${n}x${k}, transA ${transA}, transB ${transB}, ${layout.what}`;
          p.expectNear(C, what, sumTolerance(k), c.inside);
          p.expectSame(C, `${what}, outside C`, not(c.inside));
        }
      }
    }
  }
});

test(`dot() on ${label} matches the CPU with offsets and strides, writing only its result`, () => {
  using p = backends();
  const g = new Generator(104);
  for (
    const d of [
      { n: 0, xOffset: 0, incx: 1, yOffset: 0, incy: 1 },
      { n: 1, xOffset: 0, incx: 1, yOffset: 0, incy: 1 },
      { n: 7, xOffset: 2, incx: 1, yOffset: 0, incy: 1 },
      { n: 1000, xOffset: 3, incx: 2, yOffset: 1, incy: 3 },
      { n: 4096, xOffset: 0, incx: 1, yOffset: 5, incy: 1 },
      { n: 100_000, xOffset: 0, incx: 1, yOffset: 0, incy: 1 },
    ]
  ) {
    // Strided vectors with NaN between their elements: the gaps are not read.
    const strided = (offset: number, inc: number) => {
      const data = new Float32Array(offset + Math.max(d.n - 1, 0) * inc + 2)
        .fill(NaN);
      const values = uniform(g, d.n);
      values.forEach((v, i) => (data[offset + i * inc] = v));
      return { data, values };
    };
    const xs = strided(d.xOffset, d.incx);
    const ys = strided(d.yOffset, d.incy);
    const x = p.input(xs.data);
    const y = p.input(ys.data);
    const result = p.nan(5);
    p.run((b, on) =>
      b.dot({ ...d, x: on(x), y: on(y), result: on(result), resultOffset: 3 })
    );
    // A float32 sum of n terms errs by at most about n * 2^-24 times the sum
    // of their magnitudes, in practice by sqrt(n) times less.
    let magnitude = 0;
    for (let i = 0; i < d.n; i++) {
      magnitude += Math.abs(xs.values[i] * ys.values[i]);
    }
    const what = `dot ${JSON.stringify(d)}`;
    p.expectNear(result, what, { rtol: 1e-5, atol: 0, abs: 1e-5 * magnitude }, (
      i,
    ) => i === 3);
    p.expectSame(
      result,
      `${what}, the rest of the result buffer`,
      (i) => i !== 3,
    );
  }
});

test(`axpby() on ${label} matches the CPU, beta 0 not reading y, nothing past n touched`, () => {
  using p = backends();
  const g = new Generator(105);
  for (const n of [1, 997, 100_003]) {
    for (
      const [alpha, beta] of [[2.5, 0], [-0.3, 0.9], [1, 1], [0, 0.5], [
        0.1,
        -1,
      ]]
    ) {
      const x = p.input(uniform(g, n + 3));
      const y = beta === 0 ? p.nan(n + 3) : p.input(uniform(g, n + 3));
      p.run((b, on) => b.axpby({ n, alpha, x: on(x), beta, y: on(y) }));
      const what = `axpby n ${n}, alpha ${alpha}, beta ${beta}`;
      p.expectNear(y, what, ELEMENTWISE, below(n));
      p.expectSame(y, `${what}, past n`, from(n));
    }
  }
});

// --- convolution ---------------------------------------------------------------------

const CONV_CASES: [string, ConvDesc][] = [
  // The shapes of conv_test.ts.
  [
    "3x3, stride 1, padding 1, batch 2",
    convShape(2, 3, [7, 9], 4, [3, 3], [1, 1], [1, 1]),
  ],
  [
    "7x7, stride 2, padding 3",
    convShape(1, 2, [9, 8], 3, [7, 7], [2, 2], [3, 3]),
  ],
  [
    "1x1, stride 2, batch 3",
    convShape(3, 5, [6, 6], 2, [1, 1], [2, 2], [0, 0]),
  ],
  ["1x1, stride 1", convShape(1, 4, [5, 7], 3, [1, 1], [1, 1], [0, 0])],
  [
    "1x3, stride (1, 2), padding (0, 1)",
    convShape(2, 2, [6, 5], 3, [1, 3], [1, 2], [0, 1]),
  ],
  // ResNet-50's layers at 224 px, batch 2.
  [
    "ResNet-50 conv1 (7x7/2, 3 -> 64, 224 px)",
    convShape(2, 3, [224, 224], 64, [7, 7], [2, 2], [3, 3]),
  ],
  [
    "ResNet-50 layer1 1x1 (64 -> 64, 56 px)",
    convShape(2, 64, [56, 56], 64, [1, 1], [1, 1], [0, 0]),
  ],
  [
    "ResNet-50 layer1 3x3 (64 -> 64, 56 px)",
    convShape(2, 64, [56, 56], 64, [3, 3], [1, 1], [1, 1]),
  ],
  [
    "ResNet-50 layer2.0 3x3/2 (128 -> 128, 56 -> 28 px)",
    convShape(2, 128, [56, 56], 128, [3, 3], [2, 2], [1, 1]),
  ],
  [
    "ResNet-50 layer2.0 downsample 1x1/2 (256 -> 512, 56 -> 28 px)",
    convShape(2, 256, [56, 56], 512, [1, 1], [2, 2], [0, 0]),
  ],
  [
    "ResNet-50 layer3 1x1 (256 -> 1024, 14 px)",
    convShape(2, 256, [14, 14], 1024, [1, 1], [1, 1], [0, 0]),
  ],
  [
    "ResNet-50 layer4 3x3 (512 -> 512, 7 px)",
    convShape(2, 512, [7, 7], 512, [3, 3], [1, 1], [1, 1]),
  ],
];

for (const [what, d] of CONV_CASES) {
  test(`conv2d forward, backward-data and backward-filter on ${label} match the CPU for ${what}`, () => {
    using p = backends();
    const g = new Generator(106);
    const xSize = d.n * d.c * d.h * d.w;
    const wSize = d.k * d.c * d.r * d.s;
    const ySize = d.n * d.k * d.oh * d.ow;
    const x = p.input(uniform(g, xSize));
    const w = p.input(uniform(g, wSize));
    const dy = p.input(uniform(g, ySize));
    // Every output is overwritten: each starts as NaN.
    const y = p.nan(ySize);
    const dx = p.nan(xSize);
    const dw = p.nan(wSize);
    p.run((b, on) =>
      b.conv2dForward({ x: on(x), w: on(w), y: on(y), desc: d })
    );
    p.run((b, on) =>
      b.conv2dBackwardData({ dy: on(dy), w: on(w), dx: on(dx), desc: d })
    );
    p.run((b, on) =>
      b.conv2dBackwardFilter({ x: on(x), dy: on(dy), dw: on(dw), desc: d })
    );
    // Sums of c*r*s, k*r*s and n*oh*ow products: convolutions.
    p.expectNear(y, `${what}: forward`, LONG_SUM);
    p.expectNear(dx, `${what}: backward data`, LONG_SUM);
    p.expectNear(dw, `${what}: backward filter`, LONG_SUM);
  });
}

// --- batch norm ------------------------------------------------------------------------

/** [n, c, spatial]: 2-D, 3-D and 4-D inputs, a batch of one, MEC's BN1d, ResNet's layer1. */
const BN_SHAPES: Dims3[] = [
  [5, 3, 1],
  [4, 3, 7],
  [2, 4, 15],
  [1, 2, 9],
  [32, 512, 1],
  [2, 64, 3136],
];

const BN_TRAINING_VARIANTS = [
  { what: "affine, running statistics", affine: true, running: true },
  { what: "no affine, running statistics", affine: false, running: true },
  { what: "affine, no running statistics", affine: true, running: false },
  {
    what: "no affine, no running statistics, eps 1e-3",
    affine: false,
    running: false,
    eps: 1e-3,
  },
];

for (const shape of BN_SHAPES) {
  test(`batch norm training, inference and backward on ${label} match the CPU for [n, c, spatial] = [${shape}]`, () => {
    using p = backends();
    const g = new Generator(107);
    const [n, c, spatial] = shape;
    const count = n * spatial;
    const length = n * c * spatial;
    // Statistics and y sum over the n * spatial values of a channel.
    const tol = sumTolerance(count);
    const x = p.input(uniform(g, length, -2, 3));
    const scale = p.input(uniform(g, c, 0.5, 1.5));
    const bias = p.input(uniform(g, c));
    for (const v of BN_TRAINING_VARIANTS) {
      const desc = { n, c, spatial, eps: v.eps ?? 1e-5, momentum: 0.1 };
      const y = p.nan(length);
      const saveMean = p.nan(c);
      const saveInvStd = p.nan(c);
      const runningMean = p.input(uniform(g, c));
      const runningVar = p.input(uniform(g, c, 0.5, 2));
      p.run((b, on) =>
        b.batchNormForwardTraining({
          x: on(x),
          y: on(y),
          scale: v.affine ? on(scale) : null,
          bias: v.affine ? on(bias) : null,
          runningMean: v.running ? on(runningMean) : null,
          runningVar: v.running ? on(runningVar) : null,
          saveMean: on(saveMean),
          saveInvStd: on(saveInvStd),
          desc,
        })
      );
      const what = `batch norm training [${shape}], ${v.what}`;
      p.expectNear(y, `${what}: y`, tol);
      p.expectNear(saveMean, `${what}: saveMean`, tol);
      p.expectNear(saveInvStd, `${what}: saveInvStd`, tol);
      if (v.running) {
        p.expectNear(runningMean, `${what}: running mean`, tol);
        p.expectNear(runningVar, `${what}: running var`, tol);
      } else {
        p.expectSame(runningMean, `${what}: running mean left alone`);
        p.expectSame(runningVar, `${what}: running var left alone`);
      }
    }

    const estimatedMean = p.input(uniform(g, c));
    const estimatedVariance = p.input(uniform(g, c, 0.2, 2));
    for (const affine of [true, false]) {
      const y = p.nan(length);
      p.run((b, on) =>
        b.batchNormForwardInference({
          x: on(x),
          y: on(y),
          scale: affine ? on(scale) : null,
          bias: affine ? on(bias) : null,
          estimatedMean: on(estimatedMean),
          estimatedVariance: on(estimatedVariance),
          desc: { n, c, spatial, eps: 1e-5, momentum: 0.1 },
        })
      );
      p.expectNear(
        y,
        `batch norm inference [${shape}], affine ${affine}`,
        ELEMENTWISE,
      );
    }

    // The backward pass from the reference's saved statistics, given to both.
    const backwardDesc = { n, c, spatial, eps: 1e-5, momentum: 0.1 };
    const savedMean = p.nan(c);
    const savedInvStd = p.nan(c);
    const yRef = reference.alloc(length);
    reference.batchNormForwardTraining({
      x: x.ref,
      y: yRef,
      scale: scale.ref,
      bias: bias.ref,
      runningMean: null,
      runningVar: null,
      saveMean: savedMean.ref,
      saveInvStd: savedInvStd.ref,
      desc: backwardDesc,
    });
    reference.free(yRef);
    const meanIn = p.input(reference.read(savedMean.ref));
    const invStdIn = p.input(reference.read(savedInvStd.ref));
    const dy = p.input(uniform(g, length));
    for (const withScale of [true, false]) {
      for (const withOutputs of [true, false]) {
        const dx = p.nan(length);
        const dScale = p.nan(c);
        const dBias = p.nan(c);
        p.run((b, on) =>
          b.batchNormBackward({
            x: on(x),
            dy: on(dy),
            dx: on(dx),
            scale: withScale ? on(scale) : null,
            dScale: withOutputs ? on(dScale) : null,
            dBias: withOutputs ? on(dBias) : null,
            saveMean: on(meanIn),
            saveInvStd: on(invStdIn),
            desc: backwardDesc,
          })
        );
        const what = `batch norm backward [${shape}], scale ${
          withScale ? "given" : "null"
        }, dScale and dBias ${withOutputs ? "given" : "null"}`;
        p.expectNear(dx, `${what}: dx`, tol);
        if (withOutputs) {
          p.expectNear(dScale, `${what}: dScale`, tol);
          p.expectNear(dBias, `${what}: dBias`, tol);
        } else {
          p.expectSame(dScale, `${what}: dScale left alone`);
          p.expectSame(dBias, `${what}: dBias left alone`);
        }
      }
    }
  });
}

// --- activation and pooling ----------------------------------------------------------

test(`relu forward and backward on ${label} give exactly the CPU's values`, () => {
  using p = backends();
  const g = new Generator(108);
  for (const length of [1, 1000, 100_003]) {
    const values = uniform(g, length + 3);
    // Exact zeros of both signs, where the kink is.
    for (let i = 0; i < values.length; i += 7) values[i] = i % 2 ? -0 : 0;
    const x = p.input(values);
    const y = p.nan(length + 3);
    p.run((b, on) => b.reluForward({ x: on(x), y: on(y), length }));
    p.expectSame(y, `relu forward of ${length}`);
    // The backward pass from the reference's output, given to both.
    const yIn = p.input(reference.read(y.ref));
    const dy = p.input(uniform(g, length + 3));
    const dx = p.nan(length + 3);
    p.run((b, on) =>
      b.reluBackward({ y: on(yIn), dy: on(dy), dx: on(dx), length })
    );
    p.expectSame(dx, `relu backward of ${length}`);
  }
});

function poolShape(
  [n, c, h, w]: readonly number[],
  [kh, kw]: Pair,
  [strideH, strideW]: Pair,
  [padH, padW]: Pair,
): PoolDesc {
  return {
    n,
    c,
    h,
    w,
    kh,
    kw,
    strideH,
    strideW,
    padH,
    padW,
    oh: Math.floor((h + 2 * padH - kh) / strideH) + 1,
    ow: Math.floor((w + 2 * padW - kw) / strideW) + 1,
  };
}

const POOL_CASES: [string, PoolDesc][] = [
  [
    "ResNet's stem pool on 8 px",
    poolShape([2, 3, 8, 8], [3, 3], [2, 2], [1, 1]),
  ],
  [
    "3x3/2, padding 1, odd sizes",
    poolShape([1, 2, 7, 9], [3, 3], [2, 2], [1, 1]),
  ],
  ["2x2/2", poolShape([2, 1, 5, 6], [2, 2], [2, 2], [0, 0])],
  [
    "3x2, stride (1, 2), padding (1, 0)",
    poolShape([1, 2, 6, 5], [3, 2], [1, 2], [1, 0]),
  ],
  [
    "ResNet's stem pool at 224 px, batch 2",
    poolShape([2, 64, 112, 112], [3, 3], [2, 2], [1, 1]),
  ],
];

for (const [what, d] of POOL_CASES) {
  test(`max-pool forward and backward on ${label} give exactly the CPU's values for ${what}, ties to the first maximum`, () => {
    using p = backends();
    const g = new Generator(109);
    const xSize = d.n * d.c * d.h * d.w;
    const ySize = d.n * d.c * d.oh * d.ow;
    const inputs: [string, Float32Array][] = [
      ["distinct values", uniform(g, xSize)],
      // Three levels: most windows hold several maxima.
      ["ties", levels(g, xSize, 3)],
      // One value everywhere: every window is a tie.
      ["a constant", new Float32Array(xSize).fill(0.5)],
      // Negative everywhere: the padding (-infinity) must never win.
      ["negative values", uniform(g, xSize, -3, -1)],
    ];
    for (const [kind, values] of inputs) {
      const x = p.input(values);
      const y = p.nan(ySize);
      p.run((b, on) => b.maxPoolForward({ x: on(x), y: on(y), desc: d }));
      p.expectSame(y, `${what}, ${kind}: forward`);
      const yIn = p.input(reference.read(y.ref));
      // Dyadic gradients: where windows overlap, an input's gradient sums a
      // few of them, exactly in any order.
      const dy = p.input(dyadic(g, ySize));
      const dx = p.nan(xSize);
      p.run((b, on) =>
        b.maxPoolBackward({
          x: on(x),
          y: on(yIn),
          dy: on(dy),
          dx: on(dx),
          desc: d,
        })
      );
      p.expectSame(dx, `${what}, ${kind}: backward`);
      // Arbitrary gradients: the same up to the order of those few additions.
      const dyAny = p.input(uniform(g, ySize));
      const dxAny = p.nan(xSize);
      p.run((b, on) =>
        b.maxPoolBackward({
          x: on(x),
          y: on(yIn),
          dy: on(dyAny),
          dx: on(dxAny),
          desc: d,
        })
      );
      p.expectNear(dxAny, `${what}, ${kind}: backward of any dy`, ELEMENTWISE);
    }
  });
}

// --- elementwise and reductions ------------------------------------------------------

/** Every shape whose dims each equal `shape`'s or are 1, without repeats. */
function broadcastPatterns(shape: Dims3): Dims3[] {
  const out = new Map<string, Dims3>();
  for (let mask = 0; mask < 8; mask++) {
    const s: Dims3 = [
      mask & 4 ? 1 : shape[0],
      mask & 2 ? 1 : shape[1],
      mask & 1 ? 1 : shape[2],
    ];
    out.set(s.join(), s);
  }
  return [...out.values()];
}

/** Shapes of the [d0, d1, d2] form: small, ResNet channels, degenerate. */
const ELEMENTWISE_SHAPES: Dims3[] = [[3, 5, 7], [2, 64, 49], [4, 1, 6], [
  1,
  1,
  1,
]];

test(`opTensor() on ${label} matches the CPU for each op and each broadcast pattern, beta 0 not reading c`, () => {
  using p = backends();
  const g = new Generator(110);
  const ops: BinaryOp[] = ["add", "mul", "min", "max"];
  for (const shape of ELEMENTWISE_SHAPES) {
    const n = size(shape);
    const a = p.input(uniform(g, n));
    for (const bShape of broadcastPatterns(shape)) {
      const bb = p.input(uniform(g, size(bShape)));
      for (const op of ops) {
        for (
          const [alpha1, alpha2, beta] of [[1, 1, 0], [-1.5, 0.75, 0.5], [
            2,
            -1,
            1,
          ]]
        ) {
          const c = beta === 0 ? p.nan(n) : p.input(uniform(g, n));
          p.run((be, on) =>
            be.opTensor({
              op,
              alpha1,
              a: on(a),
              alpha2,
              b: on(bb),
              bShape,
              beta,
              c: on(c),
              shape,
            })
          );
          p.expectNear(
            c,
            `opTensor ${op} [${shape}] with b [${bShape}], alpha1 ${alpha1}, alpha2 ${alpha2}, beta ${beta}`,
            ELEMENTWISE,
          );
        }
      }
    }
  }
});

test(`addTensor() on ${label} matches the CPU for each broadcast pattern, beta 0 not reading c`, () => {
  using p = backends();
  const g = new Generator(111);
  for (const shape of ELEMENTWISE_SHAPES) {
    const n = size(shape);
    for (const aShape of broadcastPatterns(shape)) {
      const a = p.input(uniform(g, size(aShape)));
      for (const [alpha, beta] of [[1, 0], [-0.5, 1], [2, 0.25]]) {
        const c = beta === 0 ? p.nan(n) : p.input(uniform(g, n));
        p.run((b, on) =>
          b.addTensor({ alpha, a: on(a), aShape, beta, c: on(c), shape })
        );
        p.expectNear(
          c,
          `addTensor [${aShape}] into [${shape}], alpha ${alpha}, beta ${beta}`,
          ELEMENTWISE,
        );
      }
    }
  }
});

test(`reduceSum() on ${label} matches the CPU for each reduce pattern and alpha/beta, writing only its output`, () => {
  using p = backends();
  const g = new Generator(112);
  // The per-channel sum of a ResNet activation and one long full sum too.
  for (
    const shape of [...ELEMENTWISE_SHAPES, [2, 64, 3136], [
      1,
      1,
      100_000,
    ]] as Dims3[]
  ) {
    const n = size(shape);
    // A positive mean keeps sums away from zero, where a relative tolerance
    // would mean nothing.
    const x = p.input(uniform(g, n, -0.5, 1.5));
    for (const yShape of broadcastPatterns(shape)) {
      const outSize = size(yShape);
      const terms = n / outSize;
      for (const [alpha, beta] of [[1, 0], [-0.5, 0.75], [1 / terms, 1]]) {
        // Three spare elements past the output, NaN for beta 0.
        const y = beta === 0
          ? p.nan(outSize + 3)
          : p.input(uniform(g, outSize + 3));
        p.run((b, on) =>
          b.reduceSum({ alpha, x: on(x), shape, beta, y: on(y), yShape })
        );
        const what =
          `reduceSum [${shape}] to [${yShape}], alpha ${alpha}, beta ${beta}`;
        p.expectNear(y, what, sumTolerance(terms), below(outSize));
        p.expectSame(y, `${what}, past the output`, from(outSize));
      }
    }
  }
});

test(`scaleShift() on ${label} matches the CPU and touches nothing past its length`, () => {
  using p = backends();
  const g = new Generator(113);
  for (const length of [1, 1000, 100_003]) {
    const x = p.input(uniform(g, length + 4));
    for (const [scale, shift] of [[1, 0], [-1.7, 0.3], [0, 2], [1e-3, -5]]) {
      const y = p.nan(length + 4);
      p.run((b, on) =>
        b.scaleShift({ x: on(x), y: on(y), length, scale, shift })
      );
      const what = `scaleShift of ${length}, scale ${scale}, shift ${shift}`;
      p.expectNear(y, what, ELEMENTWISE, below(length));
      p.expectSame(y, `${what}, past the length`, from(length));
    }
  }
});

/** Each unary op with inputs inside its domain. */
const UNARY_DOMAINS: [UnaryOp, number, number][] = [
  ["sqrt", 0, 4],
  ["rsqrt", 0.01, 4],
  ["square", -3, 3],
  ["exp", -10, 10],
  ["log", 1e-3, 100],
  ["abs", -2, 2],
];

test(`unary() on ${label} matches the CPU for each op on inputs in its domain`, () => {
  using p = backends();
  const g = new Generator(114);
  for (const [op, low, high] of UNARY_DOMAINS) {
    for (const length of [1, 1000, 100_003]) {
      const values = uniform(g, length + 2, low, high);
      if (op === "sqrt" || op === "square" || op === "abs") values[0] = 0;
      if (op === "log" || op === "exp") values[length - 1] = 1;
      const x = p.input(values);
      const y = p.nan(length + 2);
      p.run((b, on) => b.unary({ op, x: on(x), y: on(y), length }));
      const what = `unary ${op} of ${length}`;
      p.expectNear(y, what, ELEMENTWISE, below(length));
      p.expectSame(y, `${what}, past the length`, from(length));
    }
  }
});

// --- optimiser updates ---------------------------------------------------------------

const SGD_CASES: [string, Omit<SgdStep, "firstStep">][] = [
  ["plain SGD", {
    lr: 0.1,
    momentum: 0,
    dampening: 0,
    weightDecay: 0,
    nesterov: false,
  }],
  ["plain SGD with weight decay", {
    lr: 0.05,
    momentum: 0,
    dampening: 0,
    weightDecay: 1e-4,
    nesterov: false,
  }],
  ["momentum 0.9 and weight decay", {
    lr: 0.1,
    momentum: 0.9,
    dampening: 0,
    weightDecay: 1e-4,
    nesterov: false,
  }],
  ["momentum 0.9 with dampening 0.1", {
    lr: 0.1,
    momentum: 0.9,
    dampening: 0.1,
    weightDecay: 0,
    nesterov: false,
  }],
  ["Nesterov momentum 0.9 and weight decay 5e-4", {
    lr: 0.2,
    momentum: 0.9,
    dampening: 0,
    weightDecay: 5e-4,
    nesterov: true,
  }],
];

test(`sgdUpdate() on ${label} matches the CPU over a first and later steps for each kind of SGD`, () => {
  using p = backends();
  const g = new Generator(115);
  for (const length of [1000, 100_003]) {
    for (const [what, h] of SGD_CASES) {
      // Three spare elements past the tensor, which no step may touch.
      const param = p.input(uniform(g, length + 3));
      // The first step must not read the buffer: it starts as NaN.
      const buffer = h.momentum === 0 ? null : p.nan(length + 3);
      for (let step = 0; step < 3; step++) {
        const grad = p.input(uniform(g, length + 3, -0.1, 0.1));
        p.run((b, on) =>
          b.sgdUpdate({
            param: on(param),
            grad: on(grad),
            momentumBuffer: buffer && on(buffer),
            length,
            step: { ...h, firstStep: step === 0 },
          })
        );
        const at = `${what}, ${length} elements, step ${step}`;
        p.expectNear(param, `${at}: parameters`, ELEMENTWISE, below(length));
        p.expectSame(param, `${at}: past the length`, from(length));
        if (buffer) {
          p.expectNear(buffer, `${at}: momentum`, ELEMENTWISE, below(length));
        }
      }
    }
  }
});

test(`larsAdapt() on ${label} matches the CPU, and leaves the gradient alone for a zero parameter or gradient`, () => {
  using p = backends();
  const g = new Generator(116);
  for (const length of [1000, 100_003]) {
    for (
      const c of [
        { what: "weight decay 0.1", trust: 0.001, weightDecay: 0.1 },
        { what: "no weight decay", trust: 0.02, weightDecay: 0 },
        { what: "a zero parameter", zeroParam: true },
        { what: "a zero gradient", zeroGrad: true },
      ]
    ) {
      const trust = c.trust ?? 0.001;
      const weightDecay = c.weightDecay ?? 1e-4;
      // Large values past the length: a norm that took them in would show.
      const pv = uniform(g, length + 3);
      const gv = uniform(g, length + 3, -0.01, 0.01);
      pv.fill(1e3, length);
      gv.fill(1e3, length);
      if (c.zeroParam) pv.fill(0, 0, length);
      if (c.zeroGrad) gv.fill(0, 0, length);
      const param = p.input(pv);
      const grad = p.input(gv);
      p.run((b, on) =>
        b.larsAdapt({
          param: on(param),
          grad: on(grad),
          length,
          trust,
          weightDecay,
          eps: 1e-8,
        })
      );
      const what = `larsAdapt of ${length}, ${c.what}`;
      if (c.zeroParam || c.zeroGrad) {
        p.expectSame(grad, `${what}: the gradient is untouched`);
        assertSame(reference.read(grad.ref), gv, `${what}: reference`);
      } else {
        // Two norms of `length` terms, then elementwise.
        p.expectNear(grad, what, sumTolerance(length), below(length));
        p.expectSame(grad, `${what}, past the length`, from(length));
      }
      p.expectSame(param, `${what}: the parameter is untouched`);
    }
  }
});

/**
 * Tensor lists of the multi-tensor ops: empty tensors among them, and a
 * total past one grid of the elementwise loop (MAX_BLOCKS x 256 =
 * 2 097 152 elements), so that threads stride across several tensors.
 */
const MANY_LENGTHS = [0, 1000, 3, 2_400_000, 0, 77, 100_003, 0];

/** Elements past each tensor of a list, which no op may touch. */
const MANY_SPARE = 3;

test(`sgdUpdateMany() on ${label} matches the CPU, and its own sgdUpdate per tensor bit for bit, for each kind of SGD`, () => {
  using p = backends();
  const g = new Generator(118);
  const lengths = MANY_LENGTHS;
  const spare = (n: number) => n + MANY_SPARE;
  for (const [what, h] of SGD_CASES) {
    const momentum = h.momentum !== 0;
    const params = lengths.map((n) => p.input(uniform(g, spare(n))));
    // The same parameters, stepped one sgdUpdate per tensor on the device.
    const single = params.map((t) => p.input(other!.read(t.other)));
    // The first step must not read the buffers: they start as NaN.
    const buffers = momentum ? lengths.map((n) => p.nan(spare(n))) : null;
    const singleBuffers = momentum ? lengths.map((n) => p.nan(spare(n))) : null;
    // The same gradient buffers every step, new values in them: on a GPU
    // the later steps find their table on the device.
    const grads = lengths.map((n) => p.nan(spare(n)));
    for (let step = 0; step < 3; step++) {
      for (const grad of grads) {
        const values = uniform(g, grad.length, -0.1, 0.1);
        reference.write(grad.ref, values);
        other!.write(grad.other, values);
      }
      const s: SgdStep = { ...h, firstStep: step === 0 };
      p.run((b, on) =>
        b.sgdUpdateMany({
          params: params.map(on),
          grads: grads.map(on),
          momentumBuffers: buffers && buffers.map(on),
          lengths,
          step: s,
        })
      );
      lengths.forEach((length, i) =>
        other!.sgdUpdate({
          param: single[i].other,
          grad: grads[i].other,
          momentumBuffer: singleBuffers && singleBuffers[i].other,
          length,
          step: s,
        })
      );
      lengths.forEach((length, i) => {
        const at = `${what}, step ${step}, tensor ${i} of ${length}`;
        if (length > 0) {
          p.expectNear(
            params[i],
            `${at}: parameters`,
            ELEMENTWISE,
            below(length),
          );
          if (buffers) {
            p.expectNear(
              buffers[i],
              `${at}: momentum`,
              ELEMENTWISE,
              below(length),
            );
          }
        }
        p.expectSame(params[i], `${at}: past the length`, from(length));
        if (buffers) {
          p.expectSame(
            buffers[i],
            `${at}: momentum past the length`,
            from(length),
          );
        }
        assertSame(
          other!.read(params[i].other),
          other!.read(single[i].other),
          `${at}: fused and per-tensor parameters on ${label}`,
        );
        if (buffers && singleBuffers) {
          assertSame(
            other!.read(buffers[i].other),
            other!.read(singleBuffers[i].other),
            `${at}: fused and per-tensor momentum on ${label}`,
          );
        }
      });
    }
  }
});

test(`axpbyMany() on ${label} matches the CPU, and its own axpby per tensor bit for bit, beta 0 not reading y`, () => {
  using p = backends();
  const g = new Generator(119);
  const lengths = MANY_LENGTHS;
  const spare = (n: number) => n + MANY_SPARE;
  for (const [alpha, beta] of [[0.004, 0.996], [2.5, 0], [1, 1], [0.1, -1]]) {
    const xs = lengths.map((n) => p.nan(spare(n)));
    const ys = lengths.map((n) =>
      beta === 0 ? p.nan(spare(n)) : p.input(uniform(g, spare(n)))
    );
    const single = ys.map((y) => p.input(other!.read(y.other)));
    // Three rounds over the same buffers, as the EMA runs step after step.
    for (let round = 0; round < 3; round++) {
      for (const x of xs) {
        const values = uniform(g, x.length);
        reference.write(x.ref, values);
        other!.write(x.other, values);
      }
      p.run((b, on) =>
        b.axpbyMany({ alpha, beta, xs: xs.map(on), ys: ys.map(on), lengths })
      );
      lengths.forEach((n, i) =>
        other!.axpby({ n, alpha, x: xs[i].other, beta, y: single[i].other })
      );
      lengths.forEach((n, i) => {
        const what =
          `axpbyMany alpha ${alpha}, beta ${beta}, round ${round}, tensor ${i} of ${n}`;
        if (n > 0) p.expectNear(ys[i], what, ELEMENTWISE, below(n));
        p.expectSame(ys[i], `${what}, past the length`, from(n));
        assertSame(
          other!.read(ys[i].other),
          other!.read(single[i].other),
          `${what}: fused and per-tensor on ${label}`,
        );
      });
    }
  }
});

// --- fused row kernels ---------------------------------------------------------------

test(`l2Normalize forward and backward on ${label} match the CPU, zero rows and rows below eps included`, () => {
  using p = backends();
  const g = new Generator(117);
  const eps = 1e-12;
  for (
    const [rows, cols, small] of [
      [4, 6, [2]], // a zero row
      [3, 5, [0, 1]], // a zero row and a row below eps
      [32, 16, []],
      [256, 2048, [100]], // MEC's features
    ] as [number, number, number[]][]
  ) {
    const values = uniform(g, rows * cols);
    small.forEach((r, i) => {
      for (let j = 0; j < cols; j++) {
        // The first such row is zero, the others tiny but not zero.
        values[r * cols + j] = i === 0 ? 0 : values[r * cols + j] * 1e-14;
      }
    });
    const x = p.input(values);
    const y = p.nan(rows * cols);
    const norms = p.nan(rows);
    p.run((b, on) =>
      b.l2NormalizeForward({
        x: on(x),
        y: on(y),
        norms: on(norms),
        rows,
        cols,
        eps,
      })
    );
    const what = `l2Normalize ${rows}x${cols}`;
    // One reduction of `cols` squares per row, then elementwise.
    const tol = sumTolerance(cols);
    p.expectNear(y, `${what}: y`, tol);
    p.expectNear(norms, `${what}: norms`, tol);

    const yIn = p.input(reference.read(y.ref));
    const normsIn = p.input(reference.read(norms.ref));
    const dy = p.input(uniform(g, rows * cols));
    const dx = p.nan(rows * cols);
    p.run((b, on) =>
      b.l2NormalizeBackward({
        y: on(yIn),
        norms: on(normsIn),
        dy: on(dy),
        dx: on(dx),
        rows,
        cols,
        eps,
      })
    );
    // Below eps the gradient is dy / eps, 1e12 times larger: those rows are
    // compared on their own, so that they do not set the others' scale.
    const isSmall: Selection = (i) => small.includes(Math.floor(i / cols));
    if (small.length < rows) {
      p.expectNear(dx, `${what}: dx`, tol, not(isSmall));
    }
    if (small.length > 0) {
      p.expectNear(dx, `${what}: dx of rows below eps`, ELEMENTWISE, isSmall);
    }
  }
});

test(`softmax cross-entropy forward and backward on ${label} match the CPU`, () => {
  using p = backends();
  const g = new Generator(118);
  const cases: [string, number, number, Float32Array | null][] = [
    ["6x5", 6, 5, null],
    ["32x10", 32, 10, null],
    ["256x1000 (ImageNet's classes)", 256, 1000, null],
    ["large logits", 2, 3, Float32Array.of(1000, 0, -1000, 0, 1000, 0)],
  ];
  for (const [what, rows, cols, given] of cases) {
    const logits = p.input(given ?? uniform(g, rows * cols, -3, 3));
    const labels = p.input(
      Float32Array.from(
        { length: rows },
        (_, i) => given ? [0, 2][i] : g.integer(0, cols),
      ),
    );
    const probs = p.nan(rows * cols);
    const losses = p.nan(rows);
    p.run((b, on) =>
      b.softmaxCrossEntropyForward({
        logits: on(logits),
        labels: on(labels),
        probs: on(probs),
        losses: on(losses),
        rows,
        cols,
      })
    );
    // A sum of `cols` exponentials per row, then elementwise.
    const tol = sumTolerance(cols);
    p.expectNear(probs, `${what}: probabilities`, tol);
    p.expectNear(losses, `${what}: losses`, tol);

    const probsIn = p.input(reference.read(probs.ref));
    const dLosses = p.input(uniform(g, rows, 0, 2 / rows));
    const dx = p.nan(rows * cols);
    p.run((b, on) =>
      b.softmaxCrossEntropyBackward({
        probs: on(probsIn),
        labels: on(labels),
        dLosses: on(dLosses),
        dx: on(dx),
        rows,
        cols,
      })
    );
    p.expectNear(dx, `${what}: gradient`, ELEMENTWISE);
  }
});

// =====================================================================================
// 2. Autograd: forward and gradients of the differentiable ops
// =====================================================================================

/** Where one side of a comparison makes its tensors. */
interface Side {
  tensor(
    data: Float32Array,
    shape: readonly number[],
    requiresGrad?: boolean,
  ): Tensor;
}

const cpuSide: Side = {
  tensor: (data, shape, requiresGrad = false) =>
    tensor(data, shape, { device: "cpu", requiresGrad }),
};

/**
 * The device under test by name; the second CPU backend, which has none,
 * through `Tensor.empty` on it (every op makes its outputs on its inputs'
 * backend).
 */
const otherSide: Side = target === "cpu"
  ? {
    tensor: (data, shape, requiresGrad = false) => {
      const t = Tensor.empty(other!, shape);
      other!.write(t.buffer, data);
      t.requiresGrad = requiresGrad;
      return t;
    },
  }
  : {
    tensor: (data, shape, requiresGrad = false) =>
      tensor(data, shape, { device: target, requiresGrad }),
  };

interface GradCase {
  inputs: { data: Float32Array; shape: number[]; grad?: boolean }[];
  /**
   * The op on tensors of one side; it returns the output and, after it, any
   * state it updated (running statistics), compared after the backward pass.
   */
  op: (side: Side, ...xs: Tensor[]) => Tensor | Tensor[];
  forward: Closeness | "exact";
  backward: Closeness | "exact";
}

interface GradRun {
  out: Float32Array;
  grads: (Float32Array | null)[];
  state: Float32Array[];
}

/**
 * Runs the op on one side with the upstream gradient `dy` (the gradient of
 * sum(op(x) * dy)) and reads back the output, every input's gradient and the
 * op's state; every tensor made is freed.
 */
function runSide(side: Side, c: GradCase, dy: Float32Array): GradRun {
  return scope(() => {
    const xs = c.inputs.map((i) =>
      side.tensor(i.data, i.shape, i.grad ?? true)
    );
    const result = c.op(side, ...xs);
    const [y, ...state] = Array.isArray(result) ? result : [result];
    if (y.size !== dy.length) {
      throw new Error(
        `the upstream gradient has ${dy.length} values, not ${y.size}`,
      );
    }
    sum(mul(y, side.tensor(dy, y.shape))).backward();
    return {
      out: y.toArray(),
      grads: xs.map((x) => x.grad?.toArray() ?? null),
      state: state.map((s) => s.toArray()),
    };
  });
}

function compare(
  actual: Float32Array,
  expected: Float32Array,
  what: string,
  tol: Closeness | "exact",
): void {
  if (tol === "exact") assertSame(actual, expected, what);
  else assertNear(actual, expected, what, tol);
}

/**
 * Compares the op's output, every input gradient and its state between the
 * CPU and the device under test, and that neither side leaks a tensor.
 * `outputSize` sizes the upstream gradient; exact cases get dyadic ones.
 */
function compareGradients(
  name: string,
  outputSize: number,
  c: GradCase,
  gen: Generator,
): void {
  const exact = c.forward === "exact" && c.backward === "exact";
  const dy = exact ? dyadic(gen, outputSize) : uniform(gen, outputSize);
  const live = memoryStats();
  const want = runSide(cpuSide, c, dy);
  const got = runSide(otherSide, c, dy);
  assert.deepEqual(memoryStats(), live, `${name}: tensors were left behind`);
  compare(got.out, want.out, `${name}: forward`, c.forward);
  want.grads.forEach((w, i) => {
    const gi = got.grads[i];
    if (w === null || gi === null) {
      assert.equal(gi === null, w === null, `${name}: gradient of input ${i}`);
      return;
    }
    compare(gi, w, `${name}: gradient of input ${i}`, c.backward);
  });
  want.state.forEach((w, i) => {
    compare(got.state[i], w, `${name}: state ${i} after the op`, c.forward);
  });
}

/** Random inputs of the given shapes. */
function inputs(
  g: Generator,
  ...shapes: number[][]
): { data: Float32Array; shape: number[] }[] {
  return shapes.map((shape) => ({ data: uniform(g, size(shape)), shape }));
}

test(`conv2d() and its gradients on ${label} match the CPU`, () => {
  const g = new Generator(201);
  for (
    const [xs, ws, bias, stride, padding] of [
      [[2, 3, 7, 9], [4, 3, 3, 3], true, [1, 1], [1, 1]],
      [[1, 2, 9, 8], [3, 2, 7, 7], false, [2, 2], [3, 3]],
      [[2, 2, 6, 5], [3, 2, 1, 3], true, [1, 2], [0, 1]],
      [[2, 16, 8, 8], [32, 16, 3, 3], false, [2, 2], [1, 1]],
    ] as [number[], number[], boolean, Pair, Pair][]
  ) {
    const d = convShape(
      xs[0],
      xs[1],
      [xs[2], xs[3]],
      ws[0],
      [ws[2], ws[3]],
      stride,
      padding,
    );
    const shapes = bias ? [xs, ws, [ws[0]]] : [xs, ws];
    compareGradients(
      `conv2d x [${xs}], w [${ws}], stride ${stride}, padding ${padding}${
        bias ? ", bias" : ""
      }`,
      d.n * d.k * d.oh * d.ow,
      {
        inputs: inputs(g, ...shapes),
        op: (_, x, w, b) => conv2d(x, w, b ?? null, { stride, padding }),
        forward: LONG_SUM,
        backward: LONG_SUM,
      },
      g,
    );
  }
});

test(`batchNorm() in training and eval mode and its gradients on ${label} match the CPU, running statistics included`, () => {
  const g = new Generator(202);
  for (const shape of [[4, 3, 7], [2, 4, 3, 5], [8, 16], [2, 16, 8, 8]]) {
    const c = shape[1];
    for (const affine of [true, false]) {
      for (const training of [true, false]) {
        const mean = uniform(g, c);
        const variance = uniform(g, c, 0.2, 2);
        const xs = [{ data: uniform(g, size(shape), -2, 3), shape }];
        if (affine) xs.push(...inputs(g, [c], [c]));
        compareGradients(
          `batchNorm [${shape}], affine ${affine}, training ${training}`,
          size(shape),
          {
            inputs: xs,
            op: (side, x, w, b) => {
              const runningMean = side.tensor(mean, [c]);
              const runningVar = side.tensor(variance, [c]);
              const y = batchNorm(x, {
                weight: w ?? null,
                bias: b ?? null,
                runningMean,
                runningVar,
                training,
                momentum: 0.1,
              });
              return [y, runningMean, runningVar];
            },
            forward: SHORT_SUM,
            // The gradient subtracts batch means of O(1) terms.
            backward: LONG_SUM,
          },
          g,
        );
      }
    }
  }
});

test(`relu() and maxPool2d() and their gradients on ${label} give exactly the CPU's values`, () => {
  const g = new Generator(203);
  const x = uniform(g, 60);
  for (let i = 0; i < 60; i += 9) x[i] = 0;
  compareGradients("relu [3, 4, 5]", 60, {
    inputs: [{ data: x, shape: [3, 4, 5] }],
    op: (_, t) => relu(t),
    forward: "exact",
    backward: "exact",
  }, g);
  for (
    const [shape, kernelSize, stride, padding] of [
      [[2, 3, 8, 8], [3, 3], [2, 2], [1, 1]],
      [[1, 2, 6, 5], [3, 2], [1, 2], [1, 0]],
      [[2, 4, 16, 16], [3, 3], [2, 2], [1, 1]],
    ] as [number[], Pair, Pair, Pair][]
  ) {
    const d = poolShape(shape, kernelSize, stride, padding);
    // Four levels: ties in most windows, routed to the first maximum.
    compareGradients(
      `maxPool2d [${shape}], kernel ${kernelSize}, stride ${stride}, padding ${padding}`,
      d.n * d.c * d.oh * d.ow,
      {
        inputs: [{ data: levels(g, size(shape), 4), shape }],
        op: (_, t) => maxPool2d(t, { kernelSize, stride, padding }),
        forward: "exact",
        backward: "exact",
      },
      g,
    );
  }
});

test(`matmul() and linear() and their gradients on ${label} match the CPU`, () => {
  const g = new Generator(204);
  for (const [m, k, n] of [[5, 7, 3], [64, 130, 2], [32, 256, 16]]) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        compareGradients(
          `matmul ${m}x${k}x${n}, transA ${transA}, transB ${transB}`,
          m * n,
          {
            inputs: inputs(
              g,
              transA ? [k, m] : [m, k],
              transB ? [n, k] : [k, n],
            ),
            op: (_, a, b) => matmul(a, b, { transA, transB }),
            forward: SHORT_SUM,
            backward: SHORT_SUM,
          },
          g,
        );
      }
    }
  }
  for (const bias of [true, false]) {
    const shapes = bias ? [[8, 64], [10, 64], [10]] : [[8, 64], [10, 64]];
    compareGradients(`linear [8, 64] -> 10${bias ? ", bias" : ""}`, 80, {
      inputs: inputs(g, ...shapes),
      op: (_, x, w, b) => linear(x, w, b),
      forward: SHORT_SUM,
      backward: SHORT_SUM,
    }, g);
  }
});

test(`normalize(), crossEntropy() and mecLoss() and their gradients on ${label} match the CPU`, () => {
  const g = new Generator(205);
  for (const [rows, cols] of [[4, 6], [16, 2048]]) {
    compareGradients(`normalize ${rows}x${cols}`, rows * cols, {
      inputs: inputs(g, [rows, cols]),
      op: (_, x) => normalize(x),
      forward: sumTolerance(cols),
      backward: sumTolerance(cols),
    }, g);
  }
  for (const [rows, cols] of [[6, 5], [32, 10]]) {
    const labels = Array.from({ length: rows }, () => g.integer(0, cols));
    for (const reduction of ["mean", "sum", "none"] as const) {
      compareGradients(
        `crossEntropy ${rows}x${cols}, reduction ${reduction}`,
        reduction === "none" ? rows : 1,
        {
          inputs: [{
            data: uniform(g, rows * cols, -3, 3),
            shape: [rows, cols],
          }],
          op: (_, x) => crossEntropy(x, labels, { reduction }),
          forward: SHORT_SUM,
          backward: SHORT_SUM,
        },
        g,
      );
    }
  }
  for (const form of ["batch", "feature"] as const) {
    compareGradients(`mecLoss 8x16, ${form} form`, 1, {
      inputs: inputs(g, [8, 16], [8, 16]),
      op: (_, p, z) => mecLoss(p, z, { lamdaInv: 2, order: 4, form }),
      // A chain of normalisations and four matrix products.
      forward: LONG_SUM,
      backward: LONG_SUM,
    }, g);
  }
});

/** The broadcast pairs of elementwise_test.ts. */
const BROADCASTS: [number[], number[]][] = [
  [[3, 5], [3, 5]],
  [[2, 4, 3, 3], [1, 4, 1, 1]],
  [[2, 4, 3, 3], [4, 1, 1]],
  [[6, 5], [6, 1]],
  [[6, 5], [5]],
  [[2, 3, 4], [1]],
  [[2, 3, 4], [2, 1, 4]],
  [[1, 7], [7]],
];

test(`add(), sub() and mul() with broadcasting and their gradients on ${label} match the CPU in both orders`, () => {
  const g = new Generator(206);
  for (const [as, bs] of BROADCASTS) {
    for (
      const [name, op] of [["add", add], ["sub", sub], ["mul", mul]] as const
    ) {
      const [a, b] = inputs(g, as, bs);
      const forward = ELEMENTWISE;
      // The broadcast operand's gradient sums over the broadcast dims.
      const backward = SHORT_SUM;
      compareGradients(`${name} [${as}] and [${bs}]`, size(as), {
        inputs: [a, b],
        op: (_, x, y) => op(x, y),
        forward,
        backward,
      }, g);
      compareGradients(`${name} [${bs}] and [${as}]`, size(as), {
        inputs: [b, a],
        op: (_, y, x) => op(y, x),
        forward,
        backward,
      }, g);
    }
  }
});

test(`sum(), mean() and globalAvgPool2d() and their gradients on ${label} match the CPU`, () => {
  const g = new Generator(207);
  for (const shape of [[2, 3, 4], [64, 3136]]) {
    const x = [{ data: uniform(g, size(shape), -0.5, 1.5), shape }];
    const all = size(shape);
    compareGradients(`sum of [${shape}]`, 1, {
      inputs: x,
      op: (_, t) => sum(t),
      forward: sumTolerance(all),
      backward: "exact", // every gradient element is the upstream value
    }, g);
    compareGradients(`mean of [${shape}]`, 1, {
      inputs: x,
      op: (_, t) => mean(t),
      forward: sumTolerance(all),
      backward: ELEMENTWISE,
    }, g);
    for (let dim = 0; dim < shape.length; dim++) {
      const kept = shape.filter((_, i) => i !== dim);
      for (const keepDim of [false, true]) {
        compareGradients(
          `sum and mean of [${shape}] over dim ${dim}, keepDim ${keepDim}`,
          size(kept),
          {
            inputs: x,
            op: (_, t) => add(sum(t, dim, keepDim), mean(t, dim, keepDim)),
            forward: sumTolerance(shape[dim]),
            backward: ELEMENTWISE,
          },
          g,
        );
      }
    }
  }
  compareGradients("globalAvgPool2d [2, 3, 5, 7]", 6, {
    inputs: inputs(g, [2, 3, 5, 7]),
    op: (_, t) => globalAvgPool2d(t),
    forward: SHORT_SUM,
    backward: ELEMENTWISE,
  }, g);
});

// =====================================================================================
// 3. Models: training steps from the same weights
// =====================================================================================

/** Every state-dict tensor's values, by key. */
function stateValues(m: Module): Map<string, Float32Array> {
  return new Map([...m.stateDict()].map(([k, t]) => [k, t.toArray()]));
}

/**
 * Compares two models' states after `steps` steps from the same `initial`
 * one: what the steps changed, relative to the largest change in each tensor
 * (as golden_test.ts does against PyTorch). Float32 gradients of two
 * implementations agree to about 1e-4 through batch norm over small batches,
 * and each step adds its own difference, so the allowance grows with the
 * steps; the absolute floor is float32 rounding of O(1) weights. Batch
 * counts are integers and must agree exactly.
 */
function assertStatesClose(
  initial: Map<string, Float32Array>,
  expected: Map<string, Float32Array>,
  actual: Map<string, Float32Array>,
  steps: number,
  what: string,
): void {
  assert.deepEqual([...actual.keys()], [...expected.keys()]);
  for (const [key, want] of expected) {
    const got = actual.get(key)!;
    if (key.endsWith("num_batches_tracked")) {
      assertSame(got, want, `${what}: ${key}`);
      continue;
    }
    const start = initial.get(key)!;
    let largest = 0;
    for (let i = 0; i < start.length; i++) {
      largest = Math.max(largest, Math.abs(want[i] - start[i]));
    }
    for (let i = 0; i < start.length; i++) {
      const error = Math.abs((got[i] - start[i]) - (want[i] - start[i]));
      assert.ok(
        error <= 3e-4 * steps * largest + 1e-6,
        `${what}: ${key}[${i}] changed by ${
          got[i] - start[i]
        } on ${label}, by ${
          want[i] - start[i]
        } on the CPU (largest change ${largest})`,
      );
    }
  }
}

/**
 * A loss after `step` updates: the first is a float32 forward pass in other
 * summation orders (about 1e-6 relative); each update moves the weights
 * apart by a little more, so the allowance grows with the step. It is
 * relative to the loss, or to `scale` where the loss is smaller: a loss near
 * zero is a difference of larger terms (logits, the MEC series' traces),
 * whose rounding does not shrink with it.
 */
function assertLossClose(
  got: number,
  want: number,
  step: number,
  what: string,
  scale: number,
): void {
  const allowed = 2e-5 * (1 + step) * Math.max(Math.abs(want), scale);
  assert.ok(
    Number.isFinite(got) && Math.abs(got - want) <= allowed,
    `${what}: step ${step} gives ${got} on ${label}, ${want} on the CPU (allowed ${allowed})`,
  );
}

/** One SGD step of a classifier on a fixed batch; returns the loss. */
function classifierStep(
  net: ResNet,
  optimizer: SGD,
  x: Tensor,
  labels: number[],
): number {
  return scope(() => {
    optimizer.zeroGrad();
    const loss = crossEntropy(net.forward(x), labels);
    loss.backward();
    const value = loss.item();
    optimizer.step();
    return value;
  });
}

/** resnet18 of width 8 with the small stem, for 16 px images and 10 classes. */
const smallResNet = (device: string) =>
  resnet18({
    numClasses: 10,
    smallStem: true,
    width: 8,
    gen: new Generator(301),
    device,
  });

/**
 * `steps` SGD steps of the same classifier on the CPU and on the device under
 * test, from the same weights: each loss, then every weight and statistic.
 */
function followsCpu(
  name: string,
  make: (device: string) => ResNet,
  shape: [number, number, number, number],
  steps: number,
): void {
  const g = new Generator(302);
  const xData = g.fillNormal(new Float32Array(shape.reduce((a, b) => a * b)));
  const labels = Array.from({ length: shape[0] }, (_, i) => (3 + 7 * i) % 10);
  const refNet = make("cpu");
  const otherNet = make(target);
  // The same initial weights, copied across (through the host on a GPU).
  otherNet.loadStateDict(refNet.stateDict());
  const initial = stateValues(refNet);
  for (const [key, v] of stateValues(otherNet)) {
    assertSame(v, initial.get(key)!, `copied ${key}`);
  }
  // A moderate rate: at lr 0.1 the loss on this fixed batch of 4 collapses
  // within three steps, and relative noise of 1e-6 in each layer's outputs
  // (injected on the CPU, ten times float32's rounding) then moved the
  // third loss by 0.5 %. At 0.02 the same noise moved the losses by under
  // 1e-6 and the weights by under a tenth of the allowance below.
  const hyper = { lr: 0.02, momentum: 0.9, weightDecay: 1e-4 };
  const refOpt = new SGD(refNet.parameters(), hyper);
  const otherOpt = new SGD(otherNet.parameters(), hyper);
  const refX = tensor(xData, shape, { device: "cpu" });
  const otherX = tensor(xData, shape, { device: target });
  for (let step = 0; step < steps; step++) {
    const want = classifierStep(refNet, refOpt, refX, labels);
    const got = classifierStep(otherNet, otherOpt, otherX, labels);
    assertLossClose(got, want, step, `${name} loss`, 1);
  }
  assertStatesClose(
    initial,
    stateValues(refNet),
    stateValues(otherNet),
    steps,
    name,
  );
  for (const t of [refX, otherX]) t.dispose();
  for (const o of [refOpt, otherOpt]) o.dispose();
  for (const n of [refNet, otherNet]) n.dispose();
}

test(`five SGD steps of a small resnet18 on ${label} follow the CPU's: each loss, then every weight and BN statistic`, () => {
  followsCpu("resnet18", smallResNet, [4, 3, 16, 16], 5);
});

// ResNet-50's bottlenecks, stem and max pool, at a quarter of its width so
// that the CPU's side stays quick.
test(`three SGD steps of a ResNet-50 of width 16 (its own stem, 32 px, batch 2) on ${label} follow the CPU's`, () => {
  followsCpu(
    "resnet50",
    (device) =>
      resnet50({ numClasses: 10, width: 16, gen: new Generator(305), device }),
    [2, 3, 32, 32],
    3,
  );
});

test(`three MEC steps on ${label} follow the CPU's: losses, coding lengths, student, teacher and BN statistics`, () => {
  const steps = 3;
  const make = (device: string) =>
    new MEC({
      arch: "resnet18",
      width: 4,
      smallStem: true,
      dim: 16,
      predDim: 8,
      gen: new Generator(303),
      device,
    });
  const refModel = make("cpu");
  const otherModel = make(target);
  otherModel.loadStateDict(refModel.stateDict());
  const initial = stateValues(refModel);
  const hyper = { lr: 0.05, momentum: 0.9, weightDecay: 1e-5 };
  const refOpt = new SGD(refModel.trainableParameters(), hyper);
  const otherOpt = new SGD(otherModel.trainableParameters(), hyper);
  const g = new Generator(304);
  for (let step = 0; step < steps; step++) {
    const x1 = g.fillNormal(new Float32Array(8 * 3 * 8 * 8));
    const x2 = g.fillNormal(new Float32Array(8 * 3 * 8 * 8));
    const settings = {
      iteration: step,
      lr: 0.05,
      teacherMomentum: 0.9 + 0.03 * step,
      lamdaInv: 2,
      mu: (8 + 16) / 2,
    };
    const run = (model: MEC, optimizer: SGD, device: string) =>
      scope(() =>
        mecStep(
          model,
          optimizer,
          tensor(x1, [8, 3, 8, 8], { device }),
          tensor(x2, [8, 3, 8, 8], { device }),
          settings,
        )
      );
    const want = run(refModel, refOpt, "cpu");
    const got = run(otherModel, otherOpt, target);
    assertLossClose(got.loss, want.loss, step, "MEC loss", 1);
    // The coding length is -loss * mu / lamdaInv.
    assertLossClose(got.mec, want.mec, step, "MEC coding length", 6);
  }
  assertStatesClose(
    initial,
    stateValues(refModel),
    stateValues(otherModel),
    steps,
    "MEC",
  );
  for (const o of [refOpt, otherOpt]) o.dispose();
  for (const m of [refModel, otherModel]) m.dispose();
});

// =====================================================================================
// 4. Memory
// =====================================================================================

test(`50 training steps of the small resnet18 on ${label} keep the device's allocated bytes and the live tensors flat`, () => {
  // By name: on a second CPU backend this runs on "cpu" (see the top).
  const backend = device(target);
  const startStats = memoryStats();
  const net = smallResNet(target);
  const optimizer = new SGD(net.parameters(), {
    lr: 0.05,
    momentum: 0.9,
    weightDecay: 1e-4,
  });
  const g = new Generator(401);
  const xData = g.fillNormal(new Float32Array(4 * 3 * 16 * 16));
  const x = tensor(xData, [4, 3, 16, 16], { device: target });
  const labels = [1, 4, 4, 8];
  let allocated = 0;
  let live = memoryStats();
  for (let step = 1; step <= 50; step++) {
    const loss = classifierStep(net, optimizer, x, labels);
    assert.ok(Number.isFinite(loss), `step ${step}: loss ${loss}`);
    // After step 2 every gradient and momentum buffer exists.
    if (step === 2) {
      allocated = backend.memory().allocated;
      live = memoryStats();
    }
  }
  assert.equal(backend.memory().allocated, allocated, "allocated bytes");
  assert.deepEqual(memoryStats(), live, "live tensors and their bytes");
  x.dispose();
  optimizer.dispose();
  net.dispose();
  // Every tensor goes with the model. (The device's allocated bytes need not
  // return to where they started: a backend may keep workspaces it grew.)
  assert.deepEqual(memoryStats(), startStats, "live tensors at the end");
});
