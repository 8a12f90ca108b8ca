/**
 * The CUDA backend's own kernels, checked without a GPU: every launch
 * configuration against the grid limits and, simulated in TypeScript for
 * small sizes, for covering each element exactly once (by formula for the
 * ResNet-50 and MEC sizes); the host side of each op through a recording
 * launcher; each kernel's parameters against the CUDA C source and NVRTC's
 * PTX; the whole source through NVRTC for sm_80 and sm_90 with no register
 * spills; and the disk cache of CUBINs.
 */

import type { Dims3 } from "../nn/backend.ts";
import { Generator } from "../nn/random.ts";
import { CudaBuffer } from "../cuda/buffer.ts";
import { compile } from "../cuda/nvrtc.ts";
import { buildKernels, COMPILE_OPTIONS } from "../cuda/kernels/build.ts";
import {
  type BuildInputs,
  cachedBuild,
  cacheKey,
  decodeEntry,
  defaultCacheDir,
  encodeEntry,
} from "../cuda/kernels/cache.ts";
import {
  broadcast,
  ceilDiv,
  elementwise,
  finish,
  isEmpty,
  type LaunchConfig,
  LIMITS,
  MAX_BLOCKS,
  multiTensor,
  rows,
  sumAll,
  sumCols,
  type SumColsPlan,
  sumRows,
  type SumRowsPlan,
  threadsFor,
} from "../cuda/kernels/launch.ts";
import { Kernels, type Launcher } from "../cuda/kernels/mod.ts";
import { TableCache, type TableMemory } from "../cuda/kernels/tables.ts";
import { BINARY_OPS, SGD_MODES, UNARY_OPS } from "../cuda/kernels/ops.ts";
import { broadcastForm, fold, reduceForm } from "../cuda/kernels/shapes.ts";
import {
  KERNEL_NAMES,
  type KernelArgs,
  type KernelName,
  KERNELS,
  marshal,
  type ParamType,
} from "../cuda/kernels/signatures.ts";
import { KERNEL_SOURCE } from "../cuda/kernels/source.ts";
import { assert, assertThrows } from "./assert.ts";
import { librariesMissing, noteSkipped } from "./cuda_env.ts";

const missing = librariesMissing();
if (missing) noteSkipped("NVRTC compiles of the kernels", missing);
const noNvrtc = missing !== null;

// --- sizes of ResNet-50 and MEC ----------------------------------------------

/** Element counts of ResNet-50 activations (batch 64 and 256), gemm-sized buffers, parameters. */
const BIG_COUNTS = [
  64 * 256 * 56 * 56,
  256 * 64 * 112 * 112,
  256 * 2048 * 7 * 7,
  2048 * 2048,
  512 * 512 * 3 * 3,
  2048 * 1000,
  1,
  7,
  0,
];

/** Rows x cols of the MEC projector's and the probe's matrices. */
const ROW_SIZES: [number, number][] = [
  [128, 2048],
  [256, 2048],
  [512, 2048],
  [1024, 2048],
  [4096, 2048],
  [256, 1000],
  [256, 10],
  [3, 1],
];

/** reduceSum shapes of the ops above the interface, and a few awkward ones. */
const BIG_REDUCTIONS: [Dims3, Dims3][] = [
  [[1, 256, 3136], [1, 256, 1]],
  [[1, 256, 3136], [1, 1, 3136]],
  [[1, 256 * 2048, 49], [1, 256 * 2048, 1]], // global average pool
  [[1, 256, 2048], [1, 1, 2048]], // linear bias gradient
  [[256, 64, 3136], [1, 64, 1]], // conv bias gradient
  [[1, 1, 64 * 256 * 56 * 56], [1, 1, 1]], // a sum of everything
  [[1, 1, 2048 * 2048], [1, 1, 1]],
  [[4096, 2048, 1], [4096, 1, 1]],
  [[2, 1, 51380224], [1, 1, 51380224]],
  [[51380224, 2, 1], [1, 2, 1]],
  [[64, 256, 3136], [64, 1, 3136]],
];

/** Broadcasts of the ops above the interface. */
const BIG_BROADCASTS: [Dims3, Dims3][] = [
  [[1, 256, 2048], [1, 1, 2048]], // linear bias
  [[1, 256 * 2048, 49], [1, 256 * 2048, 1]], // average pool backward
  [[256, 64, 3136], [1, 64, 1]],
  [[1, 1, 64 * 256 * 56 * 56], [1, 1, 64 * 256 * 56 * 56]],
  [[1, 1, 2048 * 2048], [1, 1, 1]],
  [[4096, 2048, 1], [4096, 1, 1]],
  [[600000, 2, 1], [1, 2, 1]],
];

// --- checks of a configuration --------------------------------------------------

function assertWithinLimits(c: LaunchConfig, what: string): void {
  const [gx, gy, gz] = c.grid;
  const [bx, by, bz] = c.block;
  for (const d of [...c.grid, ...c.block]) {
    assert.ok(Number.isInteger(d) && d >= 0, `${what}: ${d} is not a size`);
  }
  assert.ok(gx <= LIMITS.gridX, `${what}: grid x ${gx}`);
  assert.ok(gy <= LIMITS.gridY, `${what}: grid y ${gy}`);
  assert.ok(gz <= LIMITS.gridZ, `${what}: grid z ${gz}`);
  assert.ok(
    bx * by * bz <= LIMITS.threadsPerBlock,
    `${what}: block ${bx * by * bz}`,
  );
  assert.ok(bx * by * bz >= 32, `${what}: a block of less than a warp`);
  assert.ok(c.shared <= LIMITS.sharedBytes, `${what}: shared ${c.shared}`);
}

/** A configuration of a kernel that calls block_sum or block_max. */
function assertReducing(c: LaunchConfig, what: string): void {
  assertWithinLimits(c, what);
  const t = c.block[0];
  assert.equal(t & (t - 1), 0, `${what}: block of ${t}, not a power of two`);
  assert.deepEqual([c.block[1], c.block[2]], [1, 1], what);
  assert.ok(c.shared >= t * 8, `${what}: ${c.shared} bytes for ${t} doubles`);
}

function* threads(c: LaunchConfig) {
  for (let bz = 0; bz < c.grid[2]; bz++) {
    for (let by = 0; by < c.grid[1]; by++) {
      for (let bx = 0; bx < c.grid[0]; bx++) {
        for (let tz = 0; tz < c.block[2]; tz++) {
          for (let ty = 0; ty < c.block[1]; ty++) {
            for (let tx = 0; tx < c.block[0]; tx++) {
              yield { bx, by, tx, ty };
            }
          }
        }
      }
    }
  }
}

function assertAllOnce(count: Int32Array, what: string): void {
  const bad = count.findIndex((c) => c !== 1);
  assert.equal(
    bad,
    -1,
    `${what}: element ${bad} is visited ${count[bad]} times`,
  );
}

// --- simulations of the kernels' index mappings (source.ts) -----------------------

/** The 1-D grid-stride loop (first_index, grid_stride): visits per element. */
function simulateGridStride(n: number, c: LaunchConfig): Int32Array {
  const count = new Int32Array(n);
  const stride = c.block[0] * c.grid[0];
  for (const { bx, tx } of threads(c)) {
    for (let i = bx * c.block[0] + tx; i < n; i += stride) count[i]++;
  }
  return count;
}

/** op_tensor's loops: visits per output element, and the b element read. */
function simulateBroadcast(
  form: ReturnType<typeof broadcastForm>,
  c: LaunchConfig,
): { count: Int32Array; bIndex: Float64Array } {
  const { rows, d1, cols, strides: [s0, s1, s2] } = form;
  const count = new Int32Array(rows * cols);
  const bIndex = new Float64Array(rows * cols).fill(-1);
  const [BX, BY] = c.block;
  const [GX, GY] = c.grid;
  for (const { bx, by, tx, ty } of threads(c)) {
    for (let r = by * BY + ty; r < rows; r += BY * GY) {
      const i0 = Math.floor(r / d1);
      const i1 = r - i0 * d1;
      for (let j = bx * BX + tx; j < cols; j += BX * GX) {
        count[r * cols + j]++;
        bIndex[r * cols + j] = i0 * s0 + i1 * s1 + j * s2;
      }
    }
  }
  return { count, bIndex };
}

