/**
 * The [d0, d1, d2] form of the backend, refolded for the kernels: size-1
 * dimensions dropped and neighbours of the same kind merged. A dimension is
 * "kept" when the small operand (the broadcast operand of opTensor and
 * addTensor, the output of reduceSum) has it whole, and "broadcast" (or
 * "summed") when the small operand has size 1 there.
 *
 * Refolding turns the common cases into the kernels' fast ones: a plain
 * same-shape op becomes one row of all elements, a per-row or per-column
 * broadcast two runs, and no dimension of size 1 is left innermost (where a
 * block would idle on it).
 *
 * @module
 */

import type { Dims3 } from "../../nn/backend.ts";

/** Three dimensions, outermost first, and which the small operand keeps. */
export interface Folded {
  dims: [number, number, number];
  kept: [boolean, boolean, boolean];
}

/**
 * Refolds `shape` against `small` (each of whose dims equals shape's or is
 * 1). Leading padding dimensions have size 1 and count as kept.
 */
export function fold(shape: Dims3, small: Dims3): Folded {
  const runs: { size: number; kept: boolean }[] = [];
  for (let k = 0; k < 3; k++) {
    const d = shape[k];
    if (d === 1) continue; // a size-1 dim is both kept and broadcast
    const kept = small[k] === d;
    const last = runs.at(-1);
    if (last && last.kept === kept) last.size *= d;
    else runs.push({ size: d, kept });
  }
  while (runs.length < 3) runs.unshift({ size: 1, kept: true });
  return {
    dims: [runs[0].size, runs[1].size, runs[2].size],
    kept: [runs[0].kept, runs[1].kept, runs[2].kept],
  };
}

/** An elementwise op with a broadcast operand, as op_tensor reads it. */
export interface BroadcastForm {
  /** d0 * d1 rows of the output; row r is (r / d1, r % d1). */
  rows: number;
  d1: number;
  /** The innermost dimension. */
  cols: number;
  /** The broadcast operand's element strides; 0 along a broadcast dim. */
  strides: [number, number, number];
}

/** The form of an op on `shape` whose operand of shape `small` broadcasts. */
export function broadcastForm(shape: Dims3, small: Dims3): BroadcastForm {
  const { dims: [d0, d1, d2], kept } = fold(shape, small);
  // The operand is contiguous over its kept dims (the CPU's broadcastStrides);
  // a dim of size 1 (padding) adds no offset.
  const b2 = kept[2] ? d2 : 1;
  const b1 = kept[1] ? d1 : 1;
  const stride = (k: number, s: number) =>
    kept[k] && [d0, d1, d2][k] > 1 ? s : 0;
  return {
    rows: d0 * d1,
    d1,
    cols: d2,
    strides: [stride(0, b1 * b2), stride(1, b2), stride(2, 1)],
  };
}

/**
 * How a reduceSum runs. "rows": the innermost dim is summed, x is
 * [d0, m, d2] and output o sums over d0 and d2. "cols": the innermost dim is
 * kept, x is [d0, d1, d2] and output (i0, i2) sums over d1.
 */
export type ReduceForm =
  | { kind: "rows"; d0: number; m: number; d2: number }
  | { kind: "cols"; d0: number; d1: number; d2: number };

/** The form of a sum of `shape` down to `yShape`. */
export function reduceForm(shape: Dims3, yShape: Dims3): ReduceForm {
  const { dims: [d0, d1, d2], kept } = fold(shape, yShape);
  // Folded runs alternate between kept and summed, so a summed innermost
  // run has a kept (or padding) one before it and a summed (or padding) one
  // before that, and the other way round.
  return kept[2]
    ? { kind: "cols", d0, d1, d2 }
    : { kind: "rows", d0, m: d1, d2 };
}
