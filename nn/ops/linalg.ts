/**
 * Matrix products, the linear layer and the trace.
 *
 * @module
 */

import type { Backend } from "../backend.ts";
import { formatShape, recordGrad, Tensor } from "../tensor.ts";
import { backendOf, expectRank, shapesOf } from "./util.ts";

export interface MatmulOptions {
  /** Use the transpose of the first operand. */
  transA?: boolean;
  /** Use the transpose of the second operand. */
  transB?: boolean;
}

/** Rows and columns of op(t) for a 2-D tensor. */
function dims(t: Tensor, trans: boolean): [number, number] {
  return trans ? [t.shape[1], t.shape[0]] : [t.shape[0], t.shape[1]];
}

/** `alpha * op(a) op(b) + beta * out` into `out` (no autograd). */
function gemmInto(
  backend: Backend,
  a: Tensor,
  transA: boolean,
  b: Tensor,
  transB: boolean,
  out: Tensor,
  beta = 0,
): void {
  const [m, k] = dims(a, transA);
  const n = dims(b, transB)[1];
  backend.gemm({
    transA,
    transB,
    m,
    n,
    k,
    alpha: 1,
    a: a.buffer,
    aOffset: 0,
    lda: a.shape[1],
    b: b.buffer,
    bOffset: 0,
    ldb: b.shape[1],
    beta,
    c: out.buffer,
    cOffset: 0,
    ldc: n,
  });
}

function product(
  backend: Backend,
  a: Tensor,
  transA: boolean,
  b: Tensor,
  transB: boolean,
) {
  const out = Tensor.empty(backend, [dims(a, transA)[0], dims(b, transB)[1]]);
  gemmInto(backend, a, transA, b, transB, out);
  return out;
}

/** op(a) @ op(b) for 2-D tensors, where op transposes when asked. */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const tA = opts.transA ?? false;
  const tB = opts.transB ?? false;
  const backend = backendOf("matmul", a, b);
  expectRank("matmul", a, [2], "first operand");
  expectRank("matmul", b, [2], "second operand");
  if (dims(a, tA)[1] !== dims(b, tB)[0]) {
    throw new RangeError(
      `matmul: shapes ${shapesOf(a, b)}${tA ? " (first transposed)" : ""}${
        tB ? " (second transposed)" : ""
      } cannot be multiplied`,
    );
  }
  const out = product(backend, a, tA, b, tB);
  // d op(A) = g op(B)^T and d op(B) = op(A)^T g, transposed back when op did.
  return recordGrad(out, "matmul", [a, b], [a, b], (g, [sa, sb]) => [
    a.requiresGrad
      ? (tA
        ? product(backend, sb, tB, g, true)
        : product(backend, g, false, sb, !tB))
      : null,
    b.requiresGrad
      ? (tB
        ? product(backend, g, true, sa, tA)
        : product(backend, sa, !tA, g, false))
      : null,
  ]);
}

/**
 * PyTorch's `F.linear`: `x @ weight^T + bias` for x of shape [n, in], weight
 * [out, in] and bias [out].
 */
export function linear(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null = null,
): Tensor {
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const backend = backendOf("linear", ...inputs);
  expectRank("linear", x, [2]);
  expectRank("linear", weight, [2], "weight");
  const [n, inF] = x.shape;
  const outF = weight.shape[0];
  if (weight.shape[1] !== inF) {
    throw new RangeError(
      `linear: input ${formatShape(x.shape)} does not match weight ${
        formatShape(weight.shape)
      }`,
    );
  }
  if (bias && (bias.ndim !== 1 || bias.shape[0] !== outF)) {
    throw new RangeError(
      `linear: bias of shape ${formatShape(bias.shape)} does not match weight ${
        formatShape(weight.shape)
      }`,
    );
  }
  const out = Tensor.empty(backend, [n, outF]);
  if (bias) {
    backend.addTensor({
      alpha: 1,
      a: bias.buffer,
      aShape: [1, 1, outF],
      beta: 0,
      c: out.buffer,
      shape: [1, n, outF],
    });
  }
  gemmInto(backend, x, false, weight, true, out, bias ? 1 : 0);
  return recordGrad(out, "linear", inputs, [x, weight], (g, [sx, sw]) => {
    const grads: (Tensor | null)[] = [
      x.requiresGrad ? product(backend, g, false, sw, false) : null,
      weight.requiresGrad ? product(backend, g, true, sx, false) : null,
    ];
    if (bias) {
      let gb: Tensor | null = null;
      if (bias.requiresGrad) {
        gb = Tensor.empty(backend, bias.shape);
        backend.reduceSum({
          alpha: 1,
          x: g.buffer,
          shape: [1, n, outF],
          beta: 0,
          y: gb.buffer,
          yShape: [1, 1, outF],
        });
      }
      grads.push(gb);
    }
    return grads;
  });
}

/** The sum of the diagonal of a square matrix (a 0-D tensor). */
export function trace(x: Tensor): Tensor {
  expectRank("trace", x, [2]);
  const [m, n] = x.shape;
  if (m !== n) {
    throw new RangeError(
      `trace: expected a square matrix, got shape ${formatShape(x.shape)}`,
    );
  }
  const backend = x.backend;
  const ones = Tensor.empty(backend, [m]);
  backend.fill({ y: ones.buffer, value: 1 });
  const out = Tensor.empty(backend, []);
  backend.dot({
    n: m,
    x: x.buffer,
    xOffset: 0,
    incx: m + 1,
    y: ones.buffer,
    yOffset: 0,
    incy: 1,
    result: out.buffer,
    resultOffset: 0,
  });
  ones.dispose();
  return recordGrad(out, "trace", [x], (g) => {
    // g * I, built on the device so the gradient never visits the host.
    const gx = Tensor.empty(backend, x.shape);
    backend.fill({ y: gx.buffer, value: 0 });
    backend.fill({
      y: gx.buffer,
      value: 1,
      offset: 0,
      count: m,
      stride: m + 1,
    });
    backend.opTensor({
      op: "mul",
      alpha1: 1,
      a: gx.buffer,
      alpha2: 1,
      b: g.buffer,
      bShape: [1, 1, 1],
      beta: 0,
      c: gx.buffer,
      shape: [1, 1, m * m],
    });
    return [gx];
  });
}
