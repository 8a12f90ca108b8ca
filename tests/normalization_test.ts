import {
  batchNorm,
  Generator,
  normalize,
  ones,
  tensor,
  zeros,
} from "../mod.ts";
import { assertThrows } from "./assert.ts";
import { assertClose, checkGradients, randomValues } from "./check.ts";
import { batchNormRef, normalizeRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(3);

const shapes = [[5, 3], [4, 3, 7], [2, 4, 3, 5], [1, 2, 3, 3]];

for (const shape of shapes) {
  for (const affine of [true, false]) {
    Deno.test(`batchNorm() in training mode matches the reference for [${shape}], affine ${affine}`, () => {
      const c = shape[1];
      const size = shape.reduce((p, q) => p * q, 1);
      const x = randomValues(gen, size, -2, 3);
      const inputs = [{ data: x, shape }];
      if (affine) {
        inputs.push({ data: randomValues(gen, c, 0.5, 1.5), shape: [c] });
        inputs.push({ data: randomValues(gen, c), shape: [c] });
      }
      checkGradients("batchNorm train", {
        inputs,
        op: (t, w, b) => batchNorm(t, { weight: w, bias: b, training: true }),
        ref: (t, w, b) =>
          batchNormRef(t, shape, w ?? null, b ?? null, 1e-5, null).y,
        // Normalised outputs are O(1); the gradient subtracts two batch means
        // of O(1) terms, losing a few float32 digits.
        backward: { rtol: 1e-3, atol: 2e-4 },
      });
    });

    Deno.test(`batchNorm() in eval mode matches the reference for [${shape}], affine ${affine}`, () => {
      const c = shape[1];
      const size = shape.reduce((p, q) => p * q, 1);
      const mean = randomValues(gen, c);
      const variance = randomValues(gen, c, 0.2, 2);
      const inputs = [{ data: randomValues(gen, size, -2, 3), shape }];
      if (affine) {
        inputs.push({ data: randomValues(gen, c, 0.5, 1.5), shape: [c] });
        inputs.push({ data: randomValues(gen, c), shape: [c] });
      }
      const rm = tensor(Float32Array.from(mean), [c]);
      const rv = tensor(Float32Array.from(variance), [c]);
      checkGradients("batchNorm eval", {
        inputs,
        op: (t, w, b) =>
          batchNorm(t, {
            weight: w,
            bias: b,
            runningMean: rm,
            runningVar: rv,
            training: false,
          }),
        ref: (t, w, b) =>
          batchNormRef(t, shape, w ?? null, b ?? null, 1e-5, { mean, variance })
            .y,
      });
    });
  }
}

Deno.test("batchNorm() updates running statistics with momentum and the unbiased variance, as PyTorch", () => {
  const shape = [3, 2, 2, 2];
  const x = randomValues(gen, 24, -1, 4);
  const rm = zeros([2]);
  const rv = ones([2]);
  const momentum = 0.1;
  const expectedMean = [0, 0];
  const expectedVar = [1, 1];
  for (let step = 0; step < 3; step++) {
    batchNorm(tensor(Float32Array.from(x), shape), {
      runningMean: rm,
      runningVar: rv,
      training: true,
      momentum,
    });
    const { mean, variance } = batchNormRef(x, shape, null, null, 1e-5, null);
    const count = 12;
    for (let c = 0; c < 2; c++) {
      expectedMean[c] = (1 - momentum) * expectedMean[c] + momentum * mean[c];
      expectedVar[c] = (1 - momentum) * expectedVar[c] +
        momentum * variance[c] * count / (count - 1);
    }
  }
  assertClose(rm.toArray(), expectedMean, "running mean");
  assertClose(rv.toArray(), expectedVar, "running var");
});

Deno.test("batchNorm() with a custom eps and momentum uses them", () => {
  const x = tensor([1, 2, 3, 4, 5, 6], [3, 2]);
  const rm = zeros([2]);
  const rv = zeros([2]);
  const y = batchNorm(x, {
    runningMean: rm,
    runningVar: rv,
    training: true,
    momentum: 1,
    eps: 1e-6,
  });
  // Column 0 is 1, 3, 5: mean 3, biased variance 8/3, unbiased 4.
  assertClose(rm.toArray(), [3, 4], "running mean with momentum 1");
  assertClose(rv.toArray(), [4, 4], "running var with momentum 1");
  const s = Math.sqrt(8 / 3 + 1e-6);
  assertClose(y.toArray(), [-2 / s, -2 / s, 0, 0, 2 / s, 2 / s], "output");
});

Deno.test("batchNorm() rejects a single value per channel in training and mismatched parameters", () => {
  assertThrows(
    () => batchNorm(zeros([1, 3]), { training: true }),
    /more than 1 value per channel/,
  );
  assertThrows(
    () => batchNorm(zeros([2, 3]), { training: true, weight: ones([4]) }),
    /batchNorm: weight of shape \[4\] does not match 3 channels/,
  );
  assertThrows(
    () => batchNorm(zeros([2, 3]), { training: false }),
    /eval mode needs runningMean and runningVar/,
  );
  assertThrows(
    () => batchNorm(zeros([2]), { training: true }),
    /batchNorm: expected a 2-D or 3-D or 4-D input, got shape \[2\]/,
  );
});

Deno.test("normalize() matches F.normalize and its gradient, including a zero row", () => {
  const [rows, cols] = [4, 6];
  const x = randomValues(gen, rows * cols);
  checkGradients("normalize", {
    inputs: [{ data: x, shape: [rows, cols] }],
    op: (t) => normalize(t),
    ref: (t) => normalizeRef(t, rows, cols, 1e-12),
  });
  // A row below eps is divided by eps: the op is linear there.
  const tiny = randomValues(gen, 2 * 3).map((v) => v * 1e-14);
  checkGradients("normalize below eps", {
    inputs: [{ data: tiny, shape: [2, 3] }],
    op: (t) => normalize(t),
    ref: (t) => normalizeRef(t, 2, 3, 1e-12),
    step: 1e-17,
  });
});

for (const shape of [[4, 3, 7], [2, 4, 3, 5]]) {
  Deno.test(`batchNorm() with relu in training mode is relu(batchNorm()), values and gradients, for [${shape}]`, () => {
    const c = shape[1];
    const size = shape.reduce((p, q) => p * q, 1);
    checkGradients("batchNorm train relu", {
      inputs: [
        { data: randomValues(gen, size, -2, 3), shape },
        { data: randomValues(gen, c, 0.5, 1.5), shape: [c] },
        { data: randomValues(gen, c), shape: [c] },
      ],
      op: (t, w, b) =>
        batchNorm(t, { weight: w, bias: b, training: true, relu: true }),
      ref: (t, w, b) =>
        batchNormRef(t, shape, w, b, 1e-5, null).y.map((v) => Math.max(v, 0)),
      backward: { rtol: 1e-3, atol: 2e-4 },
    });
  });
}
