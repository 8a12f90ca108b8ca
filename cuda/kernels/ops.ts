/**
 * The op codes that the host passes to the kernels as `int`s. The CUDA C
 * enums are generated from these lists (see source.ts), so the two sides
 * cannot disagree.
 *
 * @module
 */

import type { BinaryOp, UnaryOp } from "../../nn/backend.ts";

/** `opTensor`'s operations, in the order of their codes. */
export const BINARY_OPS: readonly BinaryOp[] = ["add", "mul", "min", "max"];

/** `unary`'s functions, in the order of their codes. */
export const UNARY_OPS: readonly UnaryOp[] = [
  "sqrt",
  "rsqrt",
  "square",
  "exp",
  "log",
  "abs",
];

/** What `sgd_update` does with the momentum buffer. */
export const SGD_MODES = ["plain", "first", "later"] as const;
export type SgdMode = (typeof SGD_MODES)[number];

/** The code of an op in its list; throws for an op the list lacks. */
export function opCode<T extends string>(list: readonly T[], op: T): number {
  const code = list.indexOf(op);
  if (code < 0) throw new RangeError(`unknown op "${op}"`);
  return code;
}

/** `enum Name { PREFIX_A = 0, ... };` for the CUDA C source. */
export function cEnum(
  name: string,
  prefix: string,
  list: readonly string[],
): string {
  const members = list.map((op, i) => `${prefix}_${op.toUpperCase()} = ${i}`);
  return `enum ${name} { ${members.join(", ")} };`;
}
