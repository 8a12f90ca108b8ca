/**
 * Launch configurations, as pure functions of the sizes: nothing here
 * depends on the GPU, so a shape is always cut into the same blocks and
 * summed in the same order, on any device. Every kernel loops (grid-stride)
 * over what its grid does not cover, so a grid may be capped freely.
 *
 * @module
 */

import type { Dim3 } from "../driver.ts";

/** What one `cuLaunchKernel` needs besides the kernel and its arguments. */
export interface LaunchConfig {
  grid: Dim3;
  block: Dim3;
  /** Bytes of dynamic shared memory. */
  shared: number;
}

/** The limits of every GPU since compute capability 3.0. */
export const LIMITS = {
  gridX: 2 ** 31 - 1,
  gridY: 65535,
  gridZ: 65535,
  threadsPerBlock: 1024,
  /** Dynamic shared memory a kernel gets without opting in. */
  sharedBytes: 48 * 1024,
} as const;

/** Threads of an elementwise block. */
export const THREADS = 256;
/** Most blocks of a grid-stride loop: 62 per SM of an H200, each looping. */
export const MAX_BLOCKS = 8192;
/** Elements one block of a long sum adds at least before it is split. */
export const BLOCK_WORK = 8192;
/** Blocks a split sum aims at: enough to fill every SM several times. */
export const TARGET_BLOCKS = 1024;
/** Threads a column sum aims at: about one H200 full (132 SMs x 2048). */
export const TARGET_THREADS = 262144;
/** Rows one thread of a column sum adds at least before it is split. */
export const THREAD_WORK = 32;
/** Most chunks one output's sum is split into. */
export const MAX_CHUNKS = 1024;

/** Bytes of one partial sum (a double). */
const SUM_BYTES = 8;

export function ceilDiv(a: number, b: number): number {
  return Math.ceil(a / b);
}

function clamp(v: number, low: number, high: number): number {
  return Math.min(Math.max(v, low), high);
}

