/**
 * Parameter initialisation as `torch.nn.init` does it, drawing from the
 * generator it is given.
 *
 * @module
 */

import { rand, randn } from "./creation.ts";
import type { Generator } from "./random.ts";
import type { Tensor } from "./tensor.ts";

/** Fan-in and fan-out of a weight: [out, in, ...kernel]. */
export function fans(
  shape: readonly number[],
): { fanIn: number; fanOut: number } {
  const receptive = shape.slice(2).reduce((a, b) => a * b, 1);
  return { fanIn: shape[1] * receptive, fanOut: shape[0] * receptive };
}

/** U(-bound, bound). */
export function uniform(
  shape: readonly number[],
  bound: number,
  gen: Generator,
  device?: string,
): Tensor {
  return rand(shape, gen, { low: -bound, high: bound, device });
}

/**
 * PyTorch's default init of Linear and Conv weights, kaiming_uniform_ with
 * a = sqrt(5): U(-1/sqrt(fanIn), 1/sqrt(fanIn)). Biases use the same bound.
 */
export function defaultWeight(
  shape: readonly number[],
  gen: Generator,
  device?: string,
): Tensor {
  return uniform(shape, 1 / Math.sqrt(fans(shape).fanIn), gen, device);
}

/** kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fanOut). */
export function kaimingNormalFanOut(
  shape: readonly number[],
  gen: Generator,
  device?: string,
): Tensor {
  return randn(shape, gen, { std: Math.sqrt(2 / fans(shape).fanOut), device });
}
