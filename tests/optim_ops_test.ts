import { device } from "../mod.ts";
import { assertClose } from "./check.ts";
import type { SgdStep } from "../nn/backend.ts";
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
