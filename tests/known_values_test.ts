/**
 * What the CPU backend knows of a buffer's values (no NaN, no -Inf), which
 * lets oneDNN's ReLU, residual sum and max pooling skip their NaN check:
 * it must hold exactly while the values do, or a NaN would vanish.
 */

import type { BatchNormDesc, DataBuffer } from "../nn/backend.ts";
import * as bn from "../cpu/batchnorm.ts";
import { tryDnnl } from "../cpu/dnnl.ts";
import { CpuBackend, type CpuBuffer } from "../cpu/backend.ts";
import { convDesc } from "../nn/ops/conv.ts";
import { Generator } from "../mod.ts";
import { assert } from "./assert.ts";
import { randomValues } from "./check.ts";

const lib = tryDnnl();
const skipped = lib === null
  ? " (skipped: oneDNN, libdnnl.so.2, is not installed)"
  : "";
const gen = new Generator(11);
const values = (n: number, low: number, high: number) =>
  Float32Array.from(randomValues(gen, n, low, high));
const known = (b: DataBuffer) => (b as CpuBuffer).noNaNOrNegInf;

Deno.test("a batch norm's statistics bound its output: never finite by that test when it is not", () => {
  const d: BatchNormDesc = { n: 3, c: 2, spatial: 5, eps: 1e-5, momentum: 0.1 };
  const size = d.n * d.c * d.spatial;
  const [mean, invStd] = [new Float32Array(d.c), new Float32Array(d.c)];
  let provedFinite = 0;
  let overflowed = 0;
  // Data and gammas over the whole float32 range: whenever the test says
  // finite, every output is.
  for (const scale of [1e-30, 1e-3, 1, 1e3, 1e15, 1e18, 1e19, 1e25]) {
    for (const g of [0, 1, 1e10, 1e20, 1e30, 1e36, 3e38]) {
      const x = values(size, -1, 1).map((v) => v * scale + scale);
      const y = new Float32Array(size);
      const gamma = Float32Array.of(g, -g);
      const beta = Float32Array.of(1, -1);
      bn.batchNormForwardTraining(
        x,
        y,
        gamma,
        beta,
        null,
        null,
        mean,
        invStd,
        d,
      );
      const finite = y.every(Number.isFinite);
      const proved = bn.trainingOutputFinite(mean, invStd, gamma, beta, d);
      assert.ok(!proved || finite, `scale ${scale}, gamma ${g}`);
      if (proved) provedFinite++;
      if (!finite) overflowed++;
    }
  }
  // The test is not vacuous: it proves most cases and some do overflow.
  assert.ok(provedFinite >= 30, `${provedFinite}`);
  assert.ok(overflowed > 0);
  const ok = (m: number, s: number, g: number, b: number) =>
    bn.trainingOutputFinite(
      Float32Array.of(m, 0),
      Float32Array.of(s, 1),
      Float32Array.of(g, 1),
      Float32Array.of(b, 0),
      d,
    );
  assert.ok(ok(0.5, 2, 1, 0));
  for (const bad of [NaN, Infinity, -Infinity]) {
    assert.ok(!ok(bad, 2, 1, 0), `mean ${bad}`);
    assert.ok(!ok(0.5, bad, 1, 0), `invStd ${bad}`);
    assert.ok(!ok(0.5, 2, bad, 0), `gamma ${bad}`);
    assert.ok(!ok(0.5, 2, 1, bad), `beta ${bad}`);
  }
  // A zero invStd (an infinite variance) proves nothing either.
  assert.ok(!ok(0.5, 0, 1, 0));
});

Deno.test(
  `a ReLU's output is known clean through reads, forgotten by a write, and a NaN written later survives the next ReLU${skipped}`,
  { ignore: lib === null },
  () => {
    const be = new CpuBackend();
    const n = 1 * 4 * 6 * 6;
    const [x, y, w, out] = [
      be.alloc(n),
      be.alloc(n),
      be.alloc(144),
      be.alloc(n),
    ];
    be.write(x, values(n, -1, 1));
    be.write(w, values(144, -1, 1));
    assert.ok(!known(x), "a written buffer is not known");
    be.reluForward({ x, y, length: n });
    assert.ok(known(y), "oneDNN's ReLU of checked values");
    // Reads keep it: a convolution, a copy out of it, a read back.
    const desc = convDesc([1, 4, 6, 6], [4, 4, 3, 3], { padding: 1 });
    for (let i = 0; i < 3; i++) be.conv2dForward({ x: y, w, y: out, desc });
    be.read(y);
    be.copy({ src: y, srcOffset: 0, dst: x, dstOffset: 0, length: n });
    assert.ok(known(y), "after reads");
    assert.ok(!known(x), "a copy's destination");
    // A write forgets it, and the NaN it wrote comes through a ReLU.
    const dirty = be.read(y);
    dirty[7] = NaN;
    dirty[8] = -Infinity;
    be.write(y, dirty);
    assert.ok(!known(y), "after a write");
    be.reluForward({ x: y, y: out, length: n });
    const got = be.read(out);
    assert.ok(Number.isNaN(got[7]) && got[8] === 0, `${got[7]}, ${got[8]}`);
    assert.ok(!known(out), "the TypeScript ReLU's output, NaN and all");
  },
);