/** The element of `small` that element (i0, i1, i2) of `shape` broadcasts from. */
function naiveSmallIndex(
  shape: Dims3,
  small: Dims3,
  i0: number,
  i1: number,
  i2: number,
): number {
  const k0 = small[0] === 1 ? 0 : i0;
  const k1 = small[1] === 1 ? 0 : i1;
  const k2 = small[2] === 1 ? 0 : i2;
  void shape;
  return (k0 * small[1] + k1) * small[2] + k2;
}

function* indices(shape: Dims3) {
  for (let i0 = 0; i0 < shape[0]; i0++) {
    for (let i1 = 0; i1 < shape[1]; i1++) {
      for (let i2 = 0; i2 < shape[2]; i2++) {
        yield { i0, i1, i2, flat: (i0 * shape[1] + i1) * shape[2] + i2 };
      }
    }
  }
}

/** What a reduce plan does: for each x element the (output, chunk) it goes to. */
interface SumTrace {
  /** Output index each x element was added to, -1 for none, -2 for twice. */
  outputOf: Int32Array;
  /** Writes per (output, chunk) slot by the first pass. */
  slotWrites: Int32Array;
  /** Reads per slot by sum_partials, and writes per output of y overall. */
  slotReads: Int32Array;
  yWrites: Int32Array;
}

function addTo(trace: SumTrace, x: number, o: number): void {
  trace.outputOf[x] = trace.outputOf[x] === -1 ? o : -2;
}

/** sum_rows, then sum_partials when split. */
function simulateSumRows(p: SumRowsPlan, length: number): SumTrace {
  const { d0, m, d2, chunks } = p;
  const trace: SumTrace = {
    outputOf: new Int32Array(length).fill(-1),
    slotWrites: new Int32Array(m * chunks),
    slotReads: new Int32Array(m * chunks),
    yWrites: new Int32Array(m),
  };
  const T = p.pass1.block[0];
  for (const { bx, by: g, tx } of threads(p.pass1)) {
    const g0 = Math.floor(g / p.chunks2);
    const g2 = g - g0 * p.chunks2;
    const rBegin = g0 * p.rowsPerChunk;
    const rEnd = Math.min(d0, rBegin + p.rowsPerChunk);
    const cBegin = g2 * p.colsPerChunk;
    const cEnd = Math.min(d2, cBegin + p.colsPerChunk);
    for (let o = bx; o < m; o += p.pass1.grid[0]) {
      for (let i0 = rBegin; i0 < rEnd; i0++) {
        for (let i2 = cBegin + tx; i2 < cEnd; i2 += T) {
          addTo(trace, (i0 * m + o) * d2 + i2, o);
        }
      }
      if (tx === 0) {
        if (p.pass1.grid[1] === 1) trace.yWrites[o]++;
        else trace.slotWrites[o * p.pass1.grid[1] + g]++;
      }
    }
  }
  if (p.pass2) simulateSumPartials(p.pass2, chunks, m, trace);
  return trace;
}

/** sum_cols, then sum_partials when split. */
function simulateSumCols(p: SumColsPlan, length: number): SumTrace {
  const { d0, d1, d2, chunks } = p;
  const outputs = d0 * d2;
  const trace: SumTrace = {
    outputOf: new Int32Array(length).fill(-1),
    slotWrites: new Int32Array(outputs * chunks),
    slotReads: new Int32Array(outputs * chunks),
    yWrites: new Int32Array(outputs),
  };
  const T = p.pass1.block[0];
  const blocks2 = Math.ceil(d2 / T);
  for (const { bx, by: g, tx } of threads(p.pass1)) {
    const rBegin = g * p.rowsPerChunk;
    const rEnd = Math.min(d1, rBegin + p.rowsPerChunk);
    for (let b = bx; b < d0 * blocks2; b += p.pass1.grid[0]) {
      const i0 = Math.floor(b / blocks2);
      const i2 = (b - i0 * blocks2) * T + tx;
      if (i2 >= d2) continue;
      const o = i0 * d2 + i2;
      for (let i1 = rBegin; i1 < rEnd; i1++) {
        addTo(trace, (i0 * d1 + i1) * d2 + i2, o);
      }
      if (p.pass1.grid[1] === 1) trace.yWrites[o]++;
      else trace.slotWrites[o * p.pass1.grid[1] + g]++;
    }
  }
  if (p.pass2) simulateSumPartials(p.pass2, chunks, outputs, trace);
  return trace;
}

function simulateSumPartials(
  c: LaunchConfig,
  chunks: number,
  m: number,
  trace: SumTrace,
): void {
  for (const { bx, tx } of threads(c)) {
    for (let o = bx; o < m; o += c.grid[0]) {
      for (let g = tx; g < chunks; g += c.block[0]) {
        trace.slotReads[o * chunks + g]++;
      }
      if (tx === 0) trace.yWrites[o]++;
    }
  }
}

/** The output index element (i0, i1, i2) of x sums into: y's kept dims, contiguous. */
const naiveOutput = naiveSmallIndex;

function planFor(shape: Dims3, yShape: Dims3): SumRowsPlan | SumColsPlan {
  const f = reduceForm(shape, yShape);
  return f.kind === "rows"
    ? sumRows(f.d0, f.m, f.d2)
    : sumCols(f.d0, f.d1, f.d2);
}

function simulateReduce(shape: Dims3, yShape: Dims3): SumTrace {
  const plan = planFor(shape, yShape);
  const length = shape[0] * shape[1] * shape[2];
  return plan.kind === "rows"
    ? simulateSumRows(plan, length)
    : simulateSumCols(plan, length);
}

function assertReducesCorrectly(shape: Dims3, yShape: Dims3): void {
  const what = `sum of [${shape}] to [${yShape}]`;
  const plan = planFor(shape, yShape);
  const trace = simulateReduce(shape, yShape);
  for (const { i0, i1, i2, flat } of indices(shape)) {
    const want = naiveOutput(shape, yShape, i0, i1, i2);
    assert.equal(
      trace.outputOf[flat],
      want,
      `${what}: x[${i0}, ${i1}, ${i2}] went to ${
        trace.outputOf[flat]
      }, not ${want}`,
    );
  }
  assertAllOnce(trace.yWrites, `${what}: writes of y`);
  if (plan.chunks > 1) {
    assertAllOnce(trace.slotWrites, `${what}: writes of partial sums`);
    assertAllOnce(trace.slotReads, `${what}: reads of partial sums`);
  } else {
    assert.equal(plan.pass2, null, what);
  }
}

/** Every small shape, with every small operand that broadcasts into it. */
function* smallPairs(sizes: number[]) {
  for (const d0 of sizes) {
    for (const d1 of sizes) {
      for (const d2 of sizes) {
        const shape: Dims3 = [d0, d1, d2];
        for (let mask = 0; mask < 8; mask++) {
          const small = shape.map((d, k) => (mask >> k) & 1 ? 1 : d) as [
            number,
            number,
            number,
          ];
          yield { shape, small };
        }
      }
    }
  }
}

// --- launch configurations --------------------------------------------------------

Deno.test("elementwise() stays within the grid limits for ResNet-50's largest tensors", () => {
  for (const n of BIG_COUNTS) {
    const c = elementwise(n);
    assertWithinLimits(c, `elementwise(${n})`);
    assert.equal(isEmpty(c), n === 0, `elementwise(${n})`);
    // A grid-stride loop covers every element once as long as there is a block.
    assert.ok(c.grid[0] <= MAX_BLOCKS);
    assert.ok(c.grid[0] * c.block[0] >= Math.min(n, MAX_BLOCKS * c.block[0]));
  }
});

