import type { BatchNormDesc, SgdStep } from "../nn/backend.ts";
import { Scratch } from "../cpu/allocator.ts";
import * as bn from "../cpu/batchnorm.ts";
import * as ew from "../cpu/elementwise.ts";
import * as pool from "../cpu/pool.ts";
import { tryDnnl } from "../cpu/dnnl.ts";
import { DnnlOps } from "../cpu/dnnl_ops.ts";
import { Layouts } from "../cpu/layout.ts";
import { CpuBackend } from "../cpu/backend.ts";
import { Generator } from "../mod.ts";
import { runWith } from "./subprocess.ts";
import { assert } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import { batchNormRef } from "./reference.ts";

const lib = tryDnnl();
/** Appended to test names when oneDNN is missing, so the skip is visible. */
const skipped = lib === null
  ? " (skipped: oneDNN, libdnnl.so.2, is not installed)"
  : "";
const gen = new Generator(5);
const values = (n: number, low: number, high: number) =>
  Float32Array.from(randomValues(gen, n, low, high));

/** The batch norm kernels of both implementations, called alike. */
interface BatchNormKernels {
  name: string;
  forward: typeof bn.batchNormForwardTraining;
  inference: typeof bn.batchNormForwardInference;
  backward: typeof bn.batchNormBackward;
}

function implementations(): BatchNormKernels[] {
  const list: BatchNormKernels[] = [{
    name: "TypeScript",
    forward: bn.batchNormForwardTraining,
    inference: bn.batchNormForwardInference,
    backward: bn.batchNormBackward,
  }];
  if (lib !== null) {
    const scratch = new Scratch();
    const ops = new DnnlOps(lib, (n) => scratch.get(n), new Layouts(lib));
    list.push({
      name: "oneDNN",
      forward: ops.batchNormForwardTraining.bind(ops),
      inference: ops.batchNormForwardInference.bind(ops),
      backward: (x, dy, dx, gamma, dGamma, dBeta, mean, invStd, d) =>
        ops.batchNormBackward(
          x,
          dy,
          dx,
          gamma,
          dBeta !== null,
          dGamma,
          dBeta,
          mean,
          invStd,
          d,
        ),
    });
  }
  return list;
}

/**
 * Float64 gradients of sum(y * dy) for y = batch norm of x with batch
 * statistics: dx = gamma * invStd * (dy - mean(dy) - xhat * mean(dy * xhat)),
 * dgamma = sum(dy * xhat), dbeta = sum(dy).
 */
function backwardRef(
  x: Float64Array,
  dy: Float64Array,
  gamma: Float64Array | null,
  d: BatchNormDesc,
) {
  const { n, c, spatial: s } = d;
  const count = n * s;
  const ref = batchNormRef(x, [n, c, s], null, null, d.eps, null);
  const dx = new Float64Array(x.length);
  const dGamma = new Float64Array(c);
  const dBeta = new Float64Array(c);
  for (let ch = 0; ch < c; ch++) {
    const invStd = 1 / Math.sqrt(ref.variance[ch] + d.eps);
    let sumDy = 0;
    let sumDyXhat = 0;
    const at = (i: number, j: number) => (i * c + ch) * s + j;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < s; j++) {
        sumDy += dy[at(i, j)];
        sumDyXhat += dy[at(i, j)] * (x[at(i, j)] - ref.mean[ch]) * invStd;
      }
    }
    dGamma[ch] = sumDyXhat;
    dBeta[ch] = sumDy;
    const g = (gamma ? gamma[ch] : 1) * invStd;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < s; j++) {
        const xhat = (x[at(i, j)] - ref.mean[ch]) * invStd;
        dx[at(i, j)] = g *
          (dy[at(i, j)] - sumDy / count - xhat * sumDyXhat / count);
      }
    }
  }
  return { dx, dGamma, dBeta, ...ref };
}

const SHAPES: [number, number, number][] = [
  [4, 3, 1], // BatchNorm1d
  [2, 5, 7],
  [3, 8, 13], // a whole 8-wide channel block and a ragged plane
  [2, 17, 36],
  // Above SMALL_OP elements: oneDNN runs the training forward blocked,
  // with the channels padded to its block in the first.
  [2, 20, 6600],
  [2, 32, 4100],
];