/** A batch norm's training forward through the backend, with γ and β. */
function batchNorm(
  be: CpuBackend,
  x: DataBuffer,
  d: BatchNormDesc,
  gamma: number,
  relu = false,
): DataBuffer {
  const y = be.alloc(x.length);
  const [scale, bias] = [be.alloc(d.c), be.alloc(d.c)];
  be.write(scale, new Float32Array(d.c).fill(gamma));
  be.write(bias, new Float32Array(d.c).fill(0.25));
  be.batchNormForwardTraining({
    x,
    y,
    scale,
    bias,
    runningMean: null,
    runningVar: null,
    saveMean: be.alloc(d.c),
    saveInvStd: be.alloc(d.c),
    desc: d,
    relu,
  });
  return y;
}

/** relu(a + b) through the backend's residual sum, into a new buffer. */
function addRelu(be: CpuBackend, a: DataBuffer, b: DataBuffer): DataBuffer {
  const c = be.alloc(a.length);
  const n = a.length;
  be.opTensor({
    op: "add",
    alpha1: 1,
    a,
    alpha2: 1,
    b,
    bShape: [1, 1, n],
    beta: 0,
    c,
    shape: [1, 1, n],
    relu: true,
  });
  return c;
}

Deno.test(
  `a batch norm's output is known clean only when its statistics prove it, and a residual sum keeps the NaN it would hide${skipped}`,
  { ignore: lib === null },
  () => {
    const be = new CpuBackend();
    const d: BatchNormDesc = {
      n: 2,
      c: 3,
      spatial: 8,
      eps: 1e-5,
      momentum: 0.1,
    };
    const n = d.n * d.c * d.spatial;
    const input = (data: Float32Array) => {
      const b = be.alloc(n);
      be.write(b, data);
      return b;
    };
    const clean = input(values(n, -2, 2));
    for (const relu of [false, true]) {
      assert.ok(known(batchNorm(be, clean, d, 1.5, relu)), `relu ${relu}`);
    }
    // A NaN in channel 1 makes that channel's statistics NaN: nothing is
    // known, and the sum with a known operand keeps PyTorch's NaN.
    const withNaN = values(n, -2, 2);
    withNaN[d.spatial + 3] = NaN;
    const other = batchNorm(be, clean, d, 1);
    for (const relu of [false, true]) {
      const y = batchNorm(be, input(withNaN), d, 1, relu);
      assert.ok(!known(y), `NaN input, relu ${relu}`);
      for (const [a, b] of [[y, other], [other, y]]) {
        const sum = be.read(addRelu(be, a, b));
        for (let i = 0; i < n; i++) {
          const inNaNChannel = Math.floor(i / d.spatial) % d.c === 1;
          assert.equal(Number.isNaN(sum[i]), inNaNChannel, `element ${i}`);
        }
      }
    }
    // A gamma that overflows the output to -Inf somewhere: unknown, so
    // its sum with +Inf is NaN, as in PyTorch. The +Inf comes from residual
    // sums of known operands doubling until they overflow: no NaN, no -Inf,
    // so known clean (the first check reads values small enough for its
    // sum of magnitudes not to overflow).
    const huge = batchNorm(be, clean, d, 3e38);
    const ys = be.read(huge);
    assert.ok(ys.includes(-Infinity) && !known(huge));
    let inf = input(new Float32Array(n).fill(6e36));
    for (let i = 0; i < 7; i++) inf = addRelu(be, inf, inf);
    assert.ok(known(inf) && be.read(inf).every((v) => v === Infinity));
    const sum = be.read(addRelu(be, huge, inf));
    for (let i = 0; i < n; i++) {
      assert.equal(Number.isNaN(sum[i]), ys[i] === -Infinity, `element ${i}`);
    }
  },
);
