import { assertThrows } from "./assert.ts";
import { Generator, linear, matmul, trace } from "../mod.ts";
import { checkGradients, randomValues } from "./check.ts";
import { matmulRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(1);

for (
  const [transA, transB] of [[false, false], [true, false], [false, true], [
    true,
    true,
  ]]
) {
  Deno.test(`matmul() matches the float64 reference and finite differences (transA ${transA}, transB ${transB})`, () => {
    const [m, k, n] = [5, 7, 3];
    const aShape = transA ? [k, m] : [m, k];
    const bShape = transB ? [n, k] : [k, n];
    checkGradients("matmul", {
      inputs: [
        { data: randomValues(gen, m * k), shape: aShape },
        { data: randomValues(gen, k * n), shape: bShape },
      ],
      op: (a, b) => matmul(a, b, { transA, transB }),
      ref: (a, b) => matmulRef(a, aShape, b, bShape, transA, transB),
    });
  });
}

Deno.test("matmul() of 1x1 and long thin matrices matches the reference", () => {
  for (const [m, k, n] of [[1, 1, 1], [1, 33, 1], [17, 1, 9], [64, 130, 2]]) {
    checkGradients(`matmul ${m}x${k}x${n}`, {
      inputs: [
        { data: randomValues(gen, m * k), shape: [m, k] },
        { data: randomValues(gen, k * n), shape: [k, n] },
      ],
      op: (a, b) => matmul(a, b),
      ref: (a, b) => matmulRef(a, [m, k], b, [k, n]),
    });
  }
});

Deno.test("linear() with and without bias matches x W^T + b", () => {
  const [n, inF, outF] = [4, 6, 3];
  const ref = (x: Float64Array, w: Float64Array, b?: Float64Array) => {
    const y = matmulRef(x, [n, inF], w, [outF, inF], false, true);
    if (b) { for (let i = 0; i < y.length; i++) y[i] += b[i % outF]; }
    return y;
  };
  const x = randomValues(gen, n * inF);
  const w = randomValues(gen, outF * inF);
  const b = randomValues(gen, outF);
  checkGradients("linear with bias", {
    inputs: [{ data: x, shape: [n, inF] }, { data: w, shape: [outF, inF] }, {
      data: b,
      shape: [outF],
    }],
    op: (x, w, b) => linear(x, w, b),
    ref: (x, w, b) => ref(x, w, b),
  });
  checkGradients("linear without bias", {
    inputs: [{ data: x, shape: [n, inF] }, { data: w, shape: [outF, inF] }],
    op: (x, w) => linear(x, w),
    ref: (x, w) => ref(x, w),
  });
});

Deno.test("trace() sums the diagonal and its gradient is the identity", () => {
  const m = 6;
  checkGradients("trace", {
    inputs: [{ data: randomValues(gen, m * m), shape: [m, m] }],
    op: (x) => trace(x),
    ref: (x) => {
      let s = 0;
      for (let i = 0; i < m; i++) s += x[i * m + i];
      return Float64Array.of(s);
    },
  });
});

Deno.test("trace of a matrix power matches the reference (the MEC series' building block)", () => {
  const m = 5;
  checkGradients("trace(A A A)", {
    inputs: [{ data: randomValues(gen, m * m), shape: [m, m] }],
    op: (a) => trace(matmul(matmul(a, a), a)),
    ref: (a) => {
      const a3 = matmulRef(matmulRef(a, [m, m], a, [m, m]), [m, m], a, [m, m]);
      let s = 0;
      for (let i = 0; i < m; i++) s += a3[i * m + i];
      return Float64Array.of(s);
    },
  });
});

Deno.test("matmul(), linear() and trace() name the op and shapes on bad input", async () => {
  const { zeros } = await import("../mod.ts");
  assertThrows(
    () => matmul(zeros([2, 3]), zeros([4, 5])),
    /matmul: shapes \[2, 3\] and \[4, 5\] cannot be multiplied/,
  );
  assertThrows(
    () => matmul(zeros([2, 3, 1]), zeros([3, 5])),
    /matmul: expected a 2-D first operand, got shape \[2, 3, 1\]/,
  );
  assertThrows(
    () => linear(zeros([2, 3]), zeros([4, 5])),
    /linear: input \[2, 3\] does not match weight \[4, 5\]/,
  );
  assertThrows(
    () => linear(zeros([2, 3]), zeros([4, 3]), zeros([5])),
    /linear: bias of shape \[5\]/,
  );
  assertThrows(
    () => trace(zeros([2, 3])),
    /trace: expected a square matrix, got shape \[2, 3\]/,
  );
});