for (const impl of implementations()) {
  for (const [n, c, spatial] of SHAPES) {
    for (const affine of [true, false]) {
      Deno.test(`${impl.name} batch norm forward and backward match float64 for [${n}, ${c}, ${spatial}], affine ${affine}`, () => {
        const d = { n, c, spatial, eps: 1e-5, momentum: 0.1 };
        const size = n * c * spatial;
        // A mean far from zero next to the spread tests the variance.
        const x = values(size, 2, 5);
        const dy = values(size, -1, 1);
        const gamma = affine ? values(c, 0.5, 1.5) : null;
        const beta = affine ? values(c, -1, 1) : null;
        const ref = backwardRef(
          Float64Array.from(x),
          Float64Array.from(dy),
          gamma && Float64Array.from(gamma),
          d,
        );
        const y = new Float32Array(size);
        const mean = new Float32Array(c);
        const invStd = new Float32Array(c);
        const runningMean = new Float32Array(c).fill(0.5);
        const runningVar = new Float32Array(c).fill(2);
        impl.forward(
          x,
          y,
          gamma,
          beta,
          runningMean,
          runningVar,
          mean,
          invStd,
          d,
        );
        const want = Float64Array.from(x, (v, i) => {
          const ch = Math.floor(i / spatial) % c;
          const xhat = (v - ref.mean[ch]) / Math.sqrt(ref.variance[ch] + 1e-5);
          return xhat * (gamma ? gamma[ch] : 1) + (beta ? beta[ch] : 0);
        });
        // Normalised values are O(1): float32 rounding of a few operations.
        const tol = { rtol: 1e-4, atol: 1e-4 };
        assertClose(y, want, "y", tol);
        assertClose(mean, ref.mean, "mean", tol);
        const wantInvStd = ref.variance.map((v) => 1 / Math.sqrt(v + 1e-5));
        assertClose(invStd, wantInvStd, "invStd", tol);
        const count = n * spatial;
        assertClose(
          runningVar,
          ref.variance.map((v) =>
            0.9 * 2 + 0.1 * (count > 1 ? v * count / (count - 1) : v)
          ),
          "runningVar",
          tol,
        );
        assertClose(
          runningMean,
          ref.mean.map((m) => 0.9 * 0.5 + 0.1 * m),
          "runningMean",
          tol,
        );

        const eval_ = new Float32Array(size);
        impl.inference(x, eval_, gamma, beta, mean, runningVar, d);
        const wantEval = Float64Array.from(x, (v, i) => {
          const ch = Math.floor(i / spatial) % c;
          return (v - mean[ch]) / Math.sqrt(runningVar[ch] + 1e-5) *
              (gamma ? gamma[ch] : 1) + (beta ? beta[ch] : 0);
        });
        assertClose(eval_, wantEval, "inference y", tol);

        const dx = new Float32Array(size);
        const dGamma = affine ? new Float32Array(c) : null;
        const dBeta = affine ? new Float32Array(c) : null;
        impl.backward(x, dy, dx, gamma, dGamma, dBeta, mean, invStd, d);
        // dx subtracts two batch means of O(1) terms; the sums over the
        // batch grow with its size.
        assertClose(dx, ref.dx, "dx", { rtol: 1e-3, atol: 2e-4 });
        if (dGamma && dBeta) {
          assertClose(dGamma, ref.dGamma, "dGamma", { rtol: 1e-3, atol: 1e-3 });
          assertClose(dBeta, ref.dBeta, "dBeta", { rtol: 1e-4, atol: 1e-4 });
        }
      });
    }
  }
}

Deno.test(
  `a large plain training forward runs on oneDNN's blocked kernel, in place too${skipped}`,
  { ignore: lib === null },
  () => {
    const scratch = new Scratch();
    const ops = new DnnlOps(lib!, (n) => scratch.get(n), new Layouts(lib!));
    const d = { n: 2, c: 32, spatial: 4100, eps: 1e-5, momentum: 0.1 };
    const size = d.n * d.c * d.spatial;
    const x = values(size, -3, 3);
    const gamma = values(d.c, 0.5, 1.5);
    const beta = values(d.c, -1, 1);
    const stats = () => Array.from({ length: 4 }, () => new Float32Array(d.c));
    const [rm, rv, mean, invStd] = stats();
    const y = new Float32Array(size);
    ops.batchNormForwardTraining(x, y, gamma, beta, rm, rv, mean, invStd, d);
    const training = ops.implementations().filter(([key]) =>
      key.startsWith("bn training")
    );
    assert(
      training.length === 1 && training[0][0].endsWith("blocked") &&
        !training[0][1].startsWith("ncsp"),
      `the training forward ran on ${JSON.stringify(training)}`,
    );
    const [rm2, rv2, mean2, invStd2] = stats();
    const inPlace = x.slice();
    ops.batchNormForwardTraining(
      inPlace,
      inPlace,
      gamma,
      beta,
      rm2,
      rv2,
      mean2,
      invStd2,
      d,
    );
    assert(
      inPlace.every((v, i) => Object.is(v, y[i])) &&
        mean2.every((v, i) => v === mean[i]) &&
        invStd2.every((v, i) => v === invStd[i]),
      "in place, the results differ",
    );
  },
);

