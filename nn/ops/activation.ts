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
  backend.reluForward(x.buffer, out.buffer, x.size);
  return recordGrad(out, "relu", [x], (g) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.reluBackward(out.buffer, g.buffer, gx.buffer, x.size);
    return [gx];
  });
}
