import { CpuBackend } from "../cpu/mod.ts";
import {
  add,
  device,
  Generator,
  mul,
  scope,
  sum,
  Tensor,
  tensor,
} from "../mod.ts";
import type { Backend, SgdStep } from "../nn/backend.ts";
import { Linear } from "../nn/layers.ts";
import { LARS, SGD } from "../nn/optim.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose } from "./check.ts";
import "./device.ts";
import { counts, only, recordCalls } from "./spy.ts";

/** A quadratic loss sum(w * c) whose gradient is c, chosen per step. */
function stepWith(opt: SGD, w: ReturnType<typeof tensor>, c: number[]) {
  scope(() => {
    opt.zeroGrad();
    sum(mul(w, tensor(c, w.shape))).backward();
    opt.step();
  });
}

const grads = [[0.5, -1, 0.25], [0.1, 0.2, -0.3], [-0.4, 0.0, 0.6], [1, 1, 1]];

Deno.test("SGD with momentum and weight decay follows PyTorch's update over several steps", () => {
  const w = tensor([1, -2, 3], [3], { requiresGrad: true });
  const opt = new SGD([w], { lr: 0.1, momentum: 0.9, weightDecay: 0.01 });
  const p = [1, -2, 3];
  const buf = [0, 0, 0];
  grads.forEach((g, step) => {
    if (step === 2) opt.lr = 0.05; // a scheduled learning rate
    stepWith(opt, w, g);
    for (let i = 0; i < 3; i++) {
      const d = g[i] + 0.01 * p[i];
      buf[i] = step === 0 ? d : 0.9 * buf[i] + d;
      p[i] -= opt.lr * buf[i];
    }
  });
  assertClose(w.toArray(), p, "SGD parameters");
  assertClose(
    opt.stateDict().tensors.get("state.0.momentum_buffer")!.toArray(),
    buf,
    "momentum buffer",
  );
});

Deno.test("LARS (LARC, clip off) rescales each gradient by its trust ratio before SGD", () => {
  const w = tensor([1, -2, 3], [3], { requiresGrad: true });
  const [lr, momentum, wd, trust, eps] = [0.5, 0.9, 1e-4, 0.001, 1e-8];
  const opt = new LARS([w], {
    lr,
    momentum,
    weightDecay: wd,
    trustCoefficient: trust,
  });
  const p = [1, -2, 3];
  const buf = [0, 0, 0];
  grads.forEach((g, step) => {
    stepWith(opt, w, g);
    const pn = Math.hypot(...p);
    const gn = Math.hypot(...g);
    const rate = trust * pn / (gn + wd * pn + eps);
    for (let i = 0; i < 3; i++) {
      const d = (g[i] + wd * p[i]) * rate; // then SGD without weight decay
      buf[i] = step === 0 ? d : momentum * buf[i] + d;
      p[i] -= lr * buf[i];
    }
  });
  assertClose(w.toArray(), p, "LARS parameters");
});

Deno.test("LARS does not touch a gradient shared with another parameter", () => {
  const a = tensor([1, 2], [2], { requiresGrad: true });
  const b = tensor([3, 4], [2], { requiresGrad: true });
  const opt = new LARS([a], { lr: 0.1 });
  // add() hands the same upstream gradient to both leaves.
  scope(() => sum(add(a, b)).backward());
  opt.step();
  assert.deepEqual([...b.grad!.toArray()], [1, 1]);
  assert.notDeepEqual([...a.grad!.toArray()], [1, 1]);
});

Deno.test("parameters without a gradient are skipped and bad hyper-parameters rejected", () => {
  const fc = new Linear(3, 2, { gen: new Generator(1) });
  const before = fc.weight.toArray();
  const opt = new SGD(fc.parameters(), { lr: 0.1, momentum: 0.9 });
  opt.step();
  assert.deepEqual([...fc.weight.toArray()], [...before]);
  assertThrows(
    () => new SGD([], { lr: -1 }),
    /SGD: lr must be a number >= 0, got -1/,
  );
  assertThrows(
    () => new SGD([], { lr: 0.1, nesterov: true }),
    /Nesterov momentum requires a momentum/,
  );
});

// --- one fused update per backend ----------------------------------------------------

/** A leaf of `shape` on `backend` holding `data`, with a gradient there. */
function leaf(
  backend: Backend,
  data: Float32Array,
  grad: Float32Array,
  shape = [data.length],
): Tensor {
  const t = Tensor.empty(backend, shape);
  backend.write(t.buffer, data);
  t.requiresGrad = true;
  t.grad = Tensor.empty(backend, shape);
  backend.write(t.grad.buffer, grad);
  return t;
}

/** Asserts that two arrays hold the same float32 bits. */
function assertSameBits(a: Float32Array, b: Float32Array, what: string) {
  assert.deepEqual(
    [...new Uint32Array(a.buffer)],
    [...new Uint32Array(b.buffer)],
    what,
  );
}

/**
 * Parameters on two backends (the test device and a second CPU backend):
 * sizes with an empty tensor among them, one parameter without a gradient.
 */