Deno.test(
  `oneDNN's sum equals the TypeScript kernel's, in place too${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    const scratch = new Scratch();
    const ops = new DnnlOps(lib!, (n) => scratch.get(n), new Layouts(lib!));
    for (const length of [1, 7, 8, 1000, 4099]) {
      const x = values(length, -1, 1);
      const b = values(length, -1, 1);
      const sum = Float32Array.from(x, (v, i) => v + b[i]);
      const c = new Float32Array(length);
      ops.add(x, b, c, length);
      assert.deepEqual(c, sum);
      // In place, as the residual blocks run it.
      const a = x.slice();
      ops.add(a, b, a, length);
      assert.deepEqual(a, sum);
    }
    assert.ok(
      ops.implementations().some(([key, impl]) =>
        key.startsWith("add") && impl.length > 0
      ),
    );
  },
);

Deno.test("a NaN survives the ResNets' ReLUs and sums, so a diverged run is caught", () => {
  const be = new CpuBackend();
  const x = be.alloc(4);
  be.write(x, Float32Array.of(NaN, -1, 2, 0));
  be.reluForward({ x, y: x, length: 4 });
  be.opTensor({
    op: "add",
    alpha1: 1,
    a: x,
    alpha2: 1,
    b: x,
    bShape: [1, 1, 4],
    beta: 0,
    c: x,
    shape: [1, 1, 4],
  });
  assert.deepEqual([...be.read(x)], [NaN, 0, 4, 0]);
});

/** The first index where a and b differ as numbers (-0 = +0), or -1. */
function firstDifference(a: Float32Array, b: Float32Array): number {
  for (let i = 0; i < a.length; i++) {
    if (!(a[i] === b[i] || (Number.isNaN(a[i]) && Number.isNaN(b[i])))) {
      return i;
    }
  }
  return a.length === b.length ? -1 : a.length;
}

Deno.test(
  `ReLU on oneDNN gives the TypeScript kernel's values, and keeps NaN and maps -Inf to 0 as PyTorch does, forward and backward${skipped}`,
  { ignore: lib === null },
  () => {
    const be = new CpuBackend();
    // Above SMALL_OP (the threaded plan) and not a multiple of a vector.
    const n = 300_005;
    const input = values(n, -1, 1);
    input[7] = 0;
    input[8] = -0;
    const grads = values(n, -1, 1);
    const [x, y, dy, dx] = [be.alloc(n), be.alloc(n), be.alloc(n), be.alloc(n)];
    const relu = (data: Float32Array) => {
      be.write(x, data);
      be.reluForward({ x, y, length: n });
      return be.read(y);
    };
    const reluGrad = (out: Float32Array, g: Float32Array) => {
      be.write(y, out);
      be.write(dy, g);
      be.reluBackward({ y, dy, dx, length: n });
      return be.read(dx);
    };
    const ref = new Float32Array(n);
    ew.reluForward(input, ref, n);
    const out = relu(input);
    // The same bits: +0 for -0 and for every negative value.
    assert.deepEqual(
      new Int32Array(out.buffer).findIndex((b, i) =>
        b !== new Int32Array(ref.buffer)[i]
      ),
      -1,
    );
    const refGrad = new Float32Array(n);
    ew.reluBackward(ref, grads, refGrad, n);
    assert.equal(firstDifference(reluGrad(ref, grads), refGrad), -1);
    assert.ok(
      be.dnnlOps!.implementations().some(([key]) => key.startsWith("relu")),
    );

    // A value that is not finite, at the start, in the middle and at the
    // end, falls back to the kernel that keeps PyTorch's answers.
    for (const at of [0, n >> 1, n - 1]) {
      for (
        const [bad, want] of [[NaN, NaN], [-Infinity, 0], [Infinity, Infinity]]
      ) {
        const data = input.slice();
        data[at] = bad;
        const expected = ref.slice();
        expected[at] = want;
        assert.equal(
          firstDifference(relu(data), expected),
          -1,
          `${bad} at ${at}`,
        );
        // A NaN or infinite gradient where the output is 0 gives 0; where
        // it is positive it passes.
        for (const yAt of [0, 1]) {
          const outs = ref.slice();
          outs[at] = yAt;
          const g = grads.slice();
          g[at] = bad;
          const wantGrad = refGrad.slice();
          wantGrad[at] = yAt === 0 ? 0 : bad;
          assert.equal(
            firstDifference(reluGrad(outs, g), wantGrad),
            -1,
            `gradient ${bad} at ${at}, output ${yAt}`,
          );
        }
      }
    }
  },
);

