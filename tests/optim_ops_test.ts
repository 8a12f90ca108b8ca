import { device, Generator } from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose } from "./check.ts";
import type { DataBuffer, SgdStep } from "../nn/backend.ts";
import "./device.ts";

const backend = device();

function buffer(values: number[]) {
  const b = backend.alloc(values.length);
  backend.write(b, Float32Array.from(values));
  return b;
}

Deno.test("sgdUpdate() follows PyTorch's SGD formulas over several steps", () => {
  for (const nesterov of [false, true]) {
    const p0 = [1, -2, 0.5];
    const grads = [[0.1, 0.2, -0.3], [0.4, -0.1, 0.0], [-0.2, 0.3, 0.1]];
    const h = {
      lr: 0.1,
      momentum: 0.9,
      dampening: nesterov ? 0 : 0.1,
      weightDecay: 1e-2,
      nesterov,
    };
    const param = buffer(p0);
    const mom = backend.alloc(3);
    // Hand computation in float64.
    const p = [...p0];
    const buf = [0, 0, 0];
    grads.forEach((g, step) => {
      const s: SgdStep = { ...h, firstStep: step === 0 };
      backend.sgdUpdate({
        param,
        grad: buffer(g),
        momentumBuffer: mom,
        length: 3,
        step: s,
      });
      for (let i = 0; i < 3; i++) {
        const d = g[i] + h.weightDecay * p[i];
        buf[i] = step === 0 ? d : h.momentum * buf[i] + (1 - h.dampening) * d;
        p[i] -= h.lr * (nesterov ? d + h.momentum * buf[i] : buf[i]);
      }
    });
    assertClose(backend.read(param), p, `SGD parameters, nesterov ${nesterov}`);
    assertClose(
      backend.read(mom),
      buf,
      `SGD momentum buffer, nesterov ${nesterov}`,
    );
  }
});

Deno.test("sgdUpdate() without momentum is p -= lr * (g + wd * p)", () => {
  const param = buffer([1, 2]);
  backend.sgdUpdate({
    param,
    grad: buffer([0.5, -1]),
    momentumBuffer: null,
    length: 2,
    step: {
      lr: 0.5,
      momentum: 0,
      dampening: 0,
      weightDecay: 0.1,
      nesterov: false,
      firstStep: true,
    },
  });
  assertClose(backend.read(param), [
    1 - 0.5 * (0.5 + 0.1),
    2 - 0.5 * (-1 + 0.2),
  ], "plain SGD");
});

Deno.test("larsAdapt() scales the gradient by LARC's trust ratio and skips zero norms", () => {
  const p = [3, 4]; // norm 5
  const g = [0.6, 0.8]; // norm 1
  const [trust, wd, eps] = [0.001, 0.1, 1e-8];
  const grad = buffer(g);
  backend.larsAdapt({
    param: buffer(p),
    grad,
    length: 2,
    trust,
    weightDecay: wd,
    eps,
  });
  const rate = (trust * 5) / (1 + wd * 5 + eps);
  assertClose(
    backend.read(grad),
    g.map((v, i) => (v + wd * p[i]) * rate),
    "LARC gradient",
  );
  const untouched = buffer(g);
  backend.larsAdapt({
    param: buffer([0, 0]),
    grad: untouched,
    length: 2,
    trust,
    weightDecay: wd,
    eps,
  });
  assertClose(backend.read(untouched), g, "zero parameter norm");
});

// --- the multi-tensor ops against the per-tensor ones ----------------------------

/**
 * Lengths of a small parameter list: empty tensors first, among and last,
 * one element, tensors past a block of 256 threads, and one large enough
 * for the CPU backend to hand to oneDNN.
 */
const LENGTHS = [0, 7, 0, 300, 1, 0, 1025, 33, 0, 5000];
/** Elements past each tensor's length, which no op may touch. */
const SPARE = 2;

/** A buffer holding `data`, listed in `made` for the test to free. */
function values(
  made: DataBuffer[],
  data: Float32Array,
): DataBuffer {
  const b = backend.alloc(data.length);
  backend.write(b, data);
  made.push(b);
  return b;
}

/** n values in [low, high), then SPARE more. */
function uniform(g: Generator, n: number, low = -1, high = 1) {
  return g.fillUniform(new Float32Array(n + SPARE), low, high);
}

/** Two buffers with the same contents: one per-tensor op's, one the fused op's. */
function twins(
  made: DataBuffer[],
  data: Float32Array,
): [DataBuffer, DataBuffer] {
  return [values(made, data), values(made, data)];
}

/** Asserts that two buffers hold the same bits, NaNs included. */
function assertSameBits(a: DataBuffer, b: DataBuffer, what: string): void {
  const x = new Uint32Array(backend.read(a).buffer);
  const y = new Uint32Array(backend.read(b).buffer);
  const bad = x.findIndex((v, i) => v !== y[i]);
  assert.equal(bad, -1, `${what}: element ${bad} differs`);
}

