import assert from "node:assert/strict";
import { convShape as shape } from "./conv_desc.ts";
import type { ConvDesc } from "../nn/backend.ts";
import { blas } from "../cpu/blas.ts";
import {
  conv2dBackwardData,
  conv2dBackwardFilter,
  conv2dForward,
  type Scratch,
} from "../cpu/conv.ts";

/** Unit roundoff of float32 (round to nearest). */
const U = 2 ** -24;

/**
 * The shapes tested, each as batch, input channels, [h, w], output channels,
 * [r, s], [strideH, strideW], [padH, padW].
 */
const SHAPES: ConvDesc[] = [
  shape(1, 3, [7, 9], 4, [3, 3], [1, 1], [1, 1]),
  shape(3, 5, [7, 9], 6, [3, 3], [2, 2], [1, 1]),
  shape(2, 3, [11, 13], 4, [7, 7], [2, 2], [3, 3]),
  shape(3, 5, [7, 9], 4, [1, 1], [1, 1], [0, 0]),
  // The downsample of a bottleneck block.
  shape(3, 5, [7, 9], 6, [1, 1], [2, 2], [0, 0]),
  // Output positions that see nothing but padding.
  shape(2, 3, [4, 5], 2, [1, 1], [1, 1], [3, 3]),
  shape(1, 3, [5, 6], 2, [3, 3], [1, 1], [0, 0]),
  shape(3, 3, [8, 7], 4, [5, 5], [3, 3], [2, 2]),
  // Kernels wider than the image.
  shape(2, 3, [3, 2], 3, [5, 5], [2, 2], [2, 2]),
  shape(2, 5, [1, 1], 3, [3, 3], [1, 1], [1, 1]),
  shape(2, 3, [7, 9], 5, [1, 3], [1, 2], [0, 1]),
  shape(3, 5, [9, 7], 4, [3, 1], [2, 1], [2, 0]),
  shape(2, 16, [15, 15], 8, [3, 3], [2, 2], [1, 1]),
  // Images large enough for the row-tap form (see cpu/conv.ts).
  shape(2, 3, [24, 26], 4, [3, 3], [1, 1], [1, 1]),
  shape(1, 2, [23, 25], 3, [5, 5], [1, 1], [2, 2]),
  shape(1, 2, [48, 50], 3, [3, 3], [2, 2], [1, 1]),
  shape(2, 3, [30, 20], 2, [3, 1], [1, 1], [0, 0]),
  // Images small enough to be grouped, 5 of them in uneven groups.
  shape(5, 4, [9, 10], 3, [1, 1], [1, 1], [0, 0]),
  shape(5, 3, [20, 22], 4, [3, 3], [1, 1], [1, 1]),
];

/** "stride 2, padding 3, 7x7, batch 2, 3>4 channels, 11x13" */
function describe(d: ConvDesc): string {
  const pair = (a: number, b: number) => a === b ? `${a}` : `(${a}, ${b})`;
  return `stride ${pair(d.strideH, d.strideW)}, ` +
    `padding ${pair(d.padH, d.padW)}, ${d.r}x${d.s}, batch ${d.n}, ` +
    `${d.c}>${d.k} channels, ${d.h}x${d.w}`;
}

/** A seeded generator of uniform values in [-1, 1) (mulberry32). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 31 - 1;
  };
}

function filled(length: number, next: () => number): Float32Array {
  const a = new Float32Array(length);
  for (let i = 0; i < length; i++) a[i] = next();
  return a;
}

/**
 * Scratch whose contents are NaN on every call, so that a kernel relying on
 * zeroed or leftover scratch fails.
 */
function poisonedScratch(): Scratch {
  let buf = new Float32Array(0);
  return (length) => {
    if (buf.length < length) buf = new Float32Array(length);
    buf.fill(NaN);
    return buf;
  };
}

/**
 * Visits every term of the definition
 * y[n,k,i,j] = sum over c,r,s of x[n,c,i*sh+r-ph,j*sw+s-pw] * w[k,c,r,s]
 * whose x element lies inside the image (padding contributes zero), passing
 * the flat indices of x, w and y.
 */