Deno.test("ReLU's gradient is 0 where the output is 0, -0 or negative and passes where it is NaN of either sign, as PyTorch's, on every kernel", () => {
  const be = new CpuBackend();
  // A small run (the TypeScript kernel or oneDNN's one-thread plan) and
  // one above SMALL_OP (oneDNN's threaded plan where it is installed).
  for (const n of [8, 300_000]) {
    const out = new Float32Array(n).fill(1);
    const outBits = new Int32Array(out.buffer);
    outBits[0] = 0x7fc00000; // NaN
    outBits[1] = 0xffc00000 | 0; // NaN with the sign bit, x86's default
    outBits[2] = 0x80000000 | 0; // -0
    out[3] = 0;
    out[4] = -2;
    out[5] = Infinity;
    out[6] = 1e-45;
    const [y, dy, dx] = [be.alloc(n), be.alloc(n), be.alloc(n)];
    be.write(y, out);
    be.write(dy, new Float32Array(n).fill(-5));
    be.reluBackward({ y, dy, dx, length: n });
    // oneDNN writes -0 for a negative dy where y <= 0: the same number.
    const got = [...be.read(dx).subarray(0, 8)].map((v) => v + 0);
    assert.deepEqual(got, [-5, -5, 0, 0, 0, -5, -5, -5], `${n} elements`);
  }
});

Deno.test("a sum with its ReLU is relu(a + b) bit for bit, keeps NaN, and maps -Inf to 0 and an overflow to Inf", () => {
  const be = new CpuBackend();
  // Above SMALL_OP (oneDNN's threaded plan where it is installed).
  const n = 300_005;
  const [a0, b0] = [values(n, -1, 1), values(n, -1, 1)];
  const [a, b] = [be.alloc(n), be.alloc(n)];
  const sumRelu = (x: Float32Array, y: Float32Array) => {
    be.write(a, x);
    be.write(b, y);
    be.opTensor({
      op: "add",
      alpha1: 1,
      a,
      alpha2: 1,
      b,
      bShape: [1, 1, n],
      beta: 0,
      c: a,
      shape: [1, 1, n],
      relu: true,
    });
    return be.read(a);
  };
  const want = Float32Array.from(a0, (v, i) => Math.max(v + b0[i], 0) + 0);
  const bitsOf = (x: Float32Array) => new Int32Array(x.buffer);
  const got = sumRelu(a0, b0);
  assert.equal(
    bitsOf(got).findIndex((v, i) => v !== bitsOf(want)[i]),
    -1,
  );
  if (lib !== null) {
    assert.ok(
      be.dnnlOps!.implementations().some(([key]) => key.startsWith("add relu")),
    );
  }
  for (const at of [0, n >> 1, n - 1]) {
    for (
      const [x, y, expected] of [
        [NaN, 1, NaN],
        [1, NaN, NaN],
        [-Infinity, 1, 0],
        [3e38, 3e38, Infinity],
      ]
    ) {
      const [p, q] = [a0.slice(), b0.slice()];
      p[at] = x;
      q[at] = y;
      const w = want.slice();
      w[at] = expected;
      assert.equal(
        firstDifference(sumRelu(p, q), w),
        -1,
        `${x} + ${y} at ${at}`,
      );
    }
  }
});

Deno.test(
  `sums and means over the last dimension run on oneDNN's reduction and match a float64 reference${skipped}`,
  { ignore: lib === null },
  () => {
    const be = new CpuBackend();
    // Rows long enough for oneDNN, at two sizes: one thread and all.
    for (const [d0, d1, d2] of [[4, 16, 256], [8, 256, 300]]) {
      const n = d0 * d1 * d2;
      const data = values(n, -1, 1);
      const x = be.alloc(n);
      be.write(x, data);
      for (const alpha of [1, 1 / d2]) {
        const y = be.alloc(d0 * d1);
        be.reduceSum({
          alpha,
          x,
          shape: [d0, d1, d2],
          beta: 0,
          y,
          yShape: [d0, d1, 1],
        });
        const want = Array.from({ length: d0 * d1 }, (_, r) => {
          let sum = 0;
          for (let j = 0; j < d2; j++) sum += data[r * d2 + j];
          return alpha * sum;
        });
        assertClose(be.read(y), want, `${d0}x${d1}x${d2} alpha ${alpha}`);
      }
    }
    const kinds = be.dnnlOps!.implementations().filter(([key]) =>
      key.startsWith("row")
    );
    assert.equal(kinds.length, 4);
  },
);

