import {
  add,
  addScalar,
  affine,
  Generator,
  mean,
  mul,
  mulScalar,
  relu,
  sub,
  sum,
  tensor,
  zeros,
} from "../mod.ts";
import { assertThrows } from "./assert.ts";
import { checkGradients, randomValues } from "./check.ts";
import "./device.ts";

const gen = new Generator(2);

/** Reference broadcast of b (shape bs) to shape s, PyTorch's right-aligned rule. */
function broadcastRef(
  b: Float64Array,
  bs: number[],
  s: number[],
): Float64Array {
  const out = new Float64Array(s.reduce((p, q) => p * q, 1));
  const padded = [...new Array(s.length - bs.length).fill(1), ...bs];
  for (let i = 0; i < out.length; i++) {
    let rest = i;
    let at = 0;
    let stride = 1;
    const idx: number[] = [];
    for (let d = s.length - 1; d >= 0; d--) {
      idx[d] = rest % s[d];
      rest = Math.floor(rest / s[d]);
    }
    for (let d = s.length - 1; d >= 0; d--) {
      at += (padded[d] === 1 ? 0 : idx[d]) * stride;
      stride *= padded[d];
    }
    out[i] = b[at];
  }
  return out;
}

const broadcastCases: [number[], number[]][] = [
  [[3, 5], [3, 5]],
  [[2, 4, 3, 3], [1, 4, 1, 1]], // per-channel vector
  [[2, 4, 3, 3], [4, 1, 1]],
  [[6, 5], [6, 1]], // per-row vector
  [[6, 5], [5]], // per-column vector
  [[2, 3, 4], [1]], // scalar tensor
  [[2, 3, 4], [2, 1, 4]], // middle dimension broadcast
  [[1, 7], [7]],
];

for (const [as, bs] of broadcastCases) {
  for (
    const [name, op, f] of [
      ["add", add, (x: number, y: number) => x + y],
      ["sub", sub, (x: number, y: number) => x - y],
      ["mul", mul, (x: number, y: number) => x * y],
    ] as const
  ) {
    Deno.test(`${name}() of [${as}] and [${bs}] matches the reference in both orders`, () => {
      const a = randomValues(gen, as.reduce((p, q) => p * q, 1));
      const b = randomValues(gen, bs.reduce((p, q) => p * q, 1));
      checkGradients(`${name} a,b`, {
        inputs: [{ data: a, shape: as }, { data: b, shape: bs }],
        op: (x, y) => op(x, y),
        ref: (x, y) => {
          const yb = broadcastRef(y, bs, as);
          return x.map((v, i) => f(v, yb[i]));
        },
      });
      checkGradients(`${name} b,a`, {
        inputs: [{ data: b, shape: bs }, { data: a, shape: as }],
        op: (y, x) => op(y, x),
        ref: (y, x) => {
          const yb = broadcastRef(y, bs, as);
          return x.map((v, i) => f(yb[i], v));
        },
      });
    });
  }
}

Deno.test("add() and mul() with the same tensor twice accumulate both gradients", () => {
  const x = randomValues(gen, 12);
  checkGradients("x + x", {
    inputs: [{ data: x, shape: [3, 4] }],
    op: (t) => add(t, t),
    ref: (t) => t.map((v) => 2 * v),
  });
  checkGradients("x * x", {
    inputs: [{ data: x, shape: [3, 4] }],
    op: (t) => mul(t, t),
    ref: (t) => t.map((v) => v * v),
  });
});

Deno.test("mulScalar(), addScalar() and affine() match the reference", () => {
  const x = randomValues(gen, 10);
  checkGradients("mulScalar", {
    inputs: [{ data: x, shape: [10] }],
    op: (t) => mulScalar(t, -2.5),
    ref: (t) => t.map((v) => -2.5 * v),
  });
  checkGradients("addScalar", {
    inputs: [{ data: x, shape: [2, 5] }],
    op: (t) => addScalar(t, 3),
    ref: (t) => t.map((v) => v + 3),
  });
  checkGradients("affine", {
    inputs: [{ data: x, shape: [5, 2] }],
    op: (t) => affine(t, 0.5, -1),
    ref: (t) => t.map((v) => 0.5 * v - 1),
  });
});

