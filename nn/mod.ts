/**
 * Tensors, autograd and the differentiable ops, over any registered backend.
 *
 * @module
 */

import "./autograd.ts";

export type * from "./backend.ts";
export {
  defaultDevice,
  device,
  registerDevice,
  setDefaultDevice,
} from "./device.ts";
export {
  type GradFn,
  isGradEnabled,
  keep,
  memoryStats,
  noGrad,
  recordGrad,
  scope,
  Tensor,
} from "./tensor.ts";
export {
  full,
  ones,
  rand,
  randn,
  tensor,
  type TensorOptions,
  zeros,
} from "./creation.ts";
export { Generator } from "./random.ts";
export { relu } from "./ops/activation.ts";
export { conv2d, type Conv2dOptions } from "./ops/conv.ts";
export {
  add,
  addScalar,
  affine,
  mean,
  mul,
  mulScalar,
  sub,
  sum,
} from "./ops/elementwise.ts";
export { linear, matmul, type MatmulOptions, trace } from "./ops/linalg.ts";
export {
  accuracy,
  crossEntropy,
  type CrossEntropyOptions,
  type Labels,
} from "./ops/loss.ts";
export {
  batchNorm,
  type BatchNormOptions,
  normalize,
} from "./ops/normalization.ts";
export {
  globalAvgPool2d,
  maxPool2d,
  type MaxPool2dOptions,
} from "./ops/pool.ts";
