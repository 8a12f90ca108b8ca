/**
 * Activations.
 *
 * @module
 */

import { isGradEnabled, needsGrad, recordGrad, Tensor } from "../tensor.ts";
import { backendOf, sameShape, shapesOf } from "./util.ts";

/** max(x, 0) elementwise. */
export function relu(x: Tensor): Tensor {
  const backend = x.backend;
  const out = Tensor.empty(backend, x.shape);
  backend.reluForward({ x: x.buffer, y: out.buffer, length: x.size });
  // The output, not the input: y > 0 where x > 0, and an in-place ReLU
  // that overwrites x can still be differentiated.
  return recordGrad(out, "relu", [x], [out], (g, [y]) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.reluBackward({
      y: y.buffer,
      dy: g.buffer,
      dx: gx.buffer,
      length: x.size,
    });
    return [gx];
  });
}

/** dx = 0 where y <= 0, else dy, as a new tensor. */
export function reluGrad(g: Tensor, y: Tensor): Tensor {
  const gx = Tensor.empty(g.backend, y.shape);
  g.backend.reluBackward({
    y: y.buffer,
    dy: g.buffer,
    dx: gx.buffer,
    length: y.size,
  });
  return gx;
}

/** Refuses to overwrite a tensor whose own gradient is wanted. */
function checkInPlace(op: string, x: Tensor): void {
  if (x.requiresGrad && x.gradFn === null && isGradEnabled()) {
    throw new Error(
      `${op}: a leaf tensor that requires grad cannot be changed in place`,
    );
  }
}

/**
 * max(x, 0) written over x's own storage, as PyTorch's `relu_` and
 * torchvision's `ReLU(inplace=True)`: no new memory. Returns a tensor over
 * that storage that carries the op in its history. x keeps its old place in
 * the graph, so it may no longer enter a recorded op (that throws); an
 * earlier op that saved x for its backward finds it changed and that
 * backward throws, as PyTorch's version counter makes it.
 */
export function reluInPlace(x: Tensor): Tensor {
  checkInPlace("reluInPlace", x);
  x.backend.reluForward({ x: x.buffer, y: x.buffer, length: x.size });
  x.markModified();
  const out = x.viewAs(x.shape);
  if (!needsGrad([x])) return out;
  recordGrad(out, "reluInPlace", [x], [out], (g, [y]) => [reluGrad(g, y)]);
  x.supersede("reluInPlace");
  return out;
}

/**
 * max(a + b, 0) for two tensors of one shape, written over a's storage: a
 * residual block's shortcut sum and its ReLU in one op and no new memory.
 * a is taken over as `reluInPlace` takes over x; b is only read.
 */
export function addReluInPlace(a: Tensor, b: Tensor): Tensor {
  const backend = backendOf("addReluInPlace", a, b);
  if (!sameShape(a.shape, b.shape)) {
    throw new RangeError(
      `addReluInPlace: shapes ${shapesOf(a, b)} differ; it does not broadcast`,
    );
  }
  checkInPlace("addReluInPlace", a);
  const shape = [1, 1, a.size] as const;
  backend.opTensor({
    op: "add",
    alpha1: 1,
    a: a.buffer,
    alpha2: 1,
    b: b.buffer,
    bShape: shape,
    beta: 0,
    c: a.buffer,
    shape,
    relu: true,
  });
  a.markModified();
  const out = a.viewAs(a.shape);
  if (!needsGrad([a, b])) return out;
  recordGrad(out, "addReluInPlace", [a, b], [out], (g, [y]) => {
    const gy = reluGrad(g, y);
    return [gy, gy.viewAs(gy.shape)];
  });
  a.supersede("addReluInPlace");
  return out;
}