Deno.test("sum() and mean() over everything and over each dimension match the reference", () => {
  const shape = [2, 3, 4];
  const x = randomValues(gen, 24);
  checkGradients("sum", {
    inputs: [{ data: x, shape }],
    op: (t) => sum(t),
    ref: (t) => Float64Array.of(t.reduce((p, q) => p + q, 0)),
  });
  checkGradients("mean", {
    inputs: [{ data: x, shape }],
    op: (t) => mean(t),
    ref: (t) => Float64Array.of(t.reduce((p, q) => p + q, 0) / 24),
  });
  for (let dim = 0; dim < 3; dim++) {
    for (const isMean of [false, true]) {
      const ref = (t: Float64Array) => {
        const before = shape.slice(0, dim).reduce((p, q) => p * q, 1);
        const after = shape.slice(dim + 1).reduce((p, q) => p * q, 1);
        const out = new Float64Array(before * after);
        for (let i = 0; i < before; i++) {
          for (let j = 0; j < shape[dim]; j++) {
            for (let k = 0; k < after; k++) {
              out[i * after + k] += t[(i * shape[dim] + j) * after + k];
            }
          }
        }
        return isMean ? out.map((v) => v / shape[dim]) : out;
      };
      checkGradients(`${isMean ? "mean" : "sum"} over dim ${dim}`, {
        inputs: [{ data: x, shape }],
        op: (t) => (isMean ? mean(t, dim) : sum(t, dim, true)),
        ref,
      });
    }
  }
});

Deno.test("sum() of a 0-D result has shape [] and keepDim keeps the dimension", () => {
  const x = zeros([2, 3]);
  if (sum(x).shape.length !== 0) throw new Error("sum() should be 0-D");
  const s = sum(x, 1, true);
  if (s.shape.join() !== "2,1") throw new Error(`keepDim shape ${s.shape}`);
  if (sum(x, -1).shape.join() !== "2") throw new Error("dim -1");
});

Deno.test("relu() matches max(x, 0) and its gradient away from 0", () => {
  // Values kept away from 0 so the finite difference never straddles the kink.
  const x = randomValues(gen, 60).map((v) => (v >= 0 ? v + 0.01 : v - 0.01));
  checkGradients("relu", {
    inputs: [{ data: x, shape: [3, 4, 5] }],
    op: relu,
    ref: (t) => t.map((v) => Math.max(v, 0)),
  });
});

Deno.test("relu() is 0 at -Infinity and keeps NaN, Infinity and the sign of nothing else", () => {
  const x = tensor(Float32Array.of(-Infinity, NaN, Infinity, -0, -2, 3), [6]);
  const y = [...relu(x).toArray()];
  if (!Object.is(y[0], 0) || !Number.isNaN(y[1]) || y[2] !== Infinity) {
    throw new Error(`relu gave ${y}`);
  }
  if (!Object.is(y[3], 0) || !Object.is(y[4], 0) || y[5] !== 3) {
    throw new Error(`relu gave ${y}`);
  }
});

Deno.test("elementwise ops name the op and the shapes when they cannot broadcast", () => {
  assertThrows(
    () => add(zeros([2, 3]), zeros([3, 2])),
    /add: shapes \[2, 3\] and \[3, 2\] cannot be broadcast together/,
  );
  assertThrows(
    () => mul(zeros([2, 1]), zeros([1, 3])),
    /mul: shapes \[2, 1\] and \[1, 3\] would both be broadcast/,
  );
  assertThrows(
    () => sum(zeros([2, 3]), 2),
    /sum: dimension 2 is out of range for shape \[2, 3\]/,
  );
  assertThrows(
    () => sub(zeros([2, 3, 4, 5]), zeros([2, 1, 4, 1])),
    /sub: broadcasting \[2, 3, 4, 5\] and \[2, 1, 4, 1\] alternates/,
  );
});