Deno.test("elementwise() visits every element exactly once, below and above the block cap", () => {
  for (const n of [1, 2, 255, 256, 257, 1000, MAX_BLOCKS * 256 * 2 + 5]) {
    assertAllOnce(simulateGridStride(n, elementwise(n)), `elementwise(${n})`);
  }
});

Deno.test("fold() drops size-1 dimensions and merges neighbours of one kind", () => {
  assert.deepEqual(fold([1, 1, 4096], [1, 1, 4096]), {
    dims: [1, 1, 4096],
    kept: [true, true, true],
  });
  assert.deepEqual(fold([4, 5, 6], [4, 5, 6]).dims, [1, 1, 120]);
  assert.deepEqual(fold([4096, 2048, 1], [4096, 1, 1]), {
    dims: [1, 4096, 2048],
    kept: [true, true, false],
  });
  assert.deepEqual(fold([256, 64, 3136], [1, 64, 1]), {
    dims: [256, 64, 3136],
    kept: [false, true, false],
  });
  assert.deepEqual(fold([1, 1, 1], [1, 1, 1]).dims, [1, 1, 1]);
});

Deno.test("broadcastForm() reads the broadcast operand where the CPU backend does, for every small shape", () => {
  for (const { shape, small } of smallPairs([1, 2, 3, 5])) {
    const what = `[${shape}] from [${small}]`;
    const form = broadcastForm(shape, small);
    const c = broadcast(form.rows, form.cols);
    assertWithinLimits(c, what);
    const { count, bIndex } = simulateBroadcast(form, c);
    assertAllOnce(count, what);
    for (const { i0, i1, i2, flat } of indices(shape)) {
      assert.equal(
        bIndex[flat],
        naiveSmallIndex(shape, small, i0, i1, i2),
        `${what}: element ${flat}`,
      );
    }
  }
});

Deno.test("broadcast() covers every element once when its grid is capped in both dimensions", () => {
  // 600 000 rows of 2: block y covers 8 rows, so grid y hits the block cap.
  const form = broadcastForm([600000, 2, 1], [1, 2, 1]);
  const c = broadcast(form.rows, form.cols);
  assert.equal(c.grid[1], MAX_BLOCKS);
  assertAllOnce(simulateBroadcast(form, c).count, "600000 x 2");
  // One long row: grid x hits the block cap.
  const long = broadcastForm([1, 1, MAX_BLOCKS * 256 + 77], [1, 1, 1]);
  const d = broadcast(long.rows, long.cols);
  assert.equal(d.grid[0], MAX_BLOCKS);
  assertAllOnce(simulateBroadcast(long, d).count, "one long row");
});

Deno.test("broadcast() stays within the grid limits for the broadcasts of ResNet-50 and MEC", () => {
  for (const [shape, small] of BIG_BROADCASTS) {
    const f = broadcastForm(shape, small);
    const c = broadcast(f.rows, f.cols);
    const what = `[${shape}] from [${small}]`;
    assertWithinLimits(c, what);
    assert.equal(c.block[0] * c.block[1], 256, what);
    assert.ok(c.grid[0] * c.grid[1] <= MAX_BLOCKS, what);
    assert.equal(f.rows * f.cols, shape[0] * shape[1] * shape[2], what);
    // Every row and column is reached by the 2-D grid-stride loops.
    assert.ok(c.grid[0] >= 1 && c.grid[1] >= 1, what);
  }
});

Deno.test("rows() gives each row one block and each column one thread", () => {
  for (const [r, cols] of [[1, 1], [3, 31], [5, 33], [7, 300], [2, 2048]]) {
    const c = rows(r, cols);
    assertReducing(c, `rows(${r}, ${cols})`);
    const count = new Int32Array(r * cols);
    for (const { bx, tx } of threads(c)) {
      for (let row = bx; row < r; row += c.grid[0]) {
        for (let j = tx; j < cols; j += c.block[0]) count[row * cols + j]++;
      }
    }
    assertAllOnce(count, `rows(${r}, ${cols})`);
  }
  for (const [r, cols] of ROW_SIZES) {
    const c = rows(r, cols);
    assertReducing(c, `rows(${r}, ${cols})`);
    assert.equal(c.grid[0], r, "one block per row");
    assert.equal(c.block[0], threadsFor(cols));
  }
  assert.equal(rows(4096, 2048).block[0], 256);
  assert.equal(rows(256, 10).block[0], 32);
});

Deno.test("sumAll() splits dot and LARC's norms into at most 1024 chunks, each element in one", () => {
  for (const n of [0, 1, 100, 8192, 8193, 300000]) {
    const p = sumAll(n);
    assertReducing(p.pass1, `sumAll(${n})`);
    assertReducing(p.pass2, `sumAll(${n}) pass 2`);
    assert.equal(p.pass1.grid[0], p.chunks);
    assert.equal(p.pass2.grid[0], 1);
    assertAllOnce(simulateGridStride(n, p.pass1), `sumAll(${n})`);
  }
  for (const n of BIG_COUNTS) {
    const p = sumAll(n);
    assertReducing(p.pass1, `sumAll(${n})`);
    assertReducing(p.pass2, `sumAll(${n}) pass 2`);
    assert.ok(p.chunks >= 1 && p.chunks <= 1024);
  }
  assert.equal(sumAll(64 * 256 * 56 * 56).chunks, 1024);
  assert.equal(sumAll(2048 * 2048).chunks, 512);
});

Deno.test("reduceSum's plans add every element to its output exactly once, for every small shape", () => {
  for (const { shape, small } of smallPairs([1, 2, 3, 5])) {
    assertReducesCorrectly(shape, small);
  }
  // Empty sums write y once each (alpha * 0 + beta * y), in one chunk.
  for (const { shape, small } of smallPairs([0, 1, 3])) {
    assertReducesCorrectly(shape, small);
    assert.equal(planFor(shape, small).chunks, 1, `[${shape}] to [${small}]`);
  }
});

Deno.test("reduceSum's plans split long sums into chunks that cover each element once", () => {
  const cases: [Dims3, Dims3][] = [
    [[1, 1, 100000], [1, 1, 1]], // one row cut along d2
    [[3, 2, 20000], [1, 2, 1]], // fewer rows than chunks: rows cut along d2
    [[40, 3, 1000], [1, 3, 1]], // whole rows per chunk
    [[1, 4096, 3], [1, 1, 3]], // a column sum split along d1
    [[5, 300, 7], [5, 1, 7]],
  ];
  for (const [shape, small] of cases) {
    const plan = planFor(shape, small);
    assert.ok(plan.chunks > 1, `[${shape}] to [${small}] is split`);
    assertReducesCorrectly(shape, small);
  }
});

Deno.test("reduceSum's plans stay within the limits for the sums of ResNet-50 and MEC", () => {
  for (const [shape, small] of BIG_REDUCTIONS) {
    const what = `[${shape}] to [${small}]`;
    const plan = planFor(shape, small);
    if (plan.kind === "rows") {
      assertReducing(plan.pass1, what);
      const { d0, d2, rowsPerChunk, colsPerChunk, chunks2 } = plan;
      const chunks0 = plan.chunks / chunks2;
      assert.ok(Number.isInteger(chunks0), what);
      // The chunks tile [0, d0) x [0, d2) with no empty chunk.
      assert.ok(chunks0 * rowsPerChunk >= d0, what);
      assert.ok((chunks0 - 1) * rowsPerChunk < d0, what);
      assert.ok(chunks2 * colsPerChunk >= d2, what);
      assert.ok((chunks2 - 1) * colsPerChunk < d2, what);
      assert.equal(plan.pass1.grid[0], plan.m, what);
    } else {
      assertWithinLimits(plan.pass1, what);
      const { d0, d1, d2, rowsPerChunk, chunks } = plan;
      assert.ok(chunks * rowsPerChunk >= d1, what);
      assert.ok((chunks - 1) * rowsPerChunk < d1, what);
      assert.equal(
        plan.pass1.grid[0],
        d0 * ceilDiv(d2, plan.pass1.block[0]),
        what,
      );
    }
    assert.equal(plan.pass1.grid[1], plan.chunks, what);
    assert.ok(plan.chunks <= 2048, what);
    if (plan.pass2) assertReducing(plan.pass2, `${what} pass 2`);
    else assert.equal(plan.chunks, 1, what);
  }
  // A sum of everything fills the GPU with 1024 chunks of about 50 000.
  const all = planFor([1, 1, 64 * 256 * 56 * 56], [1, 1, 1]);
  assert.equal(all.chunks, 1024);
  // The average pool is one small block per output, written directly.
  const pool = planFor([1, 256 * 2048, 49], [1, 256 * 2048, 1]);
  assert.deepEqual([pool.chunks, pool.pass1.block[0]], [1, 64]);
});