function forEachTerm(
  d: ConvDesc,
  visit: (xi: number, wi: number, yi: number) => void,
): void {
  for (let n = 0; n < d.n; n++) {
    for (let k = 0; k < d.k; k++) {
      for (let i = 0; i < d.oh; i++) {
        for (let j = 0; j < d.ow; j++) {
          const yi = ((n * d.k + k) * d.oh + i) * d.ow + j;
          for (let c = 0; c < d.c; c++) {
            for (let r = 0; r < d.r; r++) {
              const y = i * d.strideH + r - d.padH;
              if (y < 0 || y >= d.h) continue;
              for (let s = 0; s < d.s; s++) {
                const x = j * d.strideW + s - d.padW;
                if (x < 0 || x >= d.w) continue;
                const xi = ((n * d.c + c) * d.h + y) * d.w + x;
                const wi = ((k * d.c + c) * d.r + r) * d.s + s;
                visit(xi, wi, yi);
              }
            }
          }
        }
      }
    }
  }
}

/** Float64 sums and magnitude sums of products a[ai] * b[bi] into out[oi]. */
function reference(
  length: number,
  d: ConvDesc,
  pick: (xi: number, wi: number, yi: number) => [number, number, number],
  a: Float32Array,
  b: Float32Array,
): { sum: Float64Array; magnitude: Float64Array } {
  const sum = new Float64Array(length);
  const magnitude = new Float64Array(length);
  forEachTerm(d, (xi, wi, yi) => {
    const [ai, bi, oi] = pick(xi, wi, yi);
    const p = a[ai] * b[bi];
    sum[oi] += p;
    magnitude[oi] += Math.abs(p);
  });
  return { sum, magnitude };
}

/**
 * A float32 sum of m products is within (m + 1) * U * sum|products| of the
 * exact sum whatever the order of the additions (Higham, "Accuracy and
 * Stability of Numerical Algorithms", 3.1), and GEMM blocking and the kernels'
 * zero padding only reorder or add exact zeros; inputs are the same float32
 * values on both sides. `terms` bounds m.
 */
function assertClose(
  got: Float32Array,
  want: { sum: Float64Array; magnitude: Float64Array },
  terms: number,
): void {
  assert.equal(got.length, want.sum.length);
  for (let i = 0; i < got.length; i++) {
    const tol = (terms + 1) * U * want.magnitude[i];
    const err = Math.abs(got[i] - want.sum[i]);
    if (!(err <= tol)) {
      assert.fail(
        `element ${i}: got ${got[i]}, want ${want.sum[i]} (tolerance ${tol})`,
      );
    }
  }
}

const lib = blas();

for (const [index, d] of SHAPES.entries()) {
  const name = describe(d);
  const next = random(1 + index);
  const x = filled(d.n * d.c * d.h * d.w, next);
  const w = filled(d.k * d.c * d.r * d.s, next);
  const dy = filled(d.n * d.k * d.oh * d.ow, next);

  Deno.test(`conv2dForward() matches the float64 reference for ${name}`, () => {
    const y = new Float32Array(dy.length).fill(NaN);
    conv2dForward(lib, poisonedScratch(), x, w, y, d);
    const want = reference(y.length, d, (xi, wi, yi) => [xi, wi, yi], x, w);
    assertClose(y, want, d.c * d.r * d.s);
  });

  Deno.test(`conv2dBackwardData() matches the float64 reference for ${name}`, () => {
    const dx = new Float32Array(x.length).fill(NaN);
    conv2dBackwardData(lib, poisonedScratch(), dy, w, dx, d);
    const want = reference(dx.length, d, (xi, wi, yi) => [yi, wi, xi], dy, w);
    assertClose(dx, want, d.k * d.r * d.s);
  });

  Deno.test(`conv2dBackwardFilter() matches the float64 reference for ${name}`, () => {
    const dw = new Float32Array(w.length).fill(NaN);
    conv2dBackwardFilter(lib, poisonedScratch(), x, dy, dw, d);
    const want = reference(dw.length, d, (xi, wi, yi) => [yi, xi, wi], dy, x);
    assertClose(dw, want, d.n * d.oh * d.ow);
  });
}