Deno.test("MEC_KERNELS=ts keeps oneDNN out of batch norm and sums, and rejects other values", async () => {
  const backend = new URL("../cpu/backend.ts", import.meta.url).href;
  const code = `import { CpuBackend } from "${backend}";
    const be = new CpuBackend();
    const x = be.alloc(4);
    be.batchNormForwardInference({ x, y: x, scale: null, bias: null,
      estimatedMean: x, estimatedVariance: x,
      desc: { n: 1, c: 4, spatial: 1, eps: 1, momentum: 0 } });
    console.log(be.dnnlOps === null);`;
  assert.equal(
    (await runWith({ MEC_KERNELS: "ts" }, code)).stdout.trim(),
    "true",
  );
  const bad = await runWith({ MEC_KERNELS: "fast" }, code);
  assert.match(bad.stderr, /MEC_KERNELS must be dnnl or ts, got "fast"/);
  if (lib !== null) {
    assert.equal((await runWith({}, code)).stdout.trim(), "false");
  }
});

Deno.test(
  `oneDNN's batch norm gives the same bits on every call, where it splits a channel's sums between threads too${skipped}`,
  { ignore: lib === null },
  async () => {
    // On two threads oneDNN splits these shapes' sums across the batch
    // ([128, 16, 784] is the demo's first block): a thread count chosen
    // call by call would change the rounding from call to call.
    const ops = new URL("../cpu/dnnl_ops.ts", import.meta.url).href;
    const dnnl = new URL("../cpu/dnnl.ts", import.meta.url).href;
    const allocator = new URL("../cpu/allocator.ts", import.meta.url).href;
    const layout = new URL("../cpu/layout.ts", import.meta.url).href;
    const code = `import { DnnlOps } from "${ops}";
    import { tryDnnl } from "${dnnl}";
    import { Scratch } from "${allocator}";
    import { Layouts } from "${layout}";
    const scratch = new Scratch();
    const ops = new DnnlOps(tryDnnl(), (n) => scratch.get(n), new Layouts(tryDnnl()));
    let seed = 1;
    const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
    const same = [];
    for (const [n, c, spatial] of [[128, 16, 784], [64, 1, 5000]]) {
      const size = n * c * spatial;
      const x = Float32Array.from({ length: size }, () => 3 + rand());
      const dy = Float32Array.from({ length: size }, () => rand() - 0.5);
      const g = new Float32Array(c).fill(1.5), b = new Float32Array(c).fill(0.25);
      const d = { n, c, spatial, eps: 1e-5, momentum: 0.1 };
      const runs = [0, 1, 2].map(() => {
        const y = new Float32Array(size), m = new Float32Array(c);
        const s = new Float32Array(c), dx = new Float32Array(size);
        const dg = new Float32Array(c), db = new Float32Array(c);
        ops.batchNormForwardTraining(x, y, g, b, null, null, m, s, d);
        ops.batchNormBackward(x, dy, dx, g, true, dg, db, m, s, d);
        return [y, m, s, dx, dg, db];
      });
      same.push(runs.slice(1).every((r) =>
        r.every((a, i) => a.every((v, j) => Object.is(v, runs[0][i][j])))
      ));
    }
    console.log(same.join(" "));`;
    assert.equal(
      (await runWith({ MEC_THREADS: "2" }, code)).stdout.trim(),
      "true true",
    );
  },
);

Deno.test(
  `oneDNN's max pooling equals the TypeScript kernel bit for bit, ties and all${skipped}`,
  { ignore: lib === null },
  () => {
    const scratch = new Scratch();
    const ops = new DnnlOps(lib!, (n) => scratch.get(n), new Layouts(lib!));
    for (
      const [h, k, stride, pad] of [[12, 3, 2, 1], [9, 3, 2, 1], [8, 2, 2, 0]]
    ) {
      const o = Math.floor((h + 2 * pad - k) / stride) + 1;
      const d = {
        n: 2,
        c: 5,
        h,
        w: h,
        kh: k,
        kw: k,
        strideH: stride,
        strideW: stride,
        padH: pad,
        padW: pad,
        oh: o,
        ow: o,
      };
      // After a ReLU half the values are 0: windows full of ties.
      const x = values(2 * 5 * h * h, -1, 1).map((v) => Math.max(v, 0));
      const dy = values(2 * 5 * o * o, -1, 1);
      const [y, yRef] = [0, 1].map(() => new Float32Array(dy.length));
      assert.equal(ops.maxPoolForward(x, y, d, null), null);
      pool.maxPoolForward(x, yRef, d);
      assert.deepEqual(y, yRef);
      const [dx, dxRef] = [0, 1].map(() => new Float32Array(x.length));
      assert.equal(ops.maxPoolBackward(x, dy, dx, d, null, null), null);
      pool.maxPoolBackward(x, yRef, dy, dxRef, d);
      // Each gradient goes to the same element; where windows overlap,
      // two are summed in either order.
      assert.deepEqual(dx.map((v) => +(v !== 0)), dxRef.map((v) => +(v !== 0)));
      assertClose(dx, dxRef, "dx", { rtol: 1e-6, atol: 1e-7 });
    }
  },
);

