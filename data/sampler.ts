/**
 * PyTorch's `DistributedSampler` over an epoch's order: rank r takes every
 * size-th index starting at r. How the tail is shared (PyTorch's
 * `drop_last`):
 *
 * - "drop": the order is cut to a multiple of the world size, so every rank
 *   gets floor(n / size) indices (training: with batches of b per rank,
 *   there are floor(n / (size * b)) batches per epoch, as many as one
 *   process with batches of size * b drops to);
 * - "pad": the order is padded by repeating its first indices, so every
 *   rank gets ceil(n / size) (PyTorch's default);
 * - "uneven": neither; ranks get floor or ceil of n / size, and together
 *   each index exactly once (exact counts for evaluation).
 *
 * With the loader's global order, the single-process batch k holds exactly
 * the union of the ranks' batches k whenever the global batch is size times
 * the per-rank batch.
 *
 * @module
 */

/** How the indices that do not divide among the ranks are shared. */
export type ShardTail = "drop" | "pad" | "uneven";

/** How many indices rank `rank` gets of `n`. */
export function shardLength(
  n: number,
  size: number,
  tail: ShardTail = "pad",
  rank = 0,
): number {
  if (tail === "drop") return Math.floor(n / size);
  if (tail === "pad") return Math.ceil(n / size);
  return Math.floor(n / size) + (rank < n % size ? 1 : 0);
}

/** Rank `rank`'s shard of `order` (strided, as PyTorch's). */
export function shardOrder(
  order: Int32Array,
  rank: number,
  size: number,
  tail: ShardTail = "pad",
): Int32Array {
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`the world size must be 1 or more, not ${size}`);
  }
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
    throw new RangeError(`rank ${rank} is not in 0..${size - 1}`);
  }
  if (order.length === 0) return new Int32Array(0);
  const length = shardLength(order.length, size, tail, rank);
  const out = new Int32Array(length);
  for (let j = 0; j < length; j++) {
    // Position in the padded order; padding wraps round to the start.
    out[j] = order[(j * size + rank) % order.length];
  }
  return out;
}
