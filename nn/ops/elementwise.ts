/**
 * Elementwise arithmetic with PyTorch's broadcasting, and sums and means.
 *
 * @module
 */

import type { Backend, Dims3 } from "../backend.ts";
import { formatShape, recordGrad, Tensor } from "../tensor.ts";
import {
  backendOf,
  broadcastShapes,
  foldBroadcast,
  sameShape,
  shapesOf,
} from "./util.ts";

/** `alpha * g`, as a view when alpha is 1. */
function scaled(backend: Backend, g: Tensor, alpha: number): Tensor {
  if (alpha === 1) return g.viewAs(g.shape);
  const out = Tensor.empty(backend, g.shape);
  backend.scaleShift({
    x: g.buffer,
    y: out.buffer,
    length: g.size,
    scale: alpha,
    shift: 0,
  });
  return out;
}

/** Sums `alpha * g` down to a broadcast operand's folded shape. */
function reduceTo(
  backend: Backend,
  alpha: number,
  g: Tensor,
  shape: Dims3,
  small: Dims3,
  target: readonly number[],
): Tensor {
  const out = Tensor.empty(backend, target);
  backend.reduceSum({
    alpha,
    x: g.buffer,
    shape,
    beta: 0,
    y: out.buffer,
    yShape: small,
  });
  return out;
}

interface Folded {
  out: number[];
  shape: Dims3;
  small: Dims3;
  /** Which operand is the broadcast one (or "none" when shapes are equal). */
  broadcast: "a" | "b" | "none";
}

function fold(op: string, a: Tensor, b: Tensor): Folded {
  if (sameShape(a.shape, b.shape)) {
    const shape: Dims3 = [1, 1, a.size];
    return { out: [...a.shape], shape, small: shape, broadcast: "none" };
  }
  const out = broadcastShapes(a.shape, b.shape);
  const fail = () =>
    new RangeError(
      `${op}: shapes ${shapesOf(a, b)} cannot be broadcast together`,
    );
  if (out === null) throw fail();
  const broadcast = sameShape(out, a.shape)
    ? "b"
    : sameShape(out, b.shape)
    ? "a"
    : null;
  if (broadcast === null) {
    throw new RangeError(
      `${op}: shapes ${shapesOf(a, b)} would both be broadcast to ${
        formatShape(out)
      }; broadcast only one operand`,
    );
  }
  const f = foldBroadcast(out, (broadcast === "a" ? a : b).shape);
  if (f === null) {
    throw new RangeError(
      `${op}: broadcasting ${
        shapesOf(a, b)
      } alternates kept and broadcast dimensions more than three times; reshape first`,
    );
  }
  return { out, shape: f.shape, small: f.smallShape, broadcast };
}

function addLike(op: string, a: Tensor, b: Tensor, alphaB: number): Tensor {
  const backend = backendOf(op, a, b);
  const f = fold(op, a, b);
  const out = Tensor.empty(backend, f.out);
  // opTensor broadcasts its second operand, so the broadcast one goes second.
  if (f.broadcast === "a") {
    backend.opTensor({
      op: "add",
      alpha1: alphaB,
      a: b.buffer,
      alpha2: 1,
      b: a.buffer,
      bShape: f.small,
      beta: 0,
      c: out.buffer,
      shape: f.shape,
    });
  } else {
    backend.opTensor({
      op: "add",
      alpha1: 1,
      a: a.buffer,
      alpha2: alphaB,
      b: b.buffer,
      bShape: f.small,
      beta: 0,
      c: out.buffer,
      shape: f.shape,
    });
  }
  const grad = (g: Tensor, t: Tensor, alpha: number, isSmall: boolean) =>
    isSmall
      ? reduceTo(backend, alpha, g, f.shape, f.small, t.shape)
      : scaled(backend, g, alpha);
  return recordGrad(out, op, [a, b], (g) => [
    a.requiresGrad ? grad(g, a, 1, f.broadcast === "a") : null,
    b.requiresGrad ? grad(g, b, alphaB, f.broadcast === "b") : null,
  ]);
}

/** `a + b` with broadcasting. */
export function add(a: Tensor, b: Tensor): Tensor {
  return addLike("add", a, b, 1);
}

/** `a - b` with broadcasting. */
export function sub(a: Tensor, b: Tensor): Tensor {
  return addLike("sub", a, b, -1);
}