Deno.test("max pooling keeps NaN and -Inf as PyTorch does, on oneDNN's machines too", () => {
  const be = new CpuBackend();
  const d = {
    n: 1,
    c: 1,
    h: 2,
    w: 4,
    kh: 2,
    kw: 2,
    strideH: 2,
    strideW: 2,
    padH: 0,
    padW: 0,
    oh: 1,
    ow: 2,
  };
  const x = be.alloc(8);
  // A NaN after the window's maximum; a window of -Inf alone.
  be.write(
    x,
    Float32Array.of(5, NaN, -Infinity, -Infinity, 1, 2, -Infinity, -Infinity),
  );
  const y = be.alloc(2);
  be.maxPoolForward({ x, y, desc: d });
  assert.deepEqual([...be.read(y)], [NaN, -Infinity]);
  const dy = be.alloc(2);
  be.write(dy, Float32Array.of(1, 2));
  const dx = be.alloc(8);
  be.maxPoolBackward({ x, y, dy, dx, desc: d });
  assert.deepEqual([...be.read(dx)], [0, 1, 2, 0, 0, 0, 0, 0]);
});

Deno.test("a NaN with its sign bit set takes a max pooling window too, and the last NaN wins, as in PyTorch", () => {
  const be = new CpuBackend();
  const d = {
    n: 1,
    c: 1,
    h: 1,
    w: 4,
    kh: 1,
    kw: 4,
    strideH: 1,
    strideW: 1,
    padH: 0,
    padW: 0,
    oh: 1,
    ow: 1,
  };
  const data = Float32Array.of(1, NaN, 5, NaN);
  const raw = new Int32Array(data.buffer);
  raw[1] = 0xffc00000 | 0; // x86's default NaN
  raw[3] = 0xffc00001 | 0;
  const x = be.alloc(4);
  be.write(x, data);
  const y = be.alloc(1);
  be.maxPoolForward({ x, y, desc: d });
  assert.equal(new Int32Array(be.read(y).buffer)[0], 0xffc00001 | 0);
  const dy = be.alloc(1);
  be.write(dy, Float32Array.of(3));
  const dx = be.alloc(4);
  be.maxPoolBackward({ x, y, dy, dx, desc: d });
  assert.deepEqual([...be.read(dx)], [0, 0, 0, 3]);
});

Deno.test(
  `oneDNN's small batch norms, sums and poolings run on one OpenMP thread, the large ones on all, and the count is restored${skipped}`,
  { ignore: lib === null },
  async () => {
    // In a child with two threads, so the choice is visible on any machine.
    const url = (p: string) => new URL(p, import.meta.url).href;
    const code = `import { DnnlOps } from "${url("../cpu/dnnl_ops.ts")}";
    import { tryDnnl } from "${url("../cpu/dnnl.ts")}";
    import { Scratch } from "${url("../cpu/allocator.ts")}";
    import { Layouts } from "${url("../cpu/layout.ts")}";
    import { SMALL_OP, singleThreaded } from "${url("../cpu/threads.ts")}";
    const gomp = Deno.dlopen("libgomp.so.1", {
      omp_get_max_threads: { parameters: [], result: "i32" },
    }).symbols;
    const scratch = new Scratch();
    const ops = new DnnlOps(tryDnnl(), (n) => scratch.get(n), new Layouts(tryDnnl()));
    const before = gomp.omp_get_max_threads();
    const inside = singleThreaded(() => gomp.omp_get_max_threads());
    for (const size of [SMALL_OP, SMALL_OP + 16]) {
      const c = 16, spatial = size / c;
      const x = new Float32Array(size).fill(1), y = new Float32Array(size);
      const m = new Float32Array(c), s = new Float32Array(c);
      ops.batchNormForwardTraining(x, y, null, null, null, null, m, s, { n: 1, c, spatial, eps: 1e-5, momentum: 0.1 });
      ops.add(x, x, y, size);
    }
    // 16 x 128 x 128 is SMALL_OP elements, 16 x 130 x 130 more.
    for (const side of [128, 130]) {
      const x = new Float32Array(16 * side * side), o = side / 2;
      const d = { n: 1, c: 16, h: side, w: side, kh: 2, kw: 2, strideH: 2, strideW: 2, padH: 0, padW: 0, oh: o, ow: o };
      ops.maxPoolForward(x, new Float32Array(16 * o * o), d, null);
    }
    const kinds = ops.implementations().map(([key, impl]) =>
      key.split(" ")[0] + ": " + impl.endsWith(", 1 thread"));
    console.log(JSON.stringify({ before, inside, after: gomp.omp_get_max_threads(), kinds }));`;
    const out = JSON.parse(
      (await runWith({ MEC_THREADS: "2" }, code)).stdout.trim(),
    );
    assert.deepEqual(
      { before: out.before, inside: out.inside, after: out.after },
      { before: 2, inside: 1, after: 2 },
    );
    // Built in this order: batch norm and sum of SMALL_OP elements, then
    // of 16 more; max pooling's forward and backward, small, then large.
    assert.deepEqual(out.kinds, [
      "bn: true",
      "add: true",
      "bn: false",
      "add: false",
      "max: true",
      "max: true",
      "max: false",
      "max: false",
    ]);
  },
);

