/**
 * The parameter list of every kernel, declared once, and the conversion of
 * named TypeScript arguments into the one-element typed arrays that
 * `cuLaunchKernel` reads. A test checks each list against the kernel's
 * declaration in the CUDA C source and against NVRTC's PTX, so a launch
 * cannot pass an argument of the wrong width or in the wrong place.
 *
 * @module
 */

import type { KernelArg } from "../driver.ts";

/** A kernel parameter's C type: a device pointer, `int`, `float`, `double`. */
export type ParamType = "ptr" | "int" | "float" | "double";

/** A parameter: its name in the CUDA C source and its type. */
export type Param = readonly [name: string, type: ParamType];

/** Every kernel of source.ts with its parameters, in order. */
export const KERNELS = {
  fill: [["y", "ptr"], ["count", "int"], ["stride", "int"], [
    "value",
    "float",
  ]],
  axpby: [["n", "int"], ["alpha", "double"], ["x", "ptr"], [
    "beta",
    "double",
  ], ["y", "ptr"]],
  scale_shift: [["n", "int"], ["x", "ptr"], ["y", "ptr"], [
    "scale",
    "double",
  ], ["shift", "double"]],
  unary: [["op", "int"], ["n", "int"], ["x", "ptr"], ["y", "ptr"]],
  op_tensor: [
    ["op", "int"],
    ["alpha1", "double"],
    ["a", "ptr"],
    ["alpha2", "double"],
    ["b", "ptr"],
    ["beta", "double"],
    ["c", "ptr"],
    ["rows", "int"],
    ["d1", "int"],
    ["cols", "int"],
    ["s0", "int"],
    ["s1", "int"],
    ["s2", "int"],
  ],
  add_tensor: [
    ["alpha", "double"],
    ["a", "ptr"],
    ["beta", "double"],
    ["c", "ptr"],
    ["rows", "int"],
    ["d1", "int"],
    ["cols", "int"],
    ["s0", "int"],
    ["s1", "int"],
    ["s2", "int"],
  ],
  sum_rows: [
    ["x", "ptr"],
    ["d0", "int"],
    ["m", "int"],
    ["d2", "int"],
    ["rows_per_chunk", "int"],
    ["cols_per_chunk", "int"],
    ["chunks2", "int"],
    ["alpha", "double"],
    ["beta", "double"],
    ["y", "ptr"],
    ["partials", "ptr"],
  ],
  sum_cols: [
    ["x", "ptr"],
    ["d0", "int"],
    ["d1", "int"],
    ["d2", "int"],
    ["rows_per_chunk", "int"],
    ["alpha", "double"],
    ["beta", "double"],
    ["y", "ptr"],
    ["partials", "ptr"],
  ],
  sum_partials: [
    ["partials", "ptr"],
    ["chunks", "int"],
    ["m", "int"],
    ["alpha", "double"],
    ["beta", "double"],
    ["y", "ptr"],
  ],
  dot_partial: [
    ["n", "int"],
    ["x", "ptr"],
    ["incx", "int"],
    ["y", "ptr"],
    ["incy", "int"],
    ["partials", "ptr"],
  ],
  sgd_update: [
    ["n", "int"],
    ["param", "ptr"],
    ["grad", "ptr"],
    ["buf", "ptr"],
    ["mode", "int"],
    ["nesterov", "int"],
    ["lr", "double"],
    ["momentum", "double"],
    ["keep", "double"],
    ["weight_decay", "double"],
  ],
  sgd_update_many: [
    ["tensors", "int"],
    ["table", "ptr"],
    ["mode", "int"],
    ["nesterov", "int"],
    ["lr", "double"],
    ["momentum", "double"],
    ["keep", "double"],
    ["weight_decay", "double"],
  ],
  axpby_many: [
    ["tensors", "int"],
    ["table", "ptr"],
    ["alpha", "double"],
    ["beta", "double"],
  ],
  sum_squares2: [["n", "int"], ["a", "ptr"], ["b", "ptr"], [
    "partials",
    "ptr",
  ]],
  lars_rate: [
    ["partials", "ptr"],
    ["chunks", "int"],
    ["trust", "double"],
    ["weight_decay", "double"],
    ["eps", "double"],
    ["rate", "ptr"],
  ],
  lars_apply: [
    ["n", "int"],
    ["rate", "ptr"],
    ["weight_decay", "double"],
    ["param", "ptr"],
    ["grad", "ptr"],
  ],
  l2_normalize_forward: [
    ["x", "ptr"],
    ["y", "ptr"],
    ["norms", "ptr"],
    ["rows", "int"],
    ["cols", "int"],
    ["eps", "double"],
  ],
  l2_normalize_backward: [
    ["y", "ptr"],
    ["norms", "ptr"],
    ["dy", "ptr"],
    ["dx", "ptr"],
    ["rows", "int"],
    ["cols", "int"],
    ["eps", "double"],
  ],
  softmax_cross_entropy_forward: [
    ["logits", "ptr"],
    ["labels", "ptr"],
    ["probs", "ptr"],
    ["losses", "ptr"],
    ["rows", "int"],
    ["cols", "int"],
  ],
  softmax_cross_entropy_backward: [
    ["probs", "ptr"],
    ["labels", "ptr"],
    ["d_losses", "ptr"],
    ["dx", "ptr"],
    ["rows", "int"],
    ["cols", "int"],
  ],
} as const satisfies Record<string, readonly Param[]>;

/** The name of a kernel, as `cuModuleGetFunction` looks it up. */
export type KernelName = keyof typeof KERNELS;

/** Every kernel name. */
export const KERNEL_NAMES = Object.keys(KERNELS) as KernelName[];

type ValueOf<T extends ParamType> = T extends "ptr" ? bigint : number;

/** A kernel's arguments by parameter name: addresses as bigints. */
export type KernelArgs<K extends KernelName> = {
  [P in (typeof KERNELS)[K][number] as P[0]]: ValueOf<P[1]>;
};

const INT_MIN = -(2 ** 31);
const INT_MAX = 2 ** 31 - 1;

/**
 * The arguments of a launch in parameter order, each in a typed array of its
 * C width. Throws a RangeError for a missing argument, a non-integral or
 * out-of-range `int` (an element count of 2^31 or more), or a pointer that
 * is not a bigint.
 */
export function marshal<K extends KernelName>(
  kernel: K,
  args: KernelArgs<K>,
): KernelArg[] {
  const values = args as Record<string, number | bigint>;
  const params: readonly Param[] = KERNELS[kernel];
  for (const name of Object.keys(values)) {
    if (!params.some(([p]) => p === name)) {
      throw new RangeError(`kernel ${kernel} has no parameter ${name}`);
    }
  }
  return params.map(([name, type]) => {
    const v = values[name];
    const bad = (why: string) =>
      new RangeError(`kernel ${kernel}: ${name} = ${v} ${why}`);
    if (type === "ptr") {
      if (typeof v !== "bigint" || v < 0n) throw bad("is not an address");
      return new BigUint64Array([v]);
    }
    if (typeof v !== "number") throw bad(`is not a number`);
    switch (type) {
      case "int":
        if (!Number.isInteger(v) || v < INT_MIN || v > INT_MAX) {
          throw bad("does not fit a 32-bit int");
        }
        return new Int32Array([v]);
      case "float":
        return new Float32Array([v]);
      case "double":
        return new Float64Array([v]);
    }
  });
}