/** `a * b` elementwise with broadcasting. */
export function mul(a: Tensor, b: Tensor): Tensor {
  const backend = backendOf("mul", a, b);
  const f = fold("mul", a, b);
  const [big, small] = f.broadcast === "a" ? [b, a] : [a, b];
  const out = Tensor.empty(backend, f.out);
  backend.opTensor({
    op: "mul",
    alpha1: 1,
    a: big.buffer,
    alpha2: 1,
    b: small.buffer,
    bShape: f.small,
    beta: 0,
    c: out.buffer,
    shape: f.shape,
  });
  const saved = [
    big.requiresGrad ? small : null,
    small.requiresGrad ? big : null,
  ]
    .filter((t): t is Tensor => t !== null);
  return recordGrad(out, "mul", [a, b], saved, (g, kept) => {
    const [sSmall, sBig] = big.requiresGrad ? kept : [null, kept[0]];
    // d(big) = g * small (broadcast); d(small) = sum over broadcast dims of g * big.
    const gBig = big.requiresGrad ? Tensor.empty(backend, big.shape) : null;
    if (gBig) {
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: g.buffer,
        alpha2: 1,
        b: sSmall!.buffer,
        bShape: f.small,
        beta: 0,
        c: gBig.buffer,
        shape: f.shape,
      });
    }
    let gSmall: Tensor | null = null;
    if (small.requiresGrad) {
      const prod = Tensor.empty(backend, big.shape);
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: g.buffer,
        alpha2: 1,
        b: sBig!.buffer,
        bShape: f.shape,
        beta: 0,
        c: prod.buffer,
        shape: f.shape,
      });
      if (f.broadcast === "none") {
        gSmall = prod;
      } else {
        gSmall = reduceTo(backend, 1, prod, f.shape, f.small, small.shape);
        prod.dispose();
      }
    }
    return f.broadcast === "a" ? [gSmall, gBig] : [gBig, gSmall];
  });
}

/** `alpha * x + beta` elementwise. */
export function affine(x: Tensor, alpha: number, beta: number): Tensor {
  const backend = x.backend;
  const out = Tensor.empty(backend, x.shape);
  backend.scaleShift({
    x: x.buffer,
    y: out.buffer,
    length: x.size,
    scale: alpha,
    shift: beta,
  });
  return recordGrad(out, "affine", [x], (g) => [scaled(backend, g, alpha)]);
}

/** `x * s` for a number s. */
export function mulScalar(x: Tensor, s: number): Tensor {
  return affine(x, s, 0);
}

/** `x + s` for a number s. */
export function addScalar(x: Tensor, s: number): Tensor {
  return affine(x, 1, s);
}

function reduceDims(
  op: string,
  x: Tensor,
  dim: number | undefined,
  keepDim: boolean,
): { shape: Dims3; small: Dims3; out: number[]; count: number } {
  if (dim === undefined) {
    return { shape: [1, 1, x.size], small: [1, 1, 1], out: [], count: x.size };
  }
  const d = dim < 0 ? dim + x.ndim : dim;
  if (!Number.isInteger(d) || d < 0 || d >= x.ndim) {
    throw new RangeError(
      `${op}: dimension ${dim} is out of range for shape ${
        formatShape(x.shape)
      }`,
    );
  }
  const before = x.shape.slice(0, d).reduce((p, q) => p * q, 1);
  const after = x.shape.slice(d + 1).reduce((p, q) => p * q, 1);
  const out = [...x.shape];
  if (keepDim) out[d] = 1;
  else out.splice(d, 1);
  return {
    shape: [before, x.shape[d], after],
    small: [before, 1, after],
    out,
    count: x.shape[d],
  };
}

function sumScaled(
  op: string,
  x: Tensor,
  dim: number | undefined,
  keepDim: boolean,
  mean: boolean,
) {
  const backend = x.backend;
  const r = reduceDims(op, x, dim, keepDim);
  const alpha = mean ? 1 / r.count : 1;
  const out = Tensor.empty(backend, r.out);
  backend.reduceSum({
    alpha,
    x: x.buffer,
    shape: r.shape,
    beta: 0,
    y: out.buffer,
    yShape: r.small,
  });
  return recordGrad(out, op, [x], (g) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.addTensor({
      alpha,
      a: g.buffer,
      aShape: r.small,
      beta: 0,
      c: gx.buffer,
      shape: r.shape,
    });
    return [gx];
  });
}

/** Sum of all elements (a 0-D tensor), or over one dimension. */
export function sum(x: Tensor, dim?: number, keepDim = false): Tensor {
  return sumScaled("sum", x, dim, keepDim, false);
}

/** Mean of all elements (a 0-D tensor), or over one dimension. */
export function mean(x: Tensor, dim?: number, keepDim = false): Tensor {
  return sumScaled("mean", x, dim, keepDim, true);
}
