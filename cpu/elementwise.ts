/**
 * Elementwise kernels and reductions on the [d0, d1, d2] form of the backend
 * interface. Inner loops are branchless and run over contiguous memory; the
 * broadcast operand's innermost stride is either 1 or 0, chosen outside the
 * loop. Sums accumulate in float64 (JavaScript numbers).
 *
 * @module
 */

import type { BinaryOp, Dims3, UnaryOp } from "../nn/backend.ts";

/** Element strides of a broadcast operand of shape `b` inside `shape`. */
function broadcastStrides(b: Dims3, shape: Dims3): [number, number, number] {
  const s2 = b[2] === 1 && shape[2] !== 1 ? 0 : 1;
  const s1 = b[1] === 1 && shape[1] !== 1 ? 0 : b[2];
  const s0 = b[0] === 1 && shape[0] !== 1 ? 0 : b[1] * b[2];
  return [s0, s1, s2];
}

export function opTensor(
  op: BinaryOp,
  alpha1: number,
  a: Float32Array,
  alpha2: number,
  b: Float32Array,
  bShape: Dims3,
  beta: number,
  c: Float32Array,
  shape: Dims3,
): void {
  const [d0, d1, d2] = shape;
  const [s0, s1, s2] = broadcastStrides(bShape, shape);
  for (let i0 = 0; i0 < d0; i0++) {
    for (let i1 = 0; i1 < d1; i1++) {
      const base = (i0 * d1 + i1) * d2;
      const bb = i0 * s0 + i1 * s1;
      if (s2 === 1) {
        binaryRow(op, alpha1, a, alpha2, b, bb, beta, c, base, d2);
      } else {
        binaryScalar(op, alpha1, a, alpha2 * b[bb], beta, c, base, d2);
      }
    }
  }
}

function binaryRow(
  op: BinaryOp,
  alpha1: number,
  a: Float32Array,
  alpha2: number,
  b: Float32Array,
  bb: number,
  beta: number,
  c: Float32Array,
  base: number,
  len: number,
): void {
  const off = bb - base;
  const end = base + len;
  switch (op) {
    case "add":
      if (beta === 0) {
        for (let j = base; j < end; j++) {
          c[j] = alpha1 * a[j] + alpha2 * b[j + off];
        }
      } else {
        for (let j = base; j < end; j++) {
          c[j] = alpha1 * a[j] + alpha2 * b[j + off] + beta * c[j];
        }
      }
      return;
    case "mul": {
      const k = alpha1 * alpha2;
      if (beta === 0) {
        for (let j = base; j < end; j++) c[j] = k * a[j] * b[j + off];
      } else {
        for (let j = base; j < end; j++) {
          c[j] = k * a[j] * b[j + off] + beta * c[j];
        }
      }
      return;
    }
    case "min":
    case "max": {
      const f = op === "min" ? Math.min : Math.max;
      for (let j = base; j < end; j++) {
        const prev = beta === 0 ? 0 : beta * c[j];
        c[j] = f(alpha1 * a[j], alpha2 * b[j + off]) + prev;
      }
      return;
    }
  }
}

function binaryScalar(
  op: BinaryOp,
  alpha1: number,
  a: Float32Array,
  bv: number,
  beta: number,
  c: Float32Array,
  base: number,
  len: number,
): void {
  const end = base + len;
  switch (op) {
    case "add":
      if (beta === 0) {
        for (let j = base; j < end; j++) c[j] = alpha1 * a[j] + bv;
      } else {for (let j = base; j < end; j++) {
          c[j] = alpha1 * a[j] + bv + beta * c[j];
        }}
      return;
    case "mul": {
      const k = alpha1 * bv;
      if (beta === 0) { for (let j = base; j < end; j++) c[j] = k * a[j]; }
      else for (let j = base; j < end; j++) c[j] = k * a[j] + beta * c[j];
      return;
    }
    case "min":
    case "max": {
      const f = op === "min" ? Math.min : Math.max;
      for (let j = base; j < end; j++) {
        const prev = beta === 0 ? 0 : beta * c[j];
        c[j] = f(alpha1 * a[j], bv) + prev;
      }
      return;
    }
  }
}

export function addTensor(
  alpha: number,
  a: Float32Array,
  aShape: Dims3,
  beta: number,
  c: Float32Array,
  shape: Dims3,
): void {
  const [d0, d1, d2] = shape;
  const [s0, s1, s2] = broadcastStrides(aShape, shape);
  for (let i0 = 0; i0 < d0; i0++) {
    for (let i1 = 0; i1 < d1; i1++) {
      const base = (i0 * d1 + i1) * d2;
      const ab = i0 * s0 + i1 * s1;
      const end = base + d2;
      if (s2 === 1) {
        const off = ab - base;
        if (beta === 0) {
          for (let j = base; j < end; j++) c[j] = alpha * a[j + off];
        } else {for (let j = base; j < end; j++) {
            c[j] = alpha * a[j + off] + beta * c[j];
          }}
      } else {
        const v = alpha * a[ab];
        if (beta === 0) c.fill(v, base, end);
        else for (let j = base; j < end; j++) c[j] = v + beta * c[j];
      }
    }
  }
}