/** The least power of two >= n (1 for n <= 1). */
export function nextPowerOfTwo(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * Threads of a block that strides over `n` elements: a power of two (the
 * block reductions need one) from a warp to THREADS, so a short row does
 * not idle most of a large block.
 */
export function threadsFor(n: number): number {
  return clamp(nextPowerOfTwo(n), 32, THREADS);
}

/** Whether a launch has no block (nothing to do: skip it). */
export function isEmpty(c: LaunchConfig): boolean {
  return c.grid.some((d) => !(d > 0));
}

/** A 1-D grid-stride loop over n elements. */
export function elementwise(n: number): LaunchConfig {
  return {
    grid: [Math.min(ceilDiv(n, THREADS), MAX_BLOCKS), 1, 1],
    block: [THREADS, 1, 1],
    shared: 0,
  };
}

/**
 * The 2-D grid-stride loop of op_tensor and add_tensor over rows x cols:
 * block x along a row (a warp at least, coalesced), block y over rows.
 */
export function broadcast(rows: number, cols: number): LaunchConfig {
  const bx = threadsFor(cols);
  const by = THREADS / bx;
  const gy = Math.min(ceilDiv(rows, by), MAX_BLOCKS); // under LIMITS.gridY
  const gx = Math.min(
    ceilDiv(cols, bx),
    Math.max(1, Math.floor(MAX_BLOCKS / Math.max(gy, 1))),
  );
  return { grid: [gx, gy, 1], block: [bx, by, 1], shared: 0 };
}

/**
 * One block per row, its threads striding over the columns, with the shared
 * memory of a block reduction (l2 normalisation, softmax cross-entropy).
 */
export function rows(count: number, cols: number): LaunchConfig {
  const t = threadsFor(cols);
  return {
    grid: [Math.min(count, LIMITS.gridX), 1, 1],
    block: [t, 1, 1],
    shared: t * SUM_BYTES,
  };
}

/**
 * The second pass of a split sum, sum_partials (or lars_rate): one block per
 * output adding its `chunks` partial sums.
 */
export function finish(outputs: number, chunks: number): LaunchConfig {
  const t = threadsFor(chunks);
  return {
    grid: [Math.min(outputs, LIMITS.gridX), 1, 1],
    block: [t, 1, 1],
    shared: t * SUM_BYTES,
  };
}

/** A sum of n elements to one value: dot and LARC's norms. */
export interface SumAllPlan {
  /** The first pass: `chunks` blocks, one partial sum each. */
  pass1: LaunchConfig;
  chunks: number;
  /** The second pass, one block. */
  pass2: LaunchConfig;
}

export function sumAll(n: number): SumAllPlan {
  const chunks = clamp(ceilDiv(n, BLOCK_WORK), 1, MAX_CHUNKS);
  return {
    pass1: {
      grid: [chunks, 1, 1],
      block: [THREADS, 1, 1],
      shared: THREADS * SUM_BYTES,
    },
    chunks,
    pass2: finish(1, chunks),
  };
}

/** How sum_rows runs: x [d0, m, d2] summed over d0 and d2. */
export interface SumRowsPlan {
  kind: "rows";
  d0: number;
  m: number;
  d2: number;
  rowsPerChunk: number;
  colsPerChunk: number;
  /** Chunks along d2; chunk g is (g / chunks2, g % chunks2). */
  chunks2: number;
  /** Chunks per output; 1 when sum_rows writes y itself. */
  chunks: number;
  pass1: LaunchConfig;
  /** sum_partials, when there is more than one chunk. */
  pass2: LaunchConfig | null;
}

/**
 * Splits each output's d0 x d2 plane into chunks when the outputs alone
 * would not fill the GPU: about TARGET_BLOCKS blocks, but no block under
 * BLOCK_WORK elements. Whole rows of d0 are split first; when there are
 * fewer rows than chunks, each row is cut along d2 at multiples of the
 * block size.
 */
export function sumRows(d0: number, m: number, d2: number): SumRowsPlan {
  const t = threadsFor(d2);
  const length = d0 * d2;
  // An empty sum is one chunk (of nothing): y = beta * y.
  let rowsPerChunk = Math.max(d0, 1);
  let colsPerChunk = Math.max(d2, 1);
  if (length > 0) {
    rowsPerChunk = 1;
    const wanted = clamp(
      Math.min(ceilDiv(length, BLOCK_WORK), ceilDiv(TARGET_BLOCKS, m)),
      1,
      MAX_CHUNKS,
    );
    if (wanted <= d0) {
      rowsPerChunk = ceilDiv(d0, wanted);
    } else {
      const perRow = ceilDiv(wanted, d0);
      colsPerChunk = ceilDiv(ceilDiv(d2, perRow), t) * t;
    }
  }
  const chunks0 = Math.max(1, ceilDiv(d0, rowsPerChunk));
  const chunks2 = Math.max(1, ceilDiv(d2, colsPerChunk));
  const chunks = chunks0 * chunks2;
  return {
    kind: "rows",
    d0,
    m,
    d2,
    rowsPerChunk,
    colsPerChunk,
    chunks2,
    chunks,
    pass1: {
      grid: [Math.min(m, LIMITS.gridX), chunks, 1],
      block: [t, 1, 1],
      shared: t * SUM_BYTES,
    },
    pass2: chunks > 1 ? finish(m, chunks) : null,
  };
}

/** How sum_cols runs: x [d0, d1, d2] summed over d1. */
export interface SumColsPlan {
  kind: "cols";
  d0: number;
  d1: number;
  d2: number;
  rowsPerChunk: number;
  /** Chunks per output; 1 when sum_cols writes y itself. */
  chunks: number;
  pass1: LaunchConfig;
  /** sum_partials, when there is more than one chunk. */
  pass2: LaunchConfig | null;
}

/**
 * One thread per output; d1 is split into chunks when the outputs alone
 * would not give TARGET_THREADS threads, but no thread adds fewer than
 * THREAD_WORK rows.
 */
export function sumCols(d0: number, d1: number, d2: number): SumColsPlan {
  const t = threadsFor(d2);
  const outputs = d0 * d2;
  const wanted = clamp(
    Math.min(
      ceilDiv(d1, THREAD_WORK),
      ceilDiv(TARGET_THREADS, Math.max(outputs, 1)),
    ),
    1,
    MAX_CHUNKS,
  );
  const rowsPerChunk = Math.max(1, ceilDiv(d1, wanted));
  const chunks = Math.max(1, ceilDiv(d1, rowsPerChunk));
  return {
    kind: "cols",
    d0,
    d1,
    d2,
    rowsPerChunk,
    chunks,
    pass1: {
      grid: [Math.min(d0 * ceilDiv(d2, t), LIMITS.gridX), chunks, 1],
      block: [t, 1, 1],
      shared: 0,
    },
    pass2: chunks > 1 ? finish(outputs, chunks) : null,
  };
}

/** Bytes of the partial sums a plan needs from scratch (0 for none). */
export function partialBytes(plan: SumRowsPlan | SumColsPlan): number {
  if (plan.chunks === 1) return 0;
  const outputs = plan.kind === "rows" ? plan.m : plan.d0 * plan.d2;
  return outputs * plan.chunks * SUM_BYTES;
}

/**
 * A multi-tensor launch (sgd_update_many, axpby_many): the prefix offsets of
 * the tensors' lengths, which the device table holds, and one 1-D
 * grid-stride loop over their total.
 */
export interface MultiTensorPlan {
  /**
   * `lengths.length + 1` offsets: offsets[t] is the sum of the lengths
   * before tensor t, so tensor t is elements offsets[t] .. offsets[t + 1] - 1
   * of the loop, and offsets[tensors] is the total.
   */
  offsets: number[];
  /** Elements of all tensors together; may exceed 2^31 (the loop is 64-bit). */
  total: number;
  config: LaunchConfig;
}

/**
 * The plan of a multi-tensor launch over tensors of `lengths` elements (whole
 * numbers, zeros allowed): the grid of `elementwise(total)`, capped at
 * `maxBlocks` blocks too when given (tests pass a few, so that each thread
 * crosses several tensors). Throws a RangeError for a bad length or a total
 * past 2^53, where the offsets would stop being exact.
 */
export function multiTensor(
  lengths: readonly number[],
  maxBlocks: number = MAX_BLOCKS,
): MultiTensorPlan {
  const offsets = new Array<number>(lengths.length + 1);
  let total = 0;
  offsets[0] = 0;
  for (let t = 0; t < lengths.length; t++) {
    const n = lengths[t];
    if (!Number.isInteger(n) || n < 0) {
      throw new RangeError(`tensor ${t} has length ${n}, not a whole number`);
    }
    total += n;
    if (!Number.isSafeInteger(total)) {
      throw new RangeError(`the tensors' total length passes 2^53`);
    }
    offsets[t + 1] = total;
  }
  const config: LaunchConfig = {
    grid: [Math.min(ceilDiv(total, THREADS), MAX_BLOCKS, maxBlocks), 1, 1],
    block: [THREADS, 1, 1],
    shared: 0,
  };
  return { offsets, total, config };
}
