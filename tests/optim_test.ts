import { add, Generator, mul, scope, sum, tensor } from "../mod.ts";
import { Linear } from "../nn/layers.ts";
import { LARS, SGD } from "../nn/optim.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose } from "./check.ts";
import "./device.ts";

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
