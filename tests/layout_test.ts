import type { DataBuffer } from "../nn/backend.ts";
import { CpuBackend, type CpuBuffer } from "../cpu/backend.ts";
import type { BlockedLayout } from "../cpu/layout.ts";
import { tryDnnl } from "../cpu/dnnl.ts";
import {
  batchNorm,
  conv2d,
  device,
  Generator,
  maxPool2d,
  mul,
  randn,
  relu,
  sum,
  type Tensor,
  tensor,
} from "../mod.ts";
import { assert } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import { convShape } from "./conv_desc.ts";
import * as pool from "../cpu/pool.ts";
import { poolDesc } from "../nn/ops/pool.ts";

const lib = tryDnnl();
const skipped = lib === null
  ? " (skipped: oneDNN, libdnnl.so.2, is not installed)"
  : "";
const gen = new Generator(3);

/** A residual block's ops on one backend; `plain` reads back every result. */
function block(be: CpuBackend, plain: boolean) {
  const d1 = convShape(2, 16, [9, 9], 32, [3, 3], [1, 1], [1, 1]);
  const d2 = convShape(2, 32, [9, 9], 32, [1, 1], [1, 1], [0, 0]);
  const size = 2 * 32 * 81;
  const g = new Generator(7);
  const buffer = (length: number, low = -1, high = 1) => {
    const b = be.alloc(length);
    be.write(b, Float32Array.from(randomValues(g, length, low, high)));
    return b;
  };
  // The backend's own round trip: read (plain) and write it back.
  const seen: DataBuffer[] = [];
  const layouts: (BlockedLayout | null)[] = [];
  const done = (b: DataBuffer) => {
    if (plain) be.write(b, be.read(b));
    seen.push(b);
    layouts.push((b as CpuBuffer).layout);
    return b;
  };
  const x = buffer(2 * 16 * 81);
  const [w1, w2] = [buffer(32 * 16 * 9), buffer(32 * 32)];
  const [gamma, beta] = [buffer(32, 0.5, 1.5), buffer(32)];
  const [mean, invStd] = [be.alloc(32), be.alloc(32)];
  const bn = { n: 2, c: 32, spatial: 81, eps: 1e-5, momentum: 0.1 };

  const y1 = be.alloc(size);
  be.conv2dForward({ x, w: w1, y: y1, desc: d1 });
  done(y1);
  const z = be.alloc(size);
  be.batchNormForwardTraining({
    x: y1,
    y: z,
    scale: gamma,
    bias: beta,
    runningMean: null,
    runningVar: null,
    saveMean: mean,
    saveInvStd: invStd,
    desc: bn,
  });
  done(z);
  be.reluForward({ x: z, y: z, length: size });
  done(z);
  // The stem's max pooling, on z, with a blocked gradient from a 1x1
  // convolution of its output.
  const pd = {
    n: 2,
    c: 32,
    h: 9,
    w: 9,
    kh: 3,
    kw: 3,
    strideH: 2,
    strideW: 2,
    padH: 1,
    padW: 1,
    oh: 5,
    ow: 5,
  };
  const pooled = be.alloc(2 * 32 * 25);
  be.maxPoolForward({ x: z, y: pooled, desc: pd });
  done(pooled);
  const q = be.alloc(2 * 32 * 25);
  const d3 = convShape(2, 32, [5, 5], 32, [1, 1], [1, 1], [0, 0]);
  be.conv2dForward({ x: pooled, w: w2, y: q, desc: d3 });
  done(q);
  const dz2 = be.alloc(size);
  be.maxPoolBackward({ x: z, y: pooled, dy: q, dx: dz2, desc: pd });
  done(dz2);
  const y2 = be.alloc(size);
  be.conv2dForward({ x: z, w: w2, y: y2, desc: d2 });
  done(y2);
  const shape = [1, 1, size] as const;
  be.opTensor({
    op: "add",
    alpha1: 1,
    a: y2,
    alpha2: 1,
    b: z,
    bShape: shape,
    beta: 0,
    c: y2,
    shape,
  });
  be.reluForward({ x: y2, y: y2, length: size });
  done(y2);
  // Backward, from a gradient of y2 that is plain (as from a loss).
  const dy = buffer(size);
  const ds = be.alloc(size);
  be.reluBackward({ y: y2, dy, dx: ds, length: size });
  done(ds);
  const dz = be.alloc(size);
  be.conv2dBackwardData({ dy: ds, w: w2, dx: dz, desc: d2 });
  done(dz);
  be.axpby({ n: size, alpha: 1, x: ds, beta: 1, y: dz });
  done(dz);
  be.reluBackward({ y: z, dy: dz, dx: dz, length: size });
  done(dz);
  const dy1 = be.alloc(size);
  const [dGamma, dBeta] = [be.alloc(32), be.alloc(32)];
  be.batchNormBackward({
    x: y1,
    dy: dz,
    dx: dy1,
    scale: gamma,
    dScale: dGamma,
    dBias: dBeta,
    saveMean: mean,
    saveInvStd: invStd,
    desc: bn,
  });
  [dy1, dGamma, dBeta].forEach(done);
  const dx = be.alloc(2 * 16 * 81);
  be.conv2dBackwardData({ dy: dy1, w: w1, dx, desc: d1 });
  done(dx);
  const dw1 = be.alloc(32 * 16 * 9);
  be.conv2dBackwardFilter({ x, dy: dy1, dw: dw1, desc: d1 });
  done(dw1);
  const dw2 = be.alloc(32 * 32);
  be.conv2dBackwardFilter({ x: z, dy: ds, dw: dw2, desc: d2 });
  done(dw2);
  return { seen, layouts };
}

