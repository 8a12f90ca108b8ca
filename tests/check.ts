/**
 * Test helpers: closeness with stated tolerances, and gradient checks of
 * float32 ops against central finite differences of float64 references.
 */

import { AssertionError } from "node:assert/strict";
import { Generator, mul, scope, sum, type Tensor, tensor } from "../mod.ts";
import "./device.ts";

export interface Tolerance {
  /** Allowed error relative to each expected value. */
  rtol?: number;
  /** Allowed error relative to the largest expected magnitude. */
  atol?: number;
}

/**
 * Asserts |actual - expected| <= atol * max|expected| + rtol * |expected|
 * elementwise. Defaults suit float32 results of short sums (a few ulps of the
 * largest term). Reports the worst element.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  { rtol = 1e-5, atol = 1e-5 }: Tolerance = {},
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError({
      message: `${what}: ${actual.length} values, expected ${expected.length}`,
    });
  }
  let scale = 0;
  for (let i = 0; i < expected.length; i++) {
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    const allowed = atol * scale + rtol * Math.abs(expected[i]);
    if (!(err <= allowed) && (worst < 0 || err - allowed > worstExcess)) {
      worst = i;
      worstExcess = err - allowed;
    }
  }
  if (worst >= 0) {
    throw new AssertionError({
      message: `${what}: element ${worst} is ${actual[worst]}, expected ${
        expected[worst]
      } (scale ${scale}, rtol ${rtol}, atol ${atol})`,
    });
  }
}

/** Random float32-representable values, as float64. */
export function randomValues(
  gen: Generator,
  n: number,
  low = -1,
  high = 1,
): Float64Array {
  const values = new Float32Array(n);
  gen.fillUniform(values, low, high);
  return Float64Array.from(values);
}

export interface GradCase {
  /** Input values (float32-representable) and shapes. */
  inputs: { data: Float64Array; shape: number[]; grad?: boolean }[];
  /** The op under test on float32 tensors. */
  op: (...xs: Tensor[]) => Tensor;
  /** The float64 reference of the same function. */
  ref: (...xs: Float64Array[]) => Float64Array;
  /** Tolerance of the forward output against the reference. */
  forward?: Tolerance;
  /** Tolerance of the gradients against finite differences. */
  backward?: Tolerance;
  /** Finite-difference step (float64). */
  step?: number;
}

/**
 * Checks the op's forward against the reference, and its gradients (through
 * autograd with a random upstream gradient dy, i.e. of sum(op(x) * dy))
 * against central differences of sum(ref(x) * dy) in float64.
 */
export function checkGradients(
  name: string,
  c: GradCase,
  gen = new Generator(7),
): void {
  const expected = c.ref(...c.inputs.map((i) => i.data));
  const dy = randomValues(gen, expected.length);
  const { out, grads } = scope(() => {
    const xs = c.inputs.map((i) =>
      tensor(Float32Array.from(i.data), i.shape, {
        requiresGrad: i.grad ?? true,
      })
    );
    const y = c.op(...xs);
    const loss = sum(mul(y, tensor(Float32Array.from(dy), y.shape)));
    loss.backward();
    const grads = xs.map((x) => x.grad?.toArray() ?? null);
    const out = y.toArray();
    for (const x of xs) x.dispose();
    return { out, grads };
  });
  assertClose(out, expected, `${name} forward`, c.forward);

  const h = c.step ?? 1e-6;
  const objective = (xs: Float64Array[]) => {
    const y = c.ref(...xs);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * dy[i];
    return s;
  };
  c.inputs.forEach((input, q) => {
    if (input.grad === false) return;
    const xs = c.inputs.map((i) => Float64Array.from(i.data));
    const numeric = new Float64Array(input.data.length);
    for (let i = 0; i < numeric.length; i++) {
      const v = xs[q][i];
      xs[q][i] = v + h;
      const up = objective(xs);
      xs[q][i] = v - h;
      const down = objective(xs);
      xs[q][i] = v;
      numeric[i] = (up - down) / (2 * h);
    }
    const got = grads[q];
    if (got === null) {
      throw new AssertionError({
        message: `${name}: input ${q} got no gradient`,
      });
    }
    assertClose(
      got,
      numeric,
      `${name} gradient of input ${q}`,
      c.backward ?? { rtol: 1e-4, atol: 1e-4 },
    );
  });
}