Deno.test("finish() reduces up to 2048 partial sums with one power-of-two block", () => {
  for (const chunks of [1, 2, 33, 1024, 2048]) {
    assertReducing(finish(524288, chunks), `finish(524288, ${chunks})`);
  }
});

/**
 * sgd_update_many's and axpby_many's loop (optim_source.ts): a 1-D
 * grid-stride loop over the total whose cursor finds each element's tensor
 * as cursor_seek does. Visits per element of each tensor, and the number of
 * binary searches made.
 */
function simulateMultiTensor(
  offsets: readonly number[],
  c: LaunchConfig,
): { visits: Int32Array[]; seeks: number } {
  const tensors = offsets.length - 1;
  const total = offsets[tensors];
  const visits = offsets.slice(1).map((end, t) =>
    new Int32Array(end - offsets[t])
  );
  const stride = c.block[0] * c.grid[0];
  let seeks = 0;
  for (const { bx, tx } of threads(c)) {
    let t = -1; // cursor_start
    let begin = 0;
    let end = 0;
    for (let i = bx * c.block[0] + tx; i < total; i += stride) {
      if (i >= end) { // cursor_seek
        seeks++;
        let lo = t + 1;
        let hi = tensors - 1;
        while (lo < hi) {
          const mid = lo + Math.floor((hi - lo + 1) / 2);
          if (offsets[mid] <= i) lo = mid;
          else hi = mid - 1;
        }
        t = lo;
        begin = offsets[lo];
        end = offsets[lo + 1];
      }
      assert.ok(
        begin <= i && i < end,
        `element ${i} went to tensor ${t} of [${begin}, ${end})`,
      );
      visits[t][i - begin]++;
    }
  }
  return { visits, seeks };
}

/** Small tensor lists: empty tensors first, last, in runs, and alone. */
const SMALL_TABLES: number[][] = [
  [1],
  [0, 1],
  [1, 0],
  [0, 0, 5, 0, 0],
  [3, 0, 0, 4, 0],
  [256, 0, 1],
  [255, 2, 255],
  [1, 1, 1, 1, 1, 1, 1],
  [1000, 0, 0, 77, 513, 0],
  [0, 600, 0, 0, 0, 0, 0, 9],
];

Deno.test("multiTensor() gives prefix offsets and the elementwise grid of the total", () => {
  const plan = multiTensor([3, 0, 5, 0]);
  assert.deepEqual(plan.offsets, [0, 3, 3, 8, 8]);
  assert.equal(plan.total, 8);
  assert.deepEqual(plan.config, elementwise(8));
  assert.deepEqual(multiTensor([]).offsets, [0]);
  for (const lengths of [[], [0], [0, 0, 0]]) {
    assert.ok(isEmpty(multiTensor(lengths).config), `[${lengths}]: no launch`);
  }
  assert.equal(multiTensor([100000], 3).config.grid[0], 3);
  assertThrows(() => multiTensor([2, -1]), /tensor 1 has length -1/);
  assertThrows(() => multiTensor([0.5]), /not a whole number/);
  assertThrows(() => multiTensor([2 ** 52, 2 ** 52]), /passes 2\^53/);
});

Deno.test("multiTensor() stays within the grid limits for ResNet-50's parameters and totals past 2^31", () => {
  // ResNet-50's 161 parameter tensors in shape: convolutions, BN pairs, fc.
  const resnet50 = [
    64 * 3 * 7 * 7,
    ...Array.from({ length: 106 }, (_, i) => (i % 2 ? 256 : 64 * 64 * 9)),
    ...Array.from({ length: 52 }, () => 512 * 512 * 9),
    2048 * 1000,
    1000,
  ];
  for (
    const lengths of [
      resnet50,
      [2 ** 31 - 1, 2 ** 31 - 1, 5], // beyond a 32-bit index
      [2 ** 40, 0, 1],
      BIG_COUNTS,
    ]
  ) {
    const plan = multiTensor(lengths);
    const what = `${lengths.length} tensors of ${plan.total}`;
    assertWithinLimits(plan.config, what);
    assert.equal(
      plan.config.grid[0],
      Math.min(ceilDiv(plan.total, 256), MAX_BLOCKS),
      what,
    );
    assert.equal(plan.offsets.at(-1), plan.total, what);
    for (let t = 0; t < lengths.length; t++) {
      assert.equal(plan.offsets[t + 1] - plan.offsets[t], lengths[t], what);
    }
  }
  assert.equal(multiTensor([2 ** 31 - 1, 2 ** 31 - 1, 5]).total, 2 ** 32 + 3);
});

Deno.test("the multi-tensor loop visits every element of every tensor exactly once, for small tables with empty tensors", () => {
  const g = new Generator(21);
  const random = Array.from(
    { length: 20 },
    () =>
      Array.from(
        { length: g.integer(1, 12) },
        () => g.integer(0, 3) === 0 ? 0 : g.integer(1, 700),
      ),
  );
  for (const lengths of [...SMALL_TABLES, ...random]) {
    for (const blocks of [1, 2, 3, MAX_BLOCKS]) {
      const plan = multiTensor(lengths, blocks);
      const what = `[${lengths}] on ${plan.config.grid[0]} blocks`;
      assertWithinLimits(plan.config, what);
      const { visits } = simulateMultiTensor(plan.offsets, plan.config);
      visits.forEach((v, t) => assertAllOnce(v, `${what}, tensor ${t}`));
    }
  }
});

Deno.test("the multi-tensor loop searches only when a thread passes the end of its tensor", () => {
  // One block of 256 threads over 4 tensors of 1000: each thread starts in
  // tensor 0 and crosses into each later tensor once, at most.
  const plan = multiTensor([1000, 1000, 1000, 1000], 1);
  const { visits, seeks } = simulateMultiTensor(plan.offsets, plan.config);
  visits.forEach((v, t) => assertAllOnce(v, `tensor ${t}`));
  assert.ok(seeks <= 256 * 4, `${seeks} searches for 16 strides of 256`);
  // The whole grid-stride loop of a long list: once per tensor a thread
  // enters, not once per element.
  const many = multiTensor(Array.from({ length: 100 }, () => 4096), 4);
  const r = simulateMultiTensor(many.offsets, many.config);
  r.visits.forEach((v, t) => assertAllOnce(v, `tensor ${t}`));
  assert.ok(r.seeks <= 1024 * 100, `${r.seeks} searches`);
});

// --- the host side of each op ---------------------------------------------------

interface Recorded {
  kernel: KernelName;
  config: LaunchConfig;
  args: Record<string, number | bigint>;
}

/**
 * Kernels whose launches are recorded (and marshalled, as the real ones
 * are); `opts` go to the Kernels constructor.
 */
function recording(
  opts: { tables?: TableMemory; tableCapacity?: number } = {},
) {
  const calls: Recorded[] = [];
  const live = new Map<bigint, number>();
  let next = 0x7000_0000n;
  const launch: Launcher = (kernel, config, args) => {
    marshal(kernel, args);
    calls.push({
      kernel,
      config,
      args: args as Record<string, number | bigint>,
    });
  };
  const scratch = {
    alloc(bytes: number): bigint {
      const a = next;
      next += BigInt(bytes + 256);
      live.set(a, bytes);
      return a;
    },
    free(address: bigint): void {
      assert.ok(live.delete(address), `free of ${address} not allocated`);
    },
  };
  return { kernels: new Kernels(launch, scratch, opts), calls, live };
}