Deno.test(
  `a residual block's ops in oneDNN's blocked layout give the plain layout's results${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    const be = new CpuBackend();
    const { seen: blocked, layouts } = block(be, false);
    // The path under test is taken: the convolutions' outputs (0, 4, 6,
    // 9, 15), the batch norm's (1), the ReLU's (2), the max pooling's,
    // forward and backward (3, 5), and the sum's (7) were left blocked.
    // The plain gradient from outside is rewritten in the blocked layout
    // of the activation it meets, so the ReLU's backward (8) and all that
    // follows it (10, 11, 12) stay blocked; the weights' gradients (16,
    // 17) are always plain.
    for (const i of [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15]) {
      assert.ok(layouts[i] !== null, `result ${i} blocked`);
    }
    for (const i of [16, 17]) {
      assert.equal(layouts[i], null, `result ${i} plain`);
    }
    const reference = block(be, true).seen;
    for (const [i, b] of blocked.entries()) {
      // Batch norm's blocked kernel sums in another order: float32 rounding.
      assertClose(be.read(b), be.read(reference[i]), `result ${i}`, {
        rtol: 1e-4,
        atol: 1e-5,
      });
      assert.equal((b as CpuBuffer).layout, null, "read leaves it plain");
    }
  },
);

Deno.test(
  `a blocked buffer reads, writes in part and fills as plain NCHW${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    const be = new CpuBackend();
    const d = convShape(1, 16, [5, 5], 16, [1, 1], [1, 1], [0, 0]);
    const x = be.alloc(400);
    const w = be.alloc(256);
    // The identity: y = x, so its plain reading is known.
    const eye = new Float32Array(256);
    for (let i = 0; i < 16; i++) eye[i * 17] = 1;
    be.write(w, eye);
    const values = Float32Array.from(randomValues(gen, 400));
    be.write(x, values);
    const run = () => {
      const y = be.alloc(400);
      be.conv2dForward({ x, w, y, desc: d });
      assert.ok((y as CpuBuffer).layout !== null);
      return y;
    };
    assert.deepEqual(be.read(run()), values);
    // Element 30 is channel 1, row 1, column 0 in NCHW.
    assert.deepEqual(be.read(run(), 30, 2), values.slice(30, 32));
    const y = run();
    be.write(y, Float32Array.of(7, 8), 30);
    const want = values.slice();
    want.set([7, 8], 30);
    assert.deepEqual(be.read(y), want);
    const z = run();
    be.fill({ y: z, value: 0, offset: 25, count: 25 });
    want.set(values);
    want.fill(0, 25, 50);
    assert.deepEqual(be.read(z), want);
    const v = run();
    be.fill({ y: v, value: 2 });
    assert.equal((v as CpuBuffer).layout, null);
    assert.deepEqual(be.read(v), new Float32Array(400).fill(2));
    // A plain op (a channel broadcast) on a blocked buffer sees NCHW.
    const u = run();
    const perChannel = be.alloc(16);
    be.write(perChannel, Float32Array.from({ length: 16 }, (_, c) => c));
    be.opTensor({
      op: "add",
      alpha1: 1,
      a: u,
      alpha2: 1,
      b: perChannel,
      bShape: [1, 16, 1],
      beta: 0,
      c: u,
      shape: [1, 16, 25],
    });
    assert.deepEqual(
      be.read(u),
      Float32Array.from(values, (v, i) => v + Math.floor(i / 25)),
    );
  },
);

