import { Generator, logDetLoss, mecLoss, scope, tensor } from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import { checkGradients, randomValues } from "./check.ts";
import { matmulRef, normalizeRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(41);

/** C = normalize(p) normalize(z)^T / lamdaInv in float64 (batch form). */
function correlationRef(
  p: Float64Array,
  z: Float64Array,
  m: number,
  d: number,
  lamdaInv: number,
): Float64Array {
  const c = matmulRef(
    normalizeRef(p, m, d, 1e-12),
    [m, d],
    normalizeRef(z, m, d, 1e-12),
    [m, d],
    false,
    true,
  );
  return c.map((v) => v / lamdaInv);
}

function traceRef(a: Float64Array, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[i * n + i];
  return s;
}

function seriesRef(
  p: Float64Array,
  z: Float64Array,
  m: number,
  d: number,
  lamdaInv: number,
  order: number,
): number {
  const c = correlationRef(p, z, m, d, lamdaInv);
  let power = c;
  let total = traceRef(c, m);
  for (let k = 2; k <= order; k++) {
    power = matmulRef(power, [m, m], c, [m, m]);
    total += ((k % 2 === 0 ? -1 : 1) * traceRef(power, m)) / k;
  }
  return total;
}

function value(t: () => ReturnType<typeof tensor>): number {
  return scope(() => t().item());
}

Deno.test("batch-wise and feature-wise forms agree for every order (Sylvester), m != d", () => {
  for (const [m, d] of [[5, 3], [3, 7]]) {
    const p = tensor(Float32Array.from(randomValues(gen, m * d)), [m, d]);
    const z = tensor(Float32Array.from(randomValues(gen, m * d)), [m, d]);
    for (let order = 1; order <= 6; order++) {
      const opts = { lamdaInv: 0.7, order };
      const batch = value(() => mecLoss(p, z, { ...opts, form: "batch" }));
      const feature = value(() => mecLoss(p, z, { ...opts, form: "feature" }));
      // Same traces, different float32 products: agree to float32 rounding.
      assert.ok(
        Math.abs(batch - feature) <= 1e-5 * Math.max(1, Math.abs(batch)),
        `m ${m} d ${d} order ${order}: ${batch} vs ${feature}`,
      );
    }
  }
});

Deno.test("the series approaches logDetLoss with order, within the Taylor remainder bound", () => {
  const [m, d] = [6, 4];
  const pv = randomValues(gen, m * d);
  const zv = randomValues(gen, m * d);
  const lamdaInv = 2 * m; // ||C||_F <= m / lamdaInv = 0.5
  const c = correlationRef(pv, zv, m, d, lamdaInv);
  const q = Math.sqrt(c.reduce((s, v) => s + v * v, 0));
  assert.ok(q < 1);
  const p = tensor(Float32Array.from(pv), [m, d]);
  const z = tensor(Float32Array.from(zv), [m, d]);
  const exact = value(() => logDetLoss(p, z, { lamdaInv }));
  let previous = Infinity;
  for (let order = 1; order <= 8; order++) {
    const series = value(() => mecLoss(p, z, { lamdaInv, order }));
    // |tr(C^k)| <= ||C||_F^k, so the tail is at most q^(n+1) / ((n+1)(1-q)).
    const bound = q ** (order + 1) / ((order + 1) * (1 - q));
    const error = Math.abs(series - exact);
    assert.ok(
      error <= bound + 2e-6,
      `order ${order}: error ${error} exceeds the bound ${bound}`,
    );
    assert.ok(error <= previous + 2e-6, `order ${order}: the error grew`);
    previous = error;
  }
  assert.ok(previous < 1e-4);
});

Deno.test("mecLoss() gradients with respect to p and z match float64 finite differences", () => {
  for (
    const [m, d, order, form] of [[5, 3, 4, "batch"], [4, 6, 3, "feature"], [
      3,
      3,
      1,
      "batch",
    ]] as const
  ) {
    checkGradients(`mecLoss m ${m} d ${d} order ${order} ${form}`, {
      inputs: [{ data: randomValues(gen, m * d), shape: [m, d] }, {
        data: randomValues(gen, m * d),
        shape: [m, d],
      }],
      op: (p, z) => mecLoss(p, z, { lamdaInv: 0.8, order, form }),
      ref: (p, z) => Float64Array.of(seriesRef(p, z, m, d, 0.8, order)),
    });
  }
});

Deno.test("logDetLoss() gradients match float64 finite differences", () => {
  const [m, d] = [4, 3];
  checkGradients("logDetLoss", {
    inputs: [{ data: randomValues(gen, m * d), shape: [m, d] }, {
      data: randomValues(gen, m * d),
      shape: [m, d],
    }],
    op: (p, z) => logDetLoss(p, z, { lamdaInv: 2 }),
    ref: (p, z) => {
      const c = correlationRef(p, z, m, d, 2);
      for (let i = 0; i < m; i++) c[i * m + i] += 1;
      // det of a 4x4 by cofactor-free elimination in float64.
      let det = 1;
      const a = Float64Array.from(c);
      for (let k = 0; k < m; k++) {
        let piv = k;
        for (let i = k + 1; i < m; i++) {
          if (Math.abs(a[i * m + k]) > Math.abs(a[piv * m + k])) piv = i;
        }
        if (piv !== k) {
          for (let j = 0; j < m; j++) {
            [a[k * m + j], a[piv * m + j]] = [a[piv * m + j], a[k * m + j]];
          }
          det = -det;
        }
        det *= a[k * m + k];
        for (let i = k + 1; i < m; i++) {
          const f = a[i * m + k] / a[k * m + k];
          for (let j = k; j < m; j++) a[i * m + j] -= f * a[k * m + j];
        }
      }
      return Float64Array.of(Math.log(det));
    },
  });
});

Deno.test("order 1 is the sum of cosines / lamdaInv; order 2 subtracts tr(C^2) / 2 (by hand)", () => {
  // Rows chosen so the cosines are easy: p0 = (1, 0), p1 = (0, 2); z0 = (1, 1), z1 = (0, -3).
  const p = tensor([1, 0, 0, 2], [2, 2]);
  const z = tensor([1, 1, 0, -3], [2, 2]);
  const s = Math.SQRT1_2;
  // C = [[cos(p0,z0), cos(p0,z1)], [cos(p1,z0), cos(p1,z1)]] / 2 = [[s, 0], [s, -1]] / 2.
  const c = [[s / 2, 0], [s / 2, -0.5]];
  const tr1 = c[0][0] + c[1][1];
  const tr2 = c[0][0] * c[0][0] + 2 * c[0][1] * c[1][0] + c[1][1] * c[1][1];
  const order1 = value(() => mecLoss(p, z, { lamdaInv: 2, order: 1 }));
  const order2 = value(() => mecLoss(p, z, { lamdaInv: 2, order: 2 }));
  assert.ok(Math.abs(order1 - (s - 1) / 2) < 1e-6, `order 1: ${order1}`);
  assert.ok(Math.abs(order1 - tr1) < 1e-6);
  assert.ok(Math.abs(order2 - (tr1 - tr2 / 2)) < 1e-6, `order 2: ${order2}`);
});

Deno.test("mecLoss() rejects mismatched shapes and bad settings", () => {
  const a = tensor(new Float32Array(6), [2, 3]);
  const b = tensor(new Float32Array(6), [3, 2]);
  assertThrows(
    () => mecLoss(a, b, { lamdaInv: 1 }),
    /mecLoss: expected two matrices of the same shape \[m, d\], got \[2, 3\] and \[3, 2\]/,
  );
  assertThrows(
    () => mecLoss(a, a, { lamdaInv: 0 }),
    /lamdaInv must be positive/,
  );
  assertThrows(
    () => mecLoss(a, a, { lamdaInv: 1, order: 0 }),
    /order must be a positive integer/,
  );
});