let nextAddress = 0x1000_0000n;
function buffer(length: number): CudaBuffer {
  const address = nextAddress;
  nextAddress += BigInt(length * 4 + 4096);
  return new CudaBuffer("cuda:0", length, { address, size: length * 4 });
}

Deno.test("Kernels.fill passes y at its offset and the CPU backend's default count", () => {
  const { kernels, calls } = recording();
  const y = buffer(10);
  kernels.fill({ y, value: 2.5, offset: 1, stride: 3 });
  kernels.fill({ y, value: 0 });
  kernels.fill({ y, value: 1, offset: 0, count: 4, stride: 11 });
  kernels.fill({ y, value: 1, offset: 10 });
  assert.deepEqual(calls.map((c) => c.args), [
    { y: y.address + 4n, count: 3, stride: 3, value: 2.5 },
    { y: y.address, count: 10, stride: 1, value: 0 },
    { y: y.address, count: 4, stride: 11, value: 1 },
  ]);
});

Deno.test("Kernels.dot sums in two passes through scratch it frees, the result left on the device", () => {
  const { kernels, calls, live } = recording();
  const x = buffer(3000000);
  const ones = buffer(3000000);
  const result = buffer(4);
  kernels.dot({
    n: 1000,
    x,
    xOffset: 0,
    incx: 1001,
    y: ones,
    yOffset: 5,
    incy: 1,
    result,
    resultOffset: 3,
  });
  assert.deepEqual(calls.map((c) => c.kernel), ["dot_partial", "sum_partials"]);
  assert.equal(calls[0].args.y, ones.address + 20n);
  assert.equal(calls[1].args.y, result.address + 12n);
  assert.equal(calls[0].args.partials, calls[1].args.partials);
  assert.equal(live.size, 0, "scratch freed");
});

Deno.test("Kernels.opTensor and addTensor pass the folded broadcast form and the op's code", () => {
  const { kernels, calls } = recording();
  const a = buffer(256 * 2048);
  const b = buffer(2048);
  const c = buffer(256 * 2048);
  kernels.opTensor({
    op: "max",
    alpha1: 1,
    a,
    alpha2: 2,
    b,
    bShape: [1, 1, 2048],
    beta: 0,
    c,
    shape: [1, 256, 2048],
  });
  kernels.addTensor({
    alpha: 0.5,
    a: b,
    aShape: [1, 1, 2048],
    beta: 1,
    c,
    shape: [1, 256, 2048],
  });
  kernels.opTensor({
    op: "add",
    alpha1: 1,
    a,
    alpha2: 1,
    b,
    bShape: [0, 1, 1],
    beta: 0,
    c,
    shape: [0, 1, 1],
  });
  assert.equal(calls.length, 2, "an empty op launches nothing");
  assert.deepEqual(calls[0].args, {
    op: BINARY_OPS.indexOf("max"),
    alpha1: 1,
    a: a.address,
    alpha2: 2,
    b: b.address,
    beta: 0,
    c: c.address,
    rows: 256,
    d1: 256,
    cols: 2048,
    s0: 0,
    s1: 0,
    s2: 1,
  });
  assert.equal(calls[1].kernel, "add_tensor");
  assert.equal(calls[1].args.beta, 1);
});

Deno.test("Kernels.reduceSum runs one pass, or two through freed scratch when split", () => {
  const { kernels, calls, live } = recording();
  const x = buffer(64 * 256 * 56 * 56);
  const y = buffer(256 * 2048);
  kernels.reduceSum({
    alpha: 1 / 49,
    x,
    shape: [1, 256 * 2048, 49],
    beta: 0,
    y,
    yShape: [1, 256 * 2048, 1],
  });
  assert.deepEqual(calls.map((c) => c.kernel), ["sum_rows"]);
  assert.equal(calls[0].args.partials, 0n, "no scratch for one chunk");
  calls.length = 0;
  kernels.reduceSum({
    alpha: 2,
    x,
    shape: [1, 1, 64 * 256 * 56 * 56],
    beta: 0.5,
    y,
    yShape: [1, 1, 1],
  });
  assert.deepEqual(calls.map((c) => c.kernel), ["sum_rows", "sum_partials"]);
  assert.deepEqual(
    [calls[1].args.alpha, calls[1].args.beta, calls[1].args.chunks],
    [2, 0.5, 1024],
  );
  calls.length = 0;
  kernels.reduceSum({
    alpha: 1,
    x,
    shape: [1, 256, 2048],
    beta: 0,
    y,
    yShape: [1, 1, 2048],
  });
  assert.deepEqual(calls.map((c) => c.kernel), ["sum_cols", "sum_partials"]);
  assert.equal(live.size, 0, "scratch freed");
});

Deno.test("Kernels.sgdUpdate picks the buffer's mode as the CPU backend does", () => {
  const { kernels, calls } = recording();
  const param = buffer(100);
  const grad = buffer(100);
  const buf = buffer(100);
  const step = {
    lr: 0.1,
    momentum: 0.9,
    dampening: 0.25,
    weightDecay: 1e-4,
    nesterov: true,
    firstStep: true,
  };
  const run = (s: typeof step, b: CudaBuffer | null) =>
    kernels.sgdUpdate({
      param,
      grad,
      momentumBuffer: b,
      length: 100,
      step: s,
    });
  run(step, buf);
  run({ ...step, firstStep: false }, buf);
  run(step, null);
  run({ ...step, momentum: 0 }, buf);
  assert.deepEqual(
    calls.map((c) => [SGD_MODES[c.args.mode as number], c.args.buf]),
    [["first", buf.address], ["later", buf.address], ["plain", 0n], [
      "plain",
      0n,
    ]],
  );
  assert.equal(calls[0].args.keep, 0.75);
  assert.equal(calls[0].args.nesterov, 1);
});

Deno.test("Kernels.larsAdapt keeps both norms and the rate on the device, in freed scratch", () => {
  const { kernels, calls, live } = recording();
  const param = buffer(2048 * 2048);
  const grad = buffer(2048 * 2048);
  kernels.larsAdapt({
    param,
    grad,
    length: 2048 * 2048,
    trust: 0.001,
    weightDecay: 1e-6,
    eps: 1e-8,
  });
  assert.deepEqual(calls.map((c) => c.kernel), [
    "sum_squares2",
    "lars_rate",
    "lars_apply",
  ]);
  const partials = calls[0].args.partials as bigint;
  const chunks = calls[1].args.chunks as number;
  assert.equal(calls[1].args.rate, partials + BigInt(2 * chunks * 8));
  assert.equal(calls[2].args.rate, calls[1].args.rate);
  assert.equal(live.size, 0);
  kernels.larsAdapt({
    param,
    grad,
    length: 0,
    trust: 0.001,
    weightDecay: 0,
    eps: 0,
  });
  assert.equal(calls.length, 3, "an empty tensor launches nothing");
});

Deno.test("Kernels' row ops, scaleShift and unary launch one kernel each, with the op's code", () => {
  const { kernels, calls } = recording();
  const [x, y, norms, labels] = [
    buffer(256 * 2048),
    buffer(256 * 2048),
    buffer(256),
    buffer(256),
  ];
  const shape = { rows: 256, cols: 2048 };
  kernels.l2NormalizeForward({ x, y, norms, ...shape, eps: 1e-12 });
  kernels.l2NormalizeBackward({ y, norms, dy: x, dx: y, ...shape, eps: 1e-12 });
  kernels.softmaxCrossEntropyForward({
    logits: x,
    labels,
    probs: y,
    losses: norms,
    ...shape,
  });
  kernels.softmaxCrossEntropyBackward({
    probs: y,
    labels,
    dLosses: norms,
    dx: x,
    ...shape,
  });
  kernels.scaleShift({ x, y, length: 10, scale: 2, shift: 1 });
  kernels.unary({ op: "rsqrt", x, y, length: 10 });
  kernels.axpby({ n: 0, alpha: 1, x, beta: 0, y });
  assert.deepEqual(calls.map((c) => c.kernel), [
    "l2_normalize_forward",
    "l2_normalize_backward",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "scale_shift",
    "unary",
  ]);
  assert.equal(calls[5].args.op, UNARY_OPS.indexOf("rsqrt"));
  for (const c of calls.slice(0, 4)) assert.equal(c.config.grid[0], 256);
});

