/**
 * Making tensors: from data, constants and random draws.
 *
 * @module
 */

import { device as deviceNamed } from "./device.ts";
import type { Generator } from "./random.ts";
import { formatShape, Tensor } from "./tensor.ts";

export interface TensorOptions {
  /** Device name; the default device when omitted. */
  device?: string;
  requiresGrad?: boolean;
}

function make(shape: readonly number[], opts: TensorOptions): Tensor {
  const t = Tensor.empty(deviceNamed(opts.device), shape);
  t.requiresGrad = opts.requiresGrad ?? false;
  return t;
}

/**
 * A tensor holding `data` (copied), with `shape` (default: one dimension of
 * data's length).
 */
export function tensor(
  data: ArrayLike<number>,
  shape?: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  const s = shape ?? [data.length];
  const size = s.reduce((a, b) => a * b, 1);
  if (size !== data.length) {
    throw new RangeError(
      `tensor: ${data.length} values do not fill shape ${formatShape(s)}`,
    );
  }
  const t = make(s, opts);
  const values = data instanceof Float32Array ? data : Float32Array.from(data);
  t.backend.write(t.buffer, values);
  return t;
}

/** A tensor of `value` everywhere. */
export function full(
  shape: readonly number[],
  value: number,
  opts: TensorOptions = {},
): Tensor {
  const t = make(shape, opts);
  t.backend.fill({ y: t.buffer, value });
  return t;
}

export function zeros(
  shape: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  return full(shape, 0, opts);
}

export function ones(
  shape: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  return full(shape, 1, opts);
}

/** Uniform values in [low, high) drawn from `gen`. */
export function rand(
  shape: readonly number[],
  gen: Generator,
  opts: TensorOptions & { low?: number; high?: number } = {},
): Tensor {
  const t = make(shape, opts);
  const data = gen.fillUniform(
    new Float32Array(t.size),
    opts.low ?? 0,
    opts.high ?? 1,
  );
  t.backend.write(t.buffer, data);
  return t;
}

/** Normal values drawn from `gen`. */
export function randn(
  shape: readonly number[],
  gen: Generator,
  opts: TensorOptions & { mean?: number; std?: number } = {},
): Tensor {
  const t = make(shape, opts);
  const data = gen.fillNormal(
    new Float32Array(t.size),
    opts.mean ?? 0,
    opts.std ?? 1,
  );
  t.backend.write(t.buffer, data);
  return t;
}