function twoBackendParams(g: Generator) {
  const second = new CpuBackend();
  const backends = [device(), second];
  const sizes = [[5], [0], [3, 4], [1], [7, 2]];
  const params = backends.flatMap((b) =>
    sizes.map((shape) => {
      const n = shape.reduce((x, y) => x * y, 1);
      const data = g.fillUniform(new Float32Array(n), -1, 1);
      return leaf(
        b,
        data,
        g.fillUniform(new Float32Array(n), -0.1, 0.1),
        shape,
      );
    })
  );
  params[3].grad!.dispose();
  params[3].grad = null; // skipped by the step
  return { backends, params };
}

/**
 * What the optimiser did before it fused, on copies of the parameters: one
 * (larsAdapt and) sgdUpdate per parameter with a gradient, `grads[s]` on
 * step s.
 */
function perTensorSgd(
  params: Tensor[],
  h: SgdStepHyper,
  grads: Float32Array[][],
  lars?: { trust: number; eps: number },
): Float32Array[] {
  return params.map((p, i) => {
    const b = p.backend;
    const param = b.alloc(p.size);
    b.write(param, p.toArray());
    const buf = h.momentum === 0 ? null : b.alloc(p.size);
    for (let s = 0; s < grads.length; s++) {
      if (p.grad === null) continue;
      const grad = b.alloc(p.size);
      b.write(grad, grads[s][i]);
      if (lars) {
        b.larsAdapt({
          param,
          grad,
          length: p.size,
          trust: lars.trust,
          weightDecay: h.weightDecay,
          eps: lars.eps,
        });
      }
      b.sgdUpdate({
        param,
        grad,
        momentumBuffer: buf,
        length: p.size,
        step: {
          ...h,
          weightDecay: lars ? 0 : h.weightDecay,
          firstStep: s === 0,
        },
      });
      b.free(grad);
    }
    const out = b.read(param);
    b.free(param);
    if (buf) b.free(buf);
    return out;
  });
}

type SgdStepHyper = Omit<SgdStep, "firstStep">;

for (const lars of [false, true]) {
  const name = lars ? "LARS" : "SGD";
  Deno.test(`${name}.step() makes one sgdUpdateMany per backend per step, with the per-tensor updates' results bit for bit`, () => {
    const g = new Generator(lars ? 12 : 11);
    const { backends, params } = twoBackendParams(g);
    // Dampening makes a first step differ from a later one on a zero buffer.
    const h: SgdStepHyper = {
      lr: 0.1,
      momentum: 0.9,
      dampening: lars ? 0 : 0.1,
      weightDecay: 1e-3,
      nesterov: lars,
    };
    const trust = 0.02;
    const eps = 1e-8;
    const opt = lars
      ? new LARS(params, { ...h, trustCoefficient: trust, eps })
      : new SGD(params, h);
    const steps = 3;
    // The first step's gradients are those leaf() made, later ones new.
    const grads = Array.from(
      { length: steps },
      (_, s) =>
        params.map((p) =>
          s === 0 && p.grad
            ? p.grad.toArray()
            : g.fillUniform(new Float32Array(p.size), -0.1, 0.1)
        ),
    );
    const want = perTensorSgd(
      params,
      h,
      grads,
      lars ? { trust, eps } : undefined,
    );
    for (let s = 0; s < steps; s++) {
      params.forEach((p, i) => {
        if (p.grad) p.backend.write(p.grad.buffer, grads[s][i]);
      });
      const calls = recordCalls(backends, () => opt.step());
      for (const b of backends) {
        // Four parameters with a gradient on the first backend, five on the second.
        const withGrad = params.filter((p) => p.backend === b && p.grad).length;
        assert.deepEqual(
          counts(calls.get(b)),
          only({ sgdUpdateMany: 1, larsAdapt: lars ? withGrad : 0 }),
          `step ${s}`,
        );
      }
    }
    params.forEach((p, i) =>
      assertSameBits(p.toArray(), want[i], `${name} parameter ${i}`)
    );
    opt.dispose();
    for (const p of params) {
      p.grad?.dispose();
      p.dispose();
    }
  });
}

Deno.test("SGD.step() updates parameters whose momentum buffer is new in a call of their own (firstStep)", () => {
  const a = tensor([1, 2], [2], { requiresGrad: true });
  const b = tensor([3, 4, 5], [3], { requiresGrad: true });
  const opt = new SGD([a, b], { lr: 0.5, momentum: 0.9 });
  // A restored buffer for b only: a's buffer starts on this step.
  opt.loadStateDict({
    tensors: new Map([["state.1.momentum_buffer", {
      shape: [3],
      data: Float32Array.from([1, 1, 1]),
    }]]),
    hyper: {},
  });
  a.grad = tensor([0.5, 0.5], [2]);
  b.grad = tensor([1, 0, -1], [3]);
  const backend = device();
  const calls = recordCalls([backend], () => opt.step()).get(backend)!;
  assert.deepEqual(
    calls.map((c) =>
      c.op === "sgdUpdateMany"
        ? [c.args.step.firstStep, c.args.params, c.args.lengths]
        : c.op
    ),
    [[true, [a.buffer], [2]], [false, [b.buffer], [3]]],
  );
  // a: buf = g, p -= 0.5 g; b: buf = 0.9 + g, p -= 0.5 buf.
  assertClose(a.toArray(), [0.75, 1.75], "new buffer");
  assertClose(b.toArray(), [3 - 0.95, 4 - 0.45, 5 + 0.05], "restored buffer");
  opt.dispose();
  for (const t of [a, b]) {
    t.grad!.dispose();
    t.dispose();
  }
});