Deno.test(
  `large SGD steps and moving averages run on oneDNN and match a float64 reference over several steps${skipped}`,
  { ignore: lib === null },
  () => {
    const be = new CpuBackend();
    const n = 70_000; // past OPTIM_ON_DNNL, and many OpenMP chunks
    const kinds: [string, Omit<SgdStep, "firstStep">][] = [
      ["momentum 0.9, weight decay 1e-4, dampening 0.1", {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.1,
        weightDecay: 1e-4,
        nesterov: false,
      }],
      ["momentum 0.9, no weight decay", {
        lr: 0.3,
        momentum: 0.9,
        dampening: 0,
        weightDecay: 0,
        nesterov: false,
      }],
    ];
    for (const [what, h] of kinds) {
      const p0 = values(n, -1, 1);
      const param = be.alloc(n);
      be.write(param, p0);
      const buf = be.alloc(n);
      be.write(buf, new Float32Array(n).fill(NaN)); // the first step must not read it
      const p = Float64Array.from(p0);
      const b = new Float64Array(n);
      for (let step = 0; step < 4; step++) {
        const g = values(n, -0.1, 0.1);
        const grad = be.alloc(n);
        be.write(grad, g);
        // A learning rate and weight decay that move each step, as
        // schedules' do.
        const lr = h.lr * (1 - 0.2 * step);
        const weightDecay = h.weightDecay * (1 + step);
        be.sgdUpdateMany({
          params: [param],
          grads: [grad],
          momentumBuffers: [buf],
          lengths: [n],
          step: { ...h, lr, weightDecay, firstStep: step === 0 },
        });
        be.free(grad);
        for (let i = 0; i < n; i++) {
          const d = g[i] + weightDecay * p[i];
          b[i] = step === 0 ? d : h.momentum * b[i] + (1 - h.dampening) * d;
          p[i] -= lr * b[i];
        }
      }
      assertClose(be.read(buf), b, `${what}: buffer`);
      assertClose(be.read(param), p, `${what}: parameters`);
    }
    const [x0, y0] = [values(n, -1, 1), values(n, -1, 1)];
    const [x, y] = [be.alloc(n), be.alloc(n)];
    be.write(x, x0);
    be.write(y, y0);
    const want = Float64Array.from(y0);
    for (const m of [0.99, 0.996, 1, 0.5]) {
      be.axpbyMany({ alpha: 1 - m, beta: m, xs: [x], ys: [y], lengths: [n] });
      for (let i = 0; i < n; i++) want[i] = m * want[i] + (1 - m) * x0[i];
    }
    assertClose(be.read(y), want, "moving average");
    const ran = be.dnnlOps!.implementations().map(([key]) => key.split(" ")[0]);
    for (const kind of ["momentum", "axpy", "axpby"]) {
      assert.ok(ran.includes(kind), `no ${kind} plan on oneDNN: ${ran}`);
    }
    // The schedules' values are given at run time: one plan per case (the
    // first step and later ones, with and without weight decay; the first
    // without is a copy), not one per step.
    const momentum = be.dnnlOps!.implementations().filter(([key]) =>
      key.startsWith("momentum")
    );
    assert.equal(momentum.length, 3, `${momentum}`);
  },
);

Deno.test(
  `allFinite finds a NaN or an infinity in any row or the tail, and large ReLUs keep them${skipped}`,
  { ignore: lib === null },
  () => {
    const scratch = new Scratch();
    const ops = new DnnlOps(lib!, (n) => scratch.get(n), new Layouts(lib!));
    // Three rows of 4,096 and a tail of 5.
    const n = 3 * 4096 + 5;
    const x = values(n, -2, 2);
    assert.ok(ops.allFinite(x, n), "all finite");
    for (const at of [0, 4095, 4096, 2 * 4096 + 17, n - 5, n - 1]) {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const y = x.slice();
        y[at] = bad;
        assert.ok(!ops.allFinite(y, n), `${bad} at ${at}`);
        // Only the first `length` values count.
        assert.ok(ops.allFinite(y, at), `${bad} at ${at}, length ${at}`);
      }
    }
    // Through the backend, where a large buffer is checked on oneDNN: the
    // NaN and -Inf keep PyTorch's ReLU (NaN stays, -Inf gives 0).
    const be = new CpuBackend();
    const size = (1 << 20) + 7;
    const input = values(size, -2, 2);
    input[12345] = NaN;
    input[size - 2] = -Infinity;
    const [xb, yb] = [be.alloc(size), be.alloc(size)];
    be.write(xb, input);
    be.reluForward({ x: xb, y: yb, length: size });
    const want = new Float32Array(size);
    ew.reluForward(input, want, size);
    const got = be.read(yb);
    assert.ok(Number.isNaN(got[12345]) && got[size - 2] === 0);
    assert.equal(firstDifference(got, want), -1);
    const ran = be.dnnlOps!.implementations().map(([key]) => key);
    assert.ok(ran.some((k) => k.startsWith("row sums")), `${ran}`);
  },
);