Deno.test(
  `batch norm with its ReLU on blocked data equals batch norm then ReLU, and keeps a NaN${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    const x = randn([2, 16, 6, 6], new Generator(1));
    const w = randn([16, 16, 3, 3], new Generator(2));
    const gamma = randn([16], new Generator(3));
    const beta = randn([16], new Generator(4));
    const norm = (t: Tensor, relu: boolean) =>
      batchNorm(t, { weight: gamma, bias: beta, training: true, relu });
    const y = conv2d(x, w, null, { padding: 1 });
    assert.ok((y.buffer as CpuBuffer).layout !== null, "the path under test");
    const fused = norm(y, true).toArray();
    const apart = relu(norm(y, false)).toArray();
    assertClose(fused, apart, "fused", { rtol: 1e-6, atol: 1e-6 });
    // A NaN in the input makes every output of its channel NaN, as PyTorch's
    // batch norm and ReLU do; oneDNN's ReLU alone would make them 0.
    const bad = x.toArray().slice();
    bad[5] = NaN;
    const yBad = conv2d(tensor(bad, x.shape), w, null, { padding: 1 });
    const out = norm(yBad, true).toArray();
    assert.ok(out.every((v) => Number.isNaN(v)), "all NaN");
    // A NaN gamma does the same to its channel alone.
    const g = gamma.toArray().slice();
    g[3] = NaN;
    const one = batchNorm(y, {
      weight: tensor(g, [16]),
      bias: beta,
      training: true,
      relu: true,
    }).toArray();
    const plane = 36;
    for (let n = 0; n < 2; n++) {
      for (let ch = 0; ch < 16; ch++) {
        const part = one.slice(
          (n * 16 + ch) * plane,
          (n * 16 + ch + 1) * plane,
        );
        assert.equal(
          part.every((v) => Number.isNaN(v)),
          ch === 3,
          `channel ${ch}`,
        );
      }
    }
  },
);

Deno.test(
  `batch norm + ReLU's fused backward gives batch norm then ReLU's gradients, also when its input was made plain in between${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    const g = new Generator(8);
    const x = randn([4, 16, 8, 8], g, { requiresGrad: true });
    const w = randn([16, 16, 3, 3], g, { requiresGrad: true });
    const gamma = randn([16], g, { requiresGrad: true });
    const beta = randn([16], g, { requiresGrad: true });
    const weights = randn([4, 16, 8, 8], g);
    const gradients = (fused: boolean, readBetween: boolean) => {
      const y = conv2d(x, w, null, { padding: 1 });
      assert.ok((y.buffer as CpuBuffer).layout !== null, "the path under test");
      const opts = { weight: gamma, bias: beta, training: true };
      const out = fused
        ? batchNorm(y, { ...opts, relu: true })
        : relu(batchNorm(y, opts));
      // Reading the saved input back makes it plain in place.
      if (readBetween) y.toArray();
      sum(mul(out, weights)).backward();
      const grads = [x, w, gamma, beta].map((t) => {
        const a = t.grad!.toArray();
        t.grad = null;
        return a;
      });
      return grads;
    };
    const want = gradients(false, false);
    for (const readBetween of [false, true]) {
      const got = gradients(true, readBetween);
      ["x", "w", "gamma", "beta"].forEach((name, i) =>
        assertClose(got[i], want[i], `${name}, read between: ${readBetween}`)
      );
    }
    const ops = (device("cpu") as CpuBackend).dnnlOps!;
    assert.ok(
      ops.implementations().some(([key]) =>
        key.startsWith("bn backward") && key.includes("relu")
      ),
      "the fused backward ran",
    );
  },
);

