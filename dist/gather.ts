/**
 * The gather of MEC's official code (`GatherLayer`): every rank's rows,
 * concatenated in rank order, with gradients flowing back through the
 * gather. Each rank computes the loss over the whole global batch, so the
 * gradient of its rows is the sum over ranks of each rank's gradient of the
 * gathered matrix: an all-reduce, then this rank's slice.
 *
 * @module
 */

import { formatShape, recordGrad, Tensor } from "../nn/tensor.ts";
import type { Communicator } from "./communicator.ts";

/** [b, ...] on each rank -> [size * b, ...], rank r's rows at r * b. */
export function gatherRows(comm: Communicator, x: Tensor): Tensor {
  if (x.ndim < 1) {
    throw new RangeError(
      `gatherRows: expected at least one dimension, got ${
        formatShape(x.shape)
      }`,
    );
  }
  const backend = x.backend;
  const [rows, ...rest] = x.shape;
  const out = Tensor.empty(backend, [rows * comm.size, ...rest]);
  comm.allGather(x.buffer, out.buffer, x.size);
  return recordGrad(out, "gatherRows", [x], (g) => {
    const sum = Tensor.empty(backend, g.shape);
    backend.copy({
      src: g.buffer,
      srcOffset: 0,
      dst: sum.buffer,
      dstOffset: 0,
      length: g.size,
    });
    comm.allReduce(sum.buffer, 0, g.size);
    const gx = Tensor.empty(backend, x.shape);
    backend.copy({
      src: sum.buffer,
      srcOffset: comm.rank * x.size,
      dst: gx.buffer,
      dstOffset: 0,
      length: x.size,
    });
    sum.dispose();
    return [gx];
  });
}