Deno.test(
  `gemm on oneDNN matches float64 for every transpose, leading dimensions and beta, its transposed route too, and the backend routes large products to it${skipped}`,
  { ignore: lib === null },
  () => {
    const scratch = new Scratch();
    const ops = new DnnlOps(lib!, (n) => scratch.get(n), new Layouts(lib!));
    // m 16 takes the transposed route for A Bᵀ, m 80 the direct one.
    for (const [m, n, k] of [[16, 40, 24], [80, 33, 17]]) {
      for (const [transA, transB] of [[0, 0], [0, 1], [1, 0], [1, 1]]) {
        for (const beta of [0, 0.5]) {
          // Each matrix stored with 3 spare columns.
          const [ra, ca] = transA ? [k, m] : [m, k];
          const [rb, cb] = transB ? [n, k] : [k, n];
          const [lda, ldb, ldc] = [ca + 3, cb + 3, n + 3];
          const a = values(ra * lda, -1, 1);
          const b = values(rb * ldb, -1, 1);
          const c0 = values(m * ldc, -1, 1);
          // beta 0 overwrites C: what it held, even NaN, is not read.
          // The spare columns hold numbers, which must stay as they are.
          for (let i = 0; beta === 0 && i < m; i++) {
            c0.fill(NaN, i * ldc, i * ldc + n);
          }
          const c = c0.slice();
          const alpha = 1.5;
          ops.gemm(
            !!transA,
            !!transB,
            m,
            n,
            k,
            alpha,
            a,
            lda,
            b,
            ldb,
            beta,
            c,
            ldc,
          );
          const want = Float64Array.from(c0);
          for (let i = 0; i < m; i++) {
            for (let j = 0; j < n; j++) {
              let s = 0;
              for (let p = 0; p < k; p++) {
                const x = transA ? a[p * lda + i] : a[i * lda + p];
                const y = transB ? b[j * ldb + p] : b[p * ldb + j];
                s += x * y;
              }
              want[i * ldc + j] = alpha * s +
                (beta === 0 ? 0 : beta * c0[i * ldc + j]);
            }
          }
          const what = `m ${m} ${transA ? "T" : "N"}${
            transB ? "T" : "N"
          } beta ${beta}`;
          assertClose(c, want, what);
        }
      }
    }
    // A step-sized product through the backend (a linear layer's forward
    // at batch 16) against float64.
    const be = new CpuBackend();
    const [m, n, k] = [16, 1024, 1024];
    const [xa, wa] = [values(m * k, -1, 1), values(n * k, -1, 1)];
    const [x, w, y] = [be.alloc(m * k), be.alloc(n * k), be.alloc(m * n)];
    be.write(x, xa);
    be.write(w, wa);
    be.gemm({
      transA: false,
      transB: true,
      m,
      n,
      k,
      alpha: 1,
      a: x,
      aOffset: 0,
      lda: k,
      b: w,
      bOffset: 0,
      ldb: k,
      beta: 0,
      c: y,
      cOffset: 0,
      ldc: n,
    });
    const want = new Float64Array(m * n);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += xa[i * k + p] * wa[j * k + p];
        want[i * n + j] = s;
      }
    }
    assertClose(be.read(y), want, "backend gemm");
    assert.ok(be.dnnlOps!.bytes >= 4 * m * n, "the transposed route ran");
  },
);

Deno.test(
  `a large axpby with beta near 0 stays exact, where oneDNN's alpha / beta form would overflow${skipped}`,
  { ignore: lib === null },
  () => {
    const be = new CpuBackend();
    const n = 8192;
    const [x, y] = [be.alloc(n), be.alloc(n)];
    be.write(x, new Float32Array(n).fill(1e10));
    be.write(y, new Float32Array(n).fill(2));
    be.axpby({ n, alpha: 1, x, beta: 1e-30, y });
    // 1e10 + 2e-30 is 1e10 in float32; (1 / 1e-30) 1e10 is infinite.
    assert.deepEqual([...new Set(be.read(y))], [Math.fround(1e10)]);
  },
);