Deno.test(
  `max pooling's backward from the maxima its forward kept equals the TypeScript kernel's, on blocked and plain data and with a NaN${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    const g = new Generator(9);
    const w = randn([16, 16, 1, 1], g);
    const weights = randn([2, 16, 5, 5], g);
    const opts = { kernelSize: 3, stride: 2, padding: 1 };
    const desc = poolDesc([2, 16, 10, 10], opts);
    for (const blocked of [true, false]) {
      for (const poison of [false, true]) {
        for (const readBetween of [false, true]) {
          const base = randn([2, 16, 10, 10], g).toArray();
          if (poison) base[17] = NaN;
          const x = tensor(base, [2, 16, 10, 10], { requiresGrad: true });
          // A convolution's output is blocked; relu() leaves ties at 0.
          const before = (t: Tensor) =>
            relu(blocked ? conv2d(t, w, null) : mul(t, t));
          const input = before(x);
          assert.equal(
            (input.buffer as CpuBuffer).layout !== null,
            blocked,
            "the path under test",
          );
          const y = maxPool2d(input, opts);
          // Reading the saved input back makes it plain in place.
          if (readBetween) input.toArray();
          sum(mul(y, weights)).backward();
          const got = x.grad!.toArray();
          // The reference: the TypeScript kernels on the same values, then
          // autograd through the ReLU and the op before it.
          const xv = tensor(base, x.shape, { requiresGrad: true });
          const seen = before(xv);
          const values = seen.toArray();
          const yRef = new Float32Array(2 * 16 * 25);
          pool.maxPoolForward(values, yRef, desc);
          const dIn = new Float32Array(values.length);
          pool.maxPoolBackward(values, yRef, weights.toArray(), dIn, desc);
          sum(mul(seen, tensor(dIn, x.shape))).backward();
          const want = xv.grad!.toArray();
          const what =
            `blocked ${blocked}, NaN ${poison}, read between ${readBetween}`;
          // x * x's gradient at the NaN is NaN; the same NaNs on both sides.
          const nan = (a: Float32Array) => a.map((v) => +Number.isNaN(v));
          assert.deepEqual(nan(got), nan(want), what);
          const finite = (a: Float32Array) =>
            a.map((v) => Number.isNaN(v) ? 0 : v);
          assertClose(finite(got), finite(want), what);
        }
      }
    }
  },
);

Deno.test(
  `a blocked tensor seen through a reshaping view is normalised as the view says${skipped}`,
  {
    ignore: lib === null,
  },
  () => {
    // [2, 16, 1, 1] out of a convolution, then flattened to [2, 16] for a
    // BatchNorm1d, and to [1, 16, 2, 1] for another batch norm: the layout's
    // dimensions fit the first and not the second.
    const x = randn([2, 16, 3, 3], new Generator(5));
    const w = randn([16, 16, 3, 3], new Generator(6));
    const y = conv2d(x, w, null);
    assert.ok((y.buffer as CpuBuffer).layout !== null, "the path under test");
    const plain = y.toArray();
    const want = (t: Tensor) => batchNorm(t, { training: true }).toArray();
    const y2 = conv2d(x, w, null);
    const flat = want(y2.reshape(2, 16));
    assertClose(flat, want(tensor(plain, [2, 16])), "[2, 16]");
    const y3 = conv2d(x, w, null);
    const odd = want(y3.reshape(1, 16, 2, 1));
    assertClose(odd, want(tensor(plain, [1, 16, 2, 1])), "[1, 16, 2, 1]");
  },
);
