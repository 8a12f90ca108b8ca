import { conv2d, Generator, zeros } from "../mod.ts";
import { assertThrows } from "./assert.ts";
import { checkGradients, randomValues } from "./check.ts";
import { conv2dRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(6);

const cases = [
  {
    n: 2,
    c: 3,
    h: 7,
    w: 9,
    k: 4,
    r: 3,
    s: 3,
    stride: [1, 1],
    pad: [1, 1],
    bias: true,
  },
  {
    n: 1,
    c: 2,
    h: 9,
    w: 8,
    k: 3,
    r: 7,
    s: 7,
    stride: [2, 2],
    pad: [3, 3],
    bias: false,
  },
  {
    n: 3,
    c: 5,
    h: 6,
    w: 6,
    k: 2,
    r: 1,
    s: 1,
    stride: [2, 2],
    pad: [0, 0],
    bias: false,
  },
  {
    n: 1,
    c: 4,
    h: 5,
    w: 7,
    k: 3,
    r: 1,
    s: 1,
    stride: [1, 1],
    pad: [0, 0],
    bias: true,
  },
  {
    n: 2,
    c: 2,
    h: 6,
    w: 5,
    k: 3,
    r: 1,
    s: 3,
    stride: [1, 2],
    pad: [0, 1],
    bias: true,
  },
] as const;

for (const d of cases) {
  Deno.test(`conv2d() and its gradients match the reference for ${d.r}x${d.s}, stride ${d.stride}, padding ${d.pad}, batch ${d.n}${d.bias ? ", bias" : ""}`, () => {
    const xShape = [d.n, d.c, d.h, d.w];
    const wShape = [d.k, d.c, d.r, d.s];
    const inputs = [
      { data: randomValues(gen, d.n * d.c * d.h * d.w), shape: xShape },
      { data: randomValues(gen, d.k * d.c * d.r * d.s), shape: wShape },
    ];
    if (d.bias) inputs.push({ data: randomValues(gen, d.k), shape: [d.k] });
    const desc = {
      ...d,
      stride: [...d.stride] as [number, number],
      pad: [...d.pad] as [number, number],
    };
    checkGradients("conv2d", {
      inputs,
      op: (x, w, b) =>
        conv2d(x, w, b ?? null, { stride: desc.stride, padding: desc.pad }),
      ref: (x, w, b) => conv2dRef(x, w, b ?? null, desc),
    });
  });
}

Deno.test("conv2d() computes no input gradient when the input needs none", async () => {
  const { tensor, sum } = await import("../mod.ts");
  const x = tensor(randomValues(gen, 2 * 3 * 5 * 5), [2, 3, 5, 5]);
  const w = tensor(randomValues(gen, 4 * 3 * 3 * 3), [4, 3, 3, 3], {
    requiresGrad: true,
  });
  sum(conv2d(x, w, null, { padding: 1 })).backward();
  if (x.grad !== null || w.grad === null) {
    throw new Error("gradients went to the wrong inputs");
  }
});

Deno.test("conv2d() names the op and the shapes on bad input", () => {
  assertThrows(
    () => conv2d(zeros([1, 3, 8, 8]), zeros([4, 2, 3, 3])),
    /conv2d: input \[1, 3, 8, 8\], weight \[4, 2, 3, 3\]: the weight expects 2 input channels, the input has 3/,
  );
  assertThrows(
    () => conv2d(zeros([1, 3, 2, 2]), zeros([4, 3, 3, 3])),
    /the kernel is larger than the padded input/,
  );
  assertThrows(
    () => conv2d(zeros([3, 8, 8]), zeros([4, 3, 3, 3])),
    /conv2d: expected a 4-D input, got shape \[3, 8, 8\]/,
  );
  assertThrows(
    () => conv2d(zeros([1, 3, 8, 8]), zeros([4, 3, 3, 3]), zeros([5])),
    /conv2d: bias \[5\] does not match/,
  );
  assertThrows(
    () => conv2d(zeros([1, 3, 8, 8]), zeros([4, 3, 3, 3]), null, { stride: 0 }),
    /stride must be a positive integer/,
  );
});
