import { Generator, globalAvgPool2d, maxPool2d, zeros } from "../mod.ts";
import { assertThrows } from "./assert.ts";
import { checkGradients, randomValues } from "./check.ts";
import { maxPoolRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(4);

const cases: {
  shape: number[];
  k: [number, number];
  stride: [number, number];
  pad: [number, number];
}[] = [
  { shape: [2, 3, 8, 8], k: [3, 3], stride: [2, 2], pad: [1, 1] }, // ResNet's stem pool
  { shape: [1, 2, 7, 9], k: [3, 3], stride: [2, 2], pad: [1, 1] },
  { shape: [2, 1, 5, 6], k: [2, 2], stride: [2, 2], pad: [0, 0] },
  { shape: [1, 2, 6, 5], k: [3, 2], stride: [1, 2], pad: [1, 0] },
];

for (const { shape, k, stride, pad } of cases) {
  Deno.test(`maxPool2d() matches the reference for [${shape}], kernel ${k}, stride ${stride}, padding ${pad}`, () => {
    // Distinct values: with ties the gradient's route is a convention, not math.
    const size = shape.reduce((p, q) => p * q, 1);
    const values = gen.permutation(size);
    const x = Float64Array.from(values, (v) => v / size - 0.5);
    checkGradients("maxPool2d", {
      inputs: [{ data: x, shape }],
      op: (t) => maxPool2d(t, { kernelSize: k, stride, padding: pad }),
      ref: (t) => maxPoolRef(t, shape, k, stride, pad),
      step: 1e-9,
    });
  });
}

Deno.test("maxPool2d() sends the gradient of a tie to the first maximum, as PyTorch", async () => {
  const { tensor, sum } = await import("../mod.ts");
  const x = tensor([1, 1, 1, 1], [1, 1, 2, 2], { requiresGrad: true });
  sum(maxPool2d(x, { kernelSize: 2 })).backward();
  const g = x.grad!.toArray();
  if (g.join() !== "1,0,0,0") throw new Error(`gradient ${g}`);
});

Deno.test("globalAvgPool2d() matches the mean over each plane", () => {
  const shape = [2, 3, 5, 7];
  checkGradients("globalAvgPool2d", {
    inputs: [{ data: randomValues(gen, 210), shape }],
    op: globalAvgPool2d,
    ref: (t) => {
      const out = new Float64Array(6);
      for (let p = 0; p < 6; p++) {
        for (let i = 0; i < 35; i++) out[p] += t[p * 35 + i] / 35;
      }
      return out;
    },
  });
});

Deno.test("maxPool2d() names the problem with bad windows", () => {
  assertThrows(
    () => maxPool2d(zeros([1, 1, 4, 4]), { kernelSize: 2, padding: 2 }),
    /padding must be between 0 and half the kernel size/,
  );
  assertThrows(
    () => maxPool2d(zeros([1, 1, 2, 2]), { kernelSize: 3 }),
    /window is larger than the padded input \[1, 1, 2, 2\]/,
  );
  assertThrows(
    () => maxPool2d(zeros([4, 4]), { kernelSize: 2 }),
    /maxPool2d: expected a 4-D input, got shape \[4, 4\]/,
  );
});