/**
 * Device memory for tables, simulated: blocks of bytes by address, written
 * as pinned staging writes (cuda/staging.ts copies `data`'s bytes).
 */
function fakeTableMemory() {
  const blocks = new Map<bigint, Uint8Array>();
  const writes: { address: bigint; bytes: number }[] = [];
  let next = 0x9000_0000n;
  let failWrites = false;
  const memory: TableMemory = {
    alloc(bytes) {
      const a = next;
      next += BigInt(bytes + 256);
      blocks.set(a, new Uint8Array(bytes).fill(0xff));
      return a;
    },
    free(address) {
      assert.ok(blocks.delete(address), `free of table ${address}`);
    },
    write(address, data) {
      if (failWrites) throw new Error("staging failed");
      const bytes = new Uint8Array(
        data.buffer,
        data.byteOffset,
        data.byteLength,
      );
      for (const [base, block] of blocks) {
        const at = Number(address - base);
        if (at >= 0 && at + bytes.length <= block.length) {
          block.set(bytes, at);
          writes.push({ address, bytes: bytes.length });
          return;
        }
      }
      throw new Error(`a write of ${bytes.length} bytes outside any table`);
    },
  };
  /** The 64-bit words of the table at `address`, as the device holds them. */
  const words = (address: bigint): bigint[] => [
    ...new BigUint64Array(blocks.get(address)!.slice().buffer),
  ];
  const fail = (on: boolean) => failWrites = on;
  return { memory, blocks, writes, words, fail };
}

/** Kernels whose launches are recorded, with simulated table memory. */
function recordingWithTables(capacity?: number) {
  const tables = fakeTableMemory();
  const r = recording({ tables: tables.memory, tableCapacity: capacity });
  return { ...r, tables };
}

/** A table's words: offsets, then one column of addresses per operand. */
function tableWords(offsets: number[], columns: bigint[][]): bigint[] {
  return [...offsets.map(BigInt), ...columns.flat()];
}

const addresses = (buffers: CudaBuffer[]) => buffers.map((b) => b.address);

Deno.test("Kernels.sgdUpdateMany launches once over a table of (param, grad, buf) columns, rewriting only the gradients' when they move", () => {
  const { kernels, calls, tables, live } = recordingWithTables();
  const lengths = [5, 0, 300];
  const params = lengths.map(buffer);
  const grads = lengths.map(buffer);
  const bufs = lengths.map(buffer);
  const step = {
    lr: 0.1,
    momentum: 0.9,
    dampening: 0.25,
    weightDecay: 1e-4,
    nesterov: false,
    firstStep: true,
  };
  const run = (s: typeof step, b: CudaBuffer[] | null, g = grads) =>
    kernels.sgdUpdateMany({
      params,
      grads: g,
      momentumBuffers: b,
      lengths,
      step: s,
    });
  run(step, bufs);
  run({ ...step, firstStep: false }, bufs);
  assert.deepEqual(calls.map((c) => c.kernel), [
    "sgd_update_many",
    "sgd_update_many",
  ]);
  const table = calls[0].args.table as bigint;
  assert.deepEqual(tables.writes, [{ address: table, bytes: 13 * 8 }]);
  assert.deepEqual(
    tables.words(table),
    tableWords([0, 5, 5, 305], [
      addresses(params),
      addresses(grads),
      addresses(bufs),
    ]),
  );
  assert.deepEqual(calls[0].config, multiTensor(lengths).config);
  assert.deepEqual(calls[0].args, {
    tensors: 3,
    table,
    mode: SGD_MODES.indexOf("first"),
    nesterov: 0,
    lr: 0.1,
    momentum: 0.9,
    keep: 0.75,
    weight_decay: 1e-4,
  });
  assert.equal(calls[1].args.mode, SGD_MODES.indexOf("later"));
  assert.equal(calls[1].args.table, table, "the later step finds the table");
  // New gradients, as after every backward pass: the same table, its
  // gradient column (after 4 offsets and 3 parameters) rewritten alone.
  const moved = lengths.map(buffer);
  run({ ...step, firstStep: false }, bufs, moved);
  assert.equal(calls[2].args.table, table);
  assert.deepEqual(tables.writes.slice(1), [
    { address: table + BigInt(7 * 8), bytes: 3 * 8 },
  ]);
  assert.deepEqual(
    tables.words(table),
    tableWords([0, 5, 5, 305], [
      addresses(params),
      addresses(moved),
      addresses(bufs),
    ]),
  );
  // Without buffers, or without momentum: plain, the buffer column 0, in a
  // table of its own.
  run(step, null);
  run({ ...step, momentum: 0 }, bufs);
  assert.deepEqual(
    calls.slice(3).map((c) => SGD_MODES[c.args.mode as number]),
    ["plain", "plain"],
  );
  const plain = calls[3].args.table as bigint;
  assert.notEqual(plain, table);
  assert.equal(calls[4].args.table, plain);
  assert.deepEqual(tables.words(plain).slice(4 + 3 + 3), [0n, 0n, 0n]);
  // Nothing to update: no launch, no table.
  kernels.sgdUpdateMany({
    params: [params[1]],
    grads: [grads[1]],
    momentumBuffers: [bufs[1]],
    lengths: [0],
    step,
  });
  assert.equal(calls.length, 5);
  assert.equal(live.size, 0, "no scratch held");
  assert.deepEqual(kernels.tableStats(), {
    hits: 2,
    updates: 1,
    uploads: 2,
    evictions: 0,
    tables: 2,
    bytes: 2 * 13 * 8,
  });
  kernels.dispose();
  assert.equal(tables.blocks.size, 0, "dispose frees the tables");
});

Deno.test("Kernels.axpbyMany launches once over a table of (x, y) columns", () => {
  const { kernels, calls, tables } = recordingWithTables();
  const lengths = [0, 64, 7];
  const xs = lengths.map(buffer);
  const ys = lengths.map(buffer);
  for (let step = 0; step < 3; step++) {
    kernels.axpbyMany({ alpha: 0.01, beta: 0.99, xs, ys, lengths });
  }
  assert.deepEqual(calls.map((c) => c.kernel), [
    "axpby_many",
    "axpby_many",
    "axpby_many",
  ]);
  const table = calls[0].args.table as bigint;
  assert.deepEqual(tables.writes, [{ address: table, bytes: 10 * 8 }]);
  assert.deepEqual(
    tables.words(table),
    tableWords([0, 0, 64, 71], [addresses(xs), addresses(ys)]),
  );
  assert.deepEqual(calls[0].args, {
    tensors: 3,
    table,
    alpha: 0.01,
    beta: 0.99,
  });
  assert.deepEqual(calls[0].config, multiTensor(lengths).config);
  // Another teacher, say: no volatile column, so a new table.
  kernels.axpbyMany({
    alpha: 0.01,
    beta: 0.99,
    xs,
    ys: lengths.map(buffer),
    lengths,
  });
  assert.notEqual(calls[3].args.table, table);
  assertThrows(
    () => kernels.axpbyMany({ alpha: 1, beta: 1, xs, ys: [], lengths }),
    /axpbyMany: 0 ys for 3 lengths/,
  );
  assertThrows(
    () =>
      new Kernels(() => {}, { alloc: () => 0n, free: () => {} }).axpbyMany({
        alpha: 1,
        beta: 1,
        xs,
        ys,
        lengths,
      }),
    /without table memory/,
  );
});