export function reduceSum(
  alpha: number,
  x: Float32Array,
  shape: Dims3,
  beta: number,
  y: Float32Array,
  outShape: Dims3,
): void {
  const [d0, d1, d2] = shape;
  const [s0, s1, s2] = broadcastStrides(outShape, shape);
  const size = outShape[0] * outShape[1] * outShape[2];
  const acc = new Float64Array(size);
  for (let i0 = 0; i0 < d0; i0++) {
    for (let i1 = 0; i1 < d1; i1++) {
      const base = (i0 * d1 + i1) * d2;
      const ob = i0 * s0 + i1 * s1;
      if (s2 === 0) acc[ob] += sumRange(x, base, base + d2);
      else addRange(acc, ob, x, base, d2);
    }
  }
  if (beta === 0) { for (let i = 0; i < size; i++) y[i] = alpha * acc[i]; }
  else for (let i = 0; i < size; i++) y[i] = alpha * acc[i] + beta * y[i];
}

/*
 * Hot loops live in small functions called once per row: V8 optimises those
 * as a whole, while a long loop nested in a function called once runs as
 * slower on-stack-replaced code.
 */

/** Sum of x[from..to) in float64, four independent chains for throughput. */
export function sumRange(x: Float32Array, from: number, to: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let j = from;
  for (; j + 3 < to; j += 4) {
    s0 += x[j];
    s1 += x[j + 1];
    s2 += x[j + 2];
    s3 += x[j + 3];
  }
  for (; j < to; j++) s0 += x[j];
  return (s0 + s1) + (s2 + s3);
}

/** acc[at + j] += x[from + j] for j < length. */
function addRange(
  acc: Float64Array,
  at: number,
  x: Float32Array,
  from: number,
  length: number,
): void {
  const off = at - from;
  for (let j = from; j < from + length; j++) acc[j + off] += x[j];
}

export function scaleShift(
  x: Float32Array,
  y: Float32Array,
  length: number,
  alpha: number,
  beta: number,
): void {
  for (let i = 0; i < length; i++) y[i] = alpha * x[i] + beta;
}

export function axpby(
  length: number,
  alpha: number,
  x: Float32Array,
  beta: number,
  y: Float32Array,
): void {
  if (beta === 0) { for (let i = 0; i < length; i++) y[i] = alpha * x[i]; }
  else for (let i = 0; i < length; i++) y[i] = alpha * x[i] + beta * y[i];
}

export function unary(
  op: UnaryOp,
  x: Float32Array,
  y: Float32Array,
  length: number,
): void {
  switch (op) {
    case "sqrt":
      for (let i = 0; i < length; i++) y[i] = Math.sqrt(x[i]);
      return;
    case "rsqrt":
      for (let i = 0; i < length; i++) y[i] = 1 / Math.sqrt(x[i]);
      return;
    case "square":
      for (let i = 0; i < length; i++) y[i] = x[i] * x[i];
      return;
    case "exp":
      for (let i = 0; i < length; i++) y[i] = Math.exp(x[i]);
      return;
    case "log":
      for (let i = 0; i < length; i++) y[i] = Math.log(x[i]);
      return;
    case "abs":
      for (let i = 0; i < length; i++) y[i] = Math.abs(x[i]);
      return;
  }
}

export function reluForward(
  x: Float32Array,
  y: Float32Array,
  length: number,
): void {
  // Branchless: a data-dependent branch mispredicts on random signs.
  // (v + |v|) / 2 is exact in float64 and keeps NaN; -Inf, where it would
  // be -Inf + Inf = NaN, is first raised to the lowest finite float32.
  for (let i = 0; i < length; i++) {
    const v = Math.max(x[i], -3.4028234663852886e38);
    y[i] = (v + Math.abs(v)) * 0.5;
  }
}

export function reluBackward(
  y: Float32Array,
  dy: Float32Array,
  dx: Float32Array,
  length: number,
): void {
  // PyTorch's rule: dx = 0 where y <= 0, else dy (a NaN y passes it). On
  // the bits v: y > 0 exactly when v is a positive integer, and then -v and
  // ~v are both negative (for -0, v = INT_MIN, ~v is not); y is NaN when
  // its magnitude bits exceed +Inf's. The sign of each test, spread by
  // >> 31, makes a mask: dx = dy & mask copies dy exactly or writes +0,
  // without a data-dependent branch.
  const yb = bits(y);
  const dyb = bits(dy);
  const dxb = bits(dx);
  for (let i = 0; i < length; i++) {
    const v = yb[i];
    const positive = (-v & ~v) >> 31;
    const nan = (0x7f800000 - (v & 0x7fffffff)) >> 31;
    dxb[i] = dyb[i] & (positive | nan);
  }
}

/** The same memory seen as 32-bit integers. */
export function bits(a: Float32Array): Int32Array {
  return new Int32Array(a.buffer, a.byteOffset, a.length);
}

export function dot(
  length: number,
  x: Float32Array,
  xOffset: number,
  incx: number,
  y: Float32Array,
  yOffset: number,
  incy: number,
): number {
  let sum = 0;
  for (let i = 0; i < length; i++) {
    sum += x[xOffset + i * incx] * y[yOffset + i * incy];
  }
  return sum;
}
