/**
 * Activations.
 *
 * @module
 */

import { recordGrad, Tensor } from "../tensor.ts";

/** max(x, 0) elementwise. */
export function relu(x: Tensor): Tensor {
  const backend = x.backend;
  const out = Tensor.empty(backend, x.shape);
  backend.reluForward({ x: x.buffer, y: out.buffer, length: x.size });
  return recordGrad(out, "relu", [x], (g) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.reluBackward({
      y: out.buffer,
      dy: g.buffer,
      dx: gx.buffer,
      length: x.size,
    });
    return [gx];
  });
}