const SGD_KINDS: [string, Omit<SgdStep, "firstStep">, boolean][] = [
  ["plain SGD with weight decay, no buffers", {
    lr: 0.1,
    momentum: 0,
    dampening: 0,
    weightDecay: 1e-2,
    nesterov: false,
  }, false],
  ["momentum 0 with buffers (left untouched)", {
    lr: 0.1,
    momentum: 0,
    dampening: 0,
    weightDecay: 0,
    nesterov: false,
  }, true],
  ["momentum 0.9, dampening 0.1, weight decay 1e-4", {
    lr: 0.05,
    momentum: 0.9,
    dampening: 0.1,
    weightDecay: 1e-4,
    nesterov: false,
  }, true],
  ["Nesterov momentum 0.9, weight decay 5e-4", {
    lr: 0.2,
    momentum: 0.9,
    dampening: 0,
    weightDecay: 5e-4,
    nesterov: true,
  }, true],
];

Deno.test("sgdUpdateMany() is one sgdUpdate per tensor, bit for bit, for each kind of SGD and with empty tensors", () => {
  const g = new Generator(31);
  for (const [what, h, withBuffers] of SGD_KINDS) {
    const made: DataBuffer[] = [];
    const params = LENGTHS.map((n) => twins(made, uniform(g, n)));
    // The first step must not read the buffers: they start as NaN.
    const bufs = withBuffers
      ? LENGTHS.map((n) => twins(made, new Float32Array(n + SPARE).fill(NaN)))
      : null;
    for (let step = 0; step < 3; step++) {
      const s: SgdStep = { ...h, firstStep: step === 0 };
      const grads = LENGTHS.map((n) => values(made, uniform(g, n, -0.1, 0.1)));
      LENGTHS.forEach((length, i) =>
        backend.sgdUpdate({
          param: params[i][0],
          grad: grads[i],
          momentumBuffer: bufs && bufs[i][0],
          length,
          step: s,
        })
      );
      backend.sgdUpdateMany({
        params: params.map((p) => p[1]),
        grads,
        momentumBuffers: bufs && bufs.map((b) => b[1]),
        lengths: LENGTHS,
        step: s,
      });
      LENGTHS.forEach((_, i) => {
        const at = `${what}, step ${step}, tensor ${i}`;
        assertSameBits(params[i][0], params[i][1], `${at}: parameters`);
        if (bufs) assertSameBits(bufs[i][0], bufs[i][1], `${at}: buffer`);
      });
    }
    for (const b of made) backend.free(b);
  }
});

Deno.test("axpbyMany() is one axpby per tensor, bit for bit, beta 0 not reading y", () => {
  const g = new Generator(32);
  for (const [alpha, beta] of [[0.004, 0.996], [2.5, 0], [1, 1], [0, 0.5]]) {
    const made: DataBuffer[] = [];
    const xs = LENGTHS.map((n) => values(made, uniform(g, n)));
    const ys = LENGTHS.map((n) =>
      twins(
        made,
        beta === 0 ? new Float32Array(n + SPARE).fill(NaN) : uniform(g, n),
      )
    );
    LENGTHS.forEach((n, i) =>
      backend.axpby({ n, alpha, x: xs[i], beta, y: ys[i][0] })
    );
    backend.axpbyMany({
      alpha,
      beta,
      xs,
      ys: ys.map((y) => y[1]),
      lengths: LENGTHS,
    });
    LENGTHS.forEach((_, i) =>
      assertSameBits(
        ys[i][0],
        ys[i][1],
        `alpha ${alpha}, beta ${beta}, tensor ${i}`,
      )
    );
    for (const b of made) backend.free(b);
  }
});

Deno.test("sgdUpdateMany() and axpbyMany() refuse lists of other lengths and lengths past a buffer, changing nothing", () => {
  const made: DataBuffer[] = [];
  const data = Float32Array.from([1, 2, 3]);
  const [a, b, c] = [
    values(made, data),
    values(made, data),
    values(made, data),
  ];
  const step: SgdStep = {
    lr: 0.1,
    momentum: 0.9,
    dampening: 0,
    weightDecay: 0,
    nesterov: false,
    firstStep: false,
  };
  assertThrows(
    () =>
      backend.sgdUpdateMany({
        params: [a, b],
        grads: [c],
        momentumBuffers: null,
        lengths: [3, 3],
        step,
      }),
    /^sgdUpdateMany: 1 grads for 2 lengths$/,
  );
  assertThrows(
    () =>
      backend.sgdUpdateMany({
        params: [a],
        grads: [b],
        momentumBuffers: [],
        lengths: [3],
        step,
      }),
    /^sgdUpdateMany: 0 momentumBuffers for 1 lengths$/,
  );
  assertThrows(
    () =>
      backend.sgdUpdateMany({
        params: [a, b],
        grads: [c, c],
        momentumBuffers: [c, a],
        lengths: [3, 4],
        step,
      }),
    /^sgdUpdateMany: params\[1\] has 3 elements, length 1 is 4$/,
  );
  assertThrows(
    () =>
      backend.axpbyMany({
        alpha: 1,
        beta: 1,
        xs: [a],
        ys: [b],
        lengths: [1.5],
      }),
    /^axpbyMany: length 0 is 1.5, not a whole number$/,
  );
  for (const buf of [a, b, c]) {
    assert.deepEqual([...backend.read(buf)], [1, 2, 3]);
  }
  // Empty lists are no work at all.
  backend.sgdUpdateMany({
    params: [],
    grads: [],
    momentumBuffers: [],
    lengths: [],
    step,
  });
  backend.axpbyMany({ alpha: 1, beta: 1, xs: [], ys: [], lengths: [] });
  for (const buf of made) backend.free(buf);
});