Deno.test("TableCache finds a table by its content and evicts the least recently used, freeing its block first", () => {
  const { memory, blocks, writes } = fakeTableMemory();
  const cache = new TableCache(memory, 2);
  const offsets = [0, 3, 7];
  const xs = [0x10n, 0x20n];
  const [a, b, c] = [[1n, 2n], [3n, 4n], [5n, 6n]];
  const table = (ys: bigint[]) => cache.address(offsets, [xs, ys]);
  const ta = table(a);
  table(b);
  assert.equal(table(a), ta); // a is now the most recently used
  table(c); // evicts b, its block freed before the new one is taken
  assert.equal(writes.length, 3);
  assert.equal(blocks.size, 2);
  assert.equal(table(a), ta, "a was kept");
  table(b); // evicts c
  assert.equal(writes.length, 4);
  assert.equal(table(a), ta, "a still kept");
  assert.deepEqual(cache.stats(), {
    hits: 3,
    updates: 0,
    uploads: 4,
    evictions: 2,
    tables: 2,
    bytes: 2 * 7 * 8,
  });
  cache.clear();
  assert.equal(blocks.size, 0);
});

Deno.test("TableCache rewrites a volatile column in place, alone, and keys a table by everything else", () => {
  const { memory, blocks, writes, words } = fakeTableMemory();
  const cache = new TableCache(memory);
  const offsets = [0, 3, 7];
  const params = [0x10n, 0x20n];
  const [g1, g2] = [[1n, 2n], [3n, 4n]];
  const bufs = [0x30n, 0x40n];
  const t = cache.address(offsets, [params, g1, bufs], [1]);
  assert.equal(cache.address(offsets, [params, g2, bufs], [1]), t);
  assert.deepEqual(writes.slice(1), [{ address: t + 5n * 8n, bytes: 16 }]);
  assert.deepEqual(words(t), tableWords(offsets, [params, g2, bufs]));
  assert.equal(cache.address(offsets, [params, g2, bufs], [1]), t, "a hit");
  assert.equal(writes.length, 2);
  // Another parameter, buffer or length is another table.
  for (
    const [o, cols] of [
      [offsets, [[0x11n, 0x20n], g2, bufs]],
      [offsets, [params, g2, [0x30n, 0n]]],
      [[0, 3, 8], [params, g2, bufs]],
    ] as const
  ) {
    assert.notEqual(cache.address(o, cols, [1]), t);
  }
  // The same words with no volatile column are another key too.
  const fixed = cache.address(offsets, [params, g2, bufs]);
  assert.notEqual(fixed, t);
  assert.equal(blocks.size, 4, "4 tables: the first was evicted");
  assert.deepEqual(
    [cache.stats().hits, cache.stats().updates, cache.stats().uploads],
    [1, 1, 5],
  );
});

Deno.test("TableCache writes offsets past 2^32 and addresses of any bit pattern exactly, and frees a block it could not write", () => {
  const { memory, blocks, words, fail } = fakeTableMemory();
  const cache = new TableCache(memory);
  // Halves that read as float32 NaNs, signalling and quiet, and -0.
  const odd = [0x7f800001_7fc00001n, 0xffc00000_80000000n];
  const offsets = [0, 2 ** 32 + 5, 2 ** 33 + 10];
  const t = cache.address(offsets, [odd, [1n, 2n]]);
  assert.deepEqual(words(t), [
    0n,
    2n ** 32n + 5n,
    2n ** 33n + 10n,
    odd[0],
    odd[1],
    1n,
    2n,
  ]);
  assert.equal(cache.address(offsets, [odd, [1n, 2n]]), t, "a hit");
  fail(true);
  assertThrows(() => cache.address([0, 1], [[5n]]), /staging failed/);
  assert.equal(blocks.size, 1, "the failed table's block is freed");
  assert.equal(cache.stats().tables, 1);
  assertThrows(
    () => cache.address([0, 1, 2], [[5n]]),
    /table column 0 has 1 addresses for 2 tensors/,
  );
  assertThrows(
    () => new TableCache(memory, 0),
    /at least one table/,
  );
  cache.clear();
  assert.equal(blocks.size, 0);
});

Deno.test("marshal() gives each argument its C width and refuses counts of 2^31", () => {
  const args = marshal("fill", {
    y: 0x1234n,
    count: 7,
    stride: -2,
    value: 0.1,
  });
  assert.deepEqual(args.map((a) => a.constructor.name), [
    "BigUint64Array",
    "Int32Array",
    "Int32Array",
    "Float32Array",
  ]);
  assert.equal((args[3] as Float32Array)[0], Math.fround(0.1));
  const axpby = marshal("axpby", { n: 1, alpha: 0.1, x: 1n, beta: 0, y: 2n });
  assert.equal((axpby[1] as Float64Array)[0], 0.1, "doubles stay exact");
  assertThrows(
    () => marshal("fill", { y: 0n, count: 2 ** 31, stride: 1, value: 0 }),
    /kernel fill: count = 2147483648 does not fit a 32-bit int/,
  );
  assertThrows(
    () =>
      marshal("fill", {
        y: 0n,
        count: 1,
        stride: 1,
        value: 0,
        extra: 1,
      } as KernelArgs<"fill">),
    /no parameter extra/,
  );
});

// --- the parameter lists against the source and the PTX ---------------------------

/** Each extern "C" kernel of the source with its parameters' names and types. */
function sourceKernels(source: string): Map<string, [string, ParamType][]> {
  const out = new Map<string, [string, ParamType][]>();
  const re = /extern "C" __global__ void (\w+)\(([^)]*)\)/g;
  for (const [, name, list] of source.matchAll(re)) {
    const params = list.split(",").map((p): [string, ParamType] => {
      const words = p.replace(/\b(const|__restrict__)\b/g, " ").trim()
        .split(/\s+/);
      const pname = words.pop() ?? "";
      const ctype = words.join("");
      const type: ParamType = ctype.endsWith("*")
        ? "ptr"
        : (ctype as ParamType);
      return [pname, type];
    });
    out.set(name, params);
  }
  return out;
}

Deno.test("every kernel's parameter list matches its declaration in the CUDA C source", () => {
  const declared = sourceKernels(KERNEL_SOURCE);
  assert.deepEqual([...declared.keys()].sort(), [...KERNEL_NAMES].sort());
  for (const name of KERNEL_NAMES) {
    assert.deepEqual(
      declared.get(name),
      KERNELS[name].map(([n, t]) => [n, t]),
      name,
    );
  }
});

Deno.test("the op codes of the CUDA C enums are those of the TypeScript lists", () => {
  for (
    const [list, prefix] of [[BINARY_OPS, "BINARY"], [UNARY_OPS, "UNARY"], [
      SGD_MODES,
      "SGD",
    ]] as const
  ) {
    list.forEach((op, i) => {
      assert.match(
        KERNEL_SOURCE,
        new RegExp(`\\b${prefix}_${op.toUpperCase()} = ${i}\\b`),
      );
    });
  }
});

// --- NVRTC ------------------------------------------------------------------------

const PTX_TYPE: Record<ParamType, string> = {
  ptr: "u64",
  int: "u32",
  float: "f32",
  double: "f64",
};

/** Registers, stack and spills of each kernel, from ptxas's -v log. */
interface Usage {
  registers: number;
  stack: number;
  spillStores: number;
  spillLoads: number;
}

function ptxasUsage(log: string): Map<string, Usage> {
  const usage = new Map<string, Usage>();
  let current = "";
  for (const line of log.split("\n")) {
    const fn = /Function properties for (\w+)/.exec(line);
    if (fn) current = fn[1];
    const frame =
      /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/
        .exec(line);
    if (frame && current) {
      usage.set(current, {
        registers: -1,
        stack: Number(frame[1]),
        spillStores: Number(frame[2]),
        spillLoads: Number(frame[3]),
      });
    }
    const regs = /Used (\d+) registers/.exec(line);
    const u = usage.get(current);
    if (regs && u) u.registers = Number(regs[1]);
  }
  return usage;
}

Deno.test({
  name:
    "the kernels compile with NVRTC to CUBIN for sm_80 and sm_90, with no register spills",
  ignore: noNvrtc,
  fn() {
    for (const arch of ["sm_80", "sm_90"]) {
      const k = compile(KERNEL_SOURCE, {
        arch,
        options: [...COMPILE_OPTIONS, "--ptxas-options=-v"],
      });
      assert.deepEqual([...k.cubin.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
      assert.doesNotMatch(k.log, /warning/i, k.log);
      const usage = ptxasUsage(k.log);
      assert.deepEqual([...usage.keys()].sort(), [...KERNEL_NAMES].sort());
      for (const [name, u] of usage) {
        assert.equal(u.spillStores, 0, `${arch} ${name} spill stores`);
        assert.equal(u.spillLoads, 0, `${arch} ${name} spill loads`);
        // 256 threads of a block must fit the 64K registers of an SM.
        assert.ok(u.registers > 0 && u.registers * 256 <= 65536, name);
      }
    }
  },
});

Deno.test({
  name:
    "NVRTC's PTX declares each kernel with the parameter widths launches pass",
  ignore: noNvrtc,
  fn() {
    const { ptx } = compile(KERNEL_SOURCE, {
      arch: "compute_90",
      options: COMPILE_OPTIONS,
    });
    const re = /\.visible \.entry (\w+)\(([^)]*)\)/g;
    const entries = new Map<string, string[]>();
    for (const [, name, list] of ptx.matchAll(re)) {
      entries.set(
        name,
        [...list.matchAll(/\.param \.(\w+) \w+_param_\d+/g)].map((m) => m[1]),
      );
    }
    assert.deepEqual([...entries.keys()].sort(), [...KERNEL_NAMES].sort());
    for (const name of KERNEL_NAMES) {
      assert.deepEqual(
        entries.get(name),
        KERNELS[name].map(([, t]) => PTX_TYPE[t]),
        name,
      );
    }
    // Only dynamic shared memory, which the launch configurations size.
    assert.doesNotMatch(ptx, /\.shared \.align \d+ \.b8 \w+\[\d+\]/);
  },
});

// --- the disk cache ---------------------------------------------------------------

const INPUTS: BuildInputs = {
  source: KERNEL_SOURCE,
  arch: "sm_90",
  compiler: "nvrtc 13.0",
  options: COMPILE_OPTIONS,
};

/** A stand-in for NVRTC: an ELF-looking image that counts its builds. */
function fakeBuild(tag = 0) {
  const build = () => {
    build.count++;
    const image = new Uint8Array(1000 + tag);
    image.set([0x7f, 0x45, 0x4c, 0x46]);
    for (let i = 4; i < image.length; i++) image[i] = (i * 31 + tag) & 0xff;
    return image;
  };
  build.count = 0;
  return build;
}

Deno.test("the cache key changes with the source, the architecture, the compiler and the options", () => {
  const base = cacheKey(INPUTS);
  assert.match(base, /^[0-9a-f]{64}$/);
  assert.equal(cacheKey({ ...INPUTS }), base);
  for (
    const changed of [
      { ...INPUTS, arch: "sm_80" },
      { ...INPUTS, source: INPUTS.source + " " },
      { ...INPUTS, compiler: "nvrtc 13.1" },
      { ...INPUTS, options: [...INPUTS.options, "-lineinfo"] },
    ]
  ) {
    assert.notEqual(cacheKey(changed), base);
  }
});

Deno.test("the cache builds on a miss, stores atomically and reads the entry back on a hit", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const build = fakeBuild();
    const first = cachedBuild(`${dir}/kernels`, INPUTS, build);
    assert.deepEqual([first.hit, first.stored, build.count], [false, true, 1]);
    const second = cachedBuild(`${dir}/kernels`, INPUTS, build);
    assert.deepEqual([second.hit, build.count], [true, 1]);
    assert.deepEqual(second.cubin, first.cubin);
    assert.equal(second.path, first.path);
    // Another architecture is another entry.
    const other = cachedBuild(
      `${dir}/kernels`,
      { ...INPUTS, arch: "sm_80" },
      build,
    );
    assert.deepEqual([other.hit, build.count], [false, 2]);
    const names = [...Deno.readDirSync(`${dir}/kernels`)].map((e) => e.name);
    assert.equal(names.length, 2, `no temporary files left: ${names}`);
    assert.ok(names.every((n) => /^[0-9a-f]{64}\.cubin$/.test(n)));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a truncated or corrupt cache entry is ignored and rebuilt", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const build = fakeBuild();
    const { path, cubin } = cachedBuild(dir, INPUTS, build);
    const whole = Deno.readFileSync(path!);
    const damaged = [
      whole.slice(0, whole.length - 1), // truncated
      whole.slice(0, 20), // truncated inside the header
      new Uint8Array(0), // empty
      (() => { // a flipped bit in the image
        const b = whole.slice();
        b[b.length - 10] ^= 1;
        return b;
      })(),
      (() => { // a wrong length field
        const b = whole.slice();
        b[12] ^= 1;
        return b;
      })(),
    ];
    for (const [i, bytes] of damaged.entries()) {
      Deno.writeFileSync(path!, bytes);
      const again = cachedBuild(dir, INPUTS, build);
      assert.deepEqual([again.hit, again.stored], [false, true], `damage ${i}`);
      assert.equal(build.count, i + 2);
      assert.deepEqual(again.cubin, cubin);
      assert.deepEqual(Deno.readFileSync(path!), whole, "rewritten whole");
    }
    // A sound entry that is not an ELF image is refused too.
    assert.equal(decodeEntry(encodeEntry(new Uint8Array(100))), null);
    assert.deepEqual(decodeEntry(encodeEntry(cubin)), cubin);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("an unwritable cache folder means compiling every time, with no error", () => {
  const dir = Deno.makeTempDirSync();
  try {
    // A folder under a regular file cannot be made, even by root.
    Deno.writeTextFileSync(`${dir}/file`, "");
    const build = fakeBuild();
    for (let i = 1; i <= 2; i++) {
      const r = cachedBuild(`${dir}/file/kernels`, INPUTS, build);
      assert.deepEqual([r.hit, r.stored, build.count], [false, false, i]);
    }
    const none = cachedBuild(null, INPUTS, build);
    assert.deepEqual([none.hit, none.stored, none.path], [false, false, null]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the cache lives in MEC_KERNEL_CACHE, else under XDG_CACHE_HOME or ~/.cache; off turns it off", () => {
  const saved = ["MEC_KERNEL_CACHE", "XDG_CACHE_HOME", "HOME"].map((
    k,
  ) => [k, Deno.env.get(k)] as const);
  try {
    Deno.env.set("MEC_KERNEL_CACHE", "/tmp/mec-kernels");
    assert.equal(defaultCacheDir(), "/tmp/mec-kernels");
    Deno.env.set("MEC_KERNEL_CACHE", "off");
    assert.equal(defaultCacheDir(), null);
    Deno.env.delete("MEC_KERNEL_CACHE");
    Deno.env.set("XDG_CACHE_HOME", "/x/cache");
    assert.equal(defaultCacheDir(), "/x/cache/deno-mec/kernels");
    Deno.env.delete("XDG_CACHE_HOME");
    Deno.env.set("HOME", "/home/u");
    assert.equal(defaultCacheDir(), "/home/u/.cache/deno-mec/kernels");
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
});

Deno.test({
  name:
    "buildKernels() compiles with NVRTC once, then reads the CUBIN from the cache",
  ignore: noNvrtc,
  fn() {
    const dir = Deno.makeTempDirSync();
    try {
      const first = buildKernels("sm_80", dir);
      assert.deepEqual([first.hit, first.stored], [false, true]);
      assert.deepEqual([...first.cubin.subarray(0, 4)], [
        0x7f,
        0x45,
        0x4c,
        0x46,
      ]);
      const second = buildKernels("sm_80", dir);
      assert.ok(second.hit);
      assert.deepEqual(second.cubin, first.cubin);
      assertThrows(
        () => buildKernels("compute_90", dir),
        /real GPU architecture/,
      );
    } finally {
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
