/**
 * The memory-bound ops of a training step on oneDNN's primitives: batch
 * normalisation (training and inference forward, backward; with the ReLU
 * after it in training, forward and backward in one pass each), ReLU,
 * max pooling, the sum of two tensors and sums over rows. The TypeScript
 * kernels stay the fallback and the reference.
 *
 * oneDNN's ReLU turns NaN and -Inf into 0 (and in its backward, a NaN or
 * infinite gradient where y = 0 into NaN), where PyTorch's keeps the NaN,
 * and a NaN that vanished inside the network would hide a diverged run
 * from the non-finite loss check. The backend runs it only on operands it
 * has checked to be finite (backend.ts); inside a batch norm a check of
 * the statistics brings the NaN back (batchNormForwardTraining).
 *
 * Operands are in the layout the backend holds them in: NCHW (or a flat
 * run of elements), or the blocked layout a convolution left (layout.ts),
 * so no reorder is needed, except for a large plain batch norm's training
 * forward, which is faster through the blocked layout and back
 * (#blockedRoute). They run on OpenMP's threads,
 * as many as the convolutions (`MEC_THREADS`): oneDNN's plain-layout batch
 * norm is bound by one core's arithmetic, not by memory, and two threads
 * run it 1.8 times as fast ([8, 256, 56, 56], forward and backward, 14 ms
 * against 27 ms on an idle 2-core machine; 39 ms against 26 ms on average
 * while another process held a core, where the whole demo step was 11 %
 * slower for it). One count for every shape keeps the results the same
 * from run to run: for some shapes oneDNN splits a channel's sums between
 * threads, so the bits depend on the count. Primitives are built once per
 * shape; their memory objects are made once and only their data pointers
 * are set on each call.
 *
 * oneDNN's batch norm keeps the batch variance where the backend interface
 * (cuDNN's) keeps 1/sqrt(variance + eps): the forward computes that from
 * the variance oneDNN wrote, the backward hands oneDNN the variance back
 * (1/invStd^2 - eps, exact to float32 rounding), and the running averages
 * move here, as the TypeScript kernel moves them.
 *
 * @module
 */

import type { BatchNormDesc, PoolDesc, SgdStep } from "../nn/backend.ts";
import type { SgemmArgs } from "./blas.ts";
import { Scratch as ScratchArray } from "./allocator.ts";
import type { Scratch } from "./conv.ts";
import type { BlockedLayout, Layouts } from "./layout.ts";
import { keyForThreads, singleThreaded, SMALL_OP } from "./threads.ts";
import {
  ALG,
  ARG,
  BNORM,
  type Dnnl,
  execArgs,
  FORMAT_ANY,
  type Handle,
  plainTag,
  type PostOp,
  postOpSrc1,
  PROP,
  QUERY,
} from "./dnnl.ts";

/** A primitive on one shape, ready to run. */
interface Plan {
  primitive: Handle;
  /** `dnnl_exec_arg_t` pairs, in the order of `memories`. */
  args: BigUint64Array;
  /** One memory object per operand, in the order `run` is given arrays. */
  memories: Handle[];
  scratchpad: Handle | null;
  /** Scratchpad size in float32 elements. */
  scratchpadLength: number;
  /** Float32 elements of the workspace operand, if there is one. */
  workspaceLength: number;
  implementation: string;
  /** Built and run on one OpenMP thread: a small shape (threads.ts). */
  singleThreaded: boolean;
}

/**
 * The data layout of a batch norm as NCHW [n, c, spatial, 1]: oneDNN's
 * optimised plain-layout kernel ("ncsp") takes 4-D and 5-D tensors only and
 * would leave 2-D and 3-D ones to its reference loops, 30 times slower.
 */
function bnDims(d: BatchNormDesc): number[] {
  return [d.n, d.c, d.spatial, 1];
}

function bnElements(d: BatchNormDesc): number {
  return d.n * d.c * d.spatial;
}

/**
 * `build(small)` on one OpenMP thread for a shape of at most SMALL_OP
 * elements (small), else on all.
 */
function onThreads<T>(elements: number, build: (small: boolean) => T): T {
  return elements <= SMALL_OP
    ? singleThreaded(() => build(true))
    : build(false);
}

/** The most rows of A for which gemm computes A Bᵀ as its transpose. */
export const SWAP_ROWS = 64;

/**
 * allFinite's row length: long enough for oneDNN's reduction to run at the
 * rate of memory, short enough that the tail left to TypeScript is small.
 */
const FINITE_ROW = 4096;

function bnFlags(scale: boolean, shift: boolean): number {
  return (scale ? BNORM.scale : 0) | (shift ? BNORM.shift : 0);
}

/** Whether every value of the first `c` of each array (or null) is finite. */
function allFinite(
  c: number,
  ...arrays: (Float32Array | null)[]
): boolean {
  for (const a of arrays) {
    if (a === null) continue;
    for (let i = 0; i < c; i++) if (!Number.isFinite(a[i])) return false;
  }
  return true;
}

/**
 * A plain batch norm's training forward run in a blocked layout: the
 * layout, the reorders of plain data into it and back, and its size in
 * float32 elements.
 */
interface BlockedRoute {
  layout: BlockedLayout;
  toBlocked: Plan;
  toPlain: Plan;
  length: number;
}

/** Max pooling on one shape and layout. */
interface PoolPlan {
  inference: Plan;
  /** The forward that also writes the maxima's positions (workspace). */
  training: Plan;
  backward: Plan;
  /** The output's layout (x's blocking, or null for NCHW). */
  outputLayout: BlockedLayout | null;
}

/** Cached oneDNN primitives for the memory-bound ops of one backend. */
export class DnnlOps {
  readonly #dnnl: Dnnl;
  readonly #scratch: Scratch;
  /** Per op and shape, per data layout (null: plain). */
  readonly #plans = new Map<string, Map<BlockedLayout | null, Plan>>();
  /** Per-channel float32 temporaries (variances), grown as needed. */
  #channels = new Float32Array(0);
  #channels2 = new Float32Array(0);
  /** gemm's transposed product. */
  readonly #gemmTranspose = new ScratchArray();
  /** allFinite's row sums. */
  readonly #rowTotals = new ScratchArray();
  /** The run-time factors of axpy, axpby and the momentum buffer. */
  readonly #scalars = new Float32Array(1);
  readonly #scalars2 = new Float32Array(1);

  /** Max pooling's backward: the forward's output and workspace, again. */
  readonly #poolOutput = new ScratchArray();
  readonly #poolWorkspace = new ScratchArray();
  /** The fused ReLU's mask where no reserve keeps it for a backward. */
  readonly #bnWorkspace = new ScratchArray();
  /** A plain training forward's data, rewritten blocked (#blockedRoute). */
  readonly #blockedData = new ScratchArray();
  /**
   * Per plain batch norm shape, the blocked layout its training forward
   * runs in and the reorders there and back, or null where it runs plain.
   */
  readonly #bnBlocked = new Map<string, BlockedRoute | null>();
  /** Max pooling plans (three primitives each), per shape and layout. */
  readonly #pools = new Map<
    string,
    Map<BlockedLayout | null, PoolPlan | null>
  >();
  readonly #layouts: Layouts;

  constructor(dnnl: Dnnl, scratch: Scratch, layouts: Layouts) {
    this.#dnnl = dnnl;
    this.#scratch = scratch;
    this.#layouts = layouts;
  }

  /**
   * Bytes held for max pooling's backward, the fused ReLU's mask, the
   * blocked copy of a plain batch norm's data, gemm's transpose and the
   * finiteness check's row sums.
   */
  get bytes(): number {
    return this.#poolOutput.bytes + this.#poolWorkspace.bytes +
      this.#bnWorkspace.bytes + this.#blockedData.bytes +
      this.#gemmTranspose.bytes + this.#rowTotals.bytes;
  }

  release(): void {
    this.#poolOutput.release();
    this.#poolWorkspace.release();
    this.#bnWorkspace.release();
    this.#blockedData.release();
    this.#gemmTranspose.release();
    this.#rowTotals.release();
  }

  /**
   * Max pooling's forward on x in `layout` (null: NCHW). Returns the
   * layout y was written in, or undefined (y untouched) where oneDNN
   * would leave the output in a layout that does not fit y. A window's
   * first maximum in row-major order wins, as PyTorch's; NaN and -Inf
   * are the caller's to keep away (oneDNN drops the one and starts its
   * windows above the other). With a `reserve` (of `maxPoolReserve`
   * elements), the maxima's positions are kept there for the backward.
   */
  maxPoolForward(
    x: Float32Array,
    y: Float32Array,
    d: PoolDesc,
    layout: BlockedLayout | null,
    reserve: Float32Array | null = null,
  ): BlockedLayout | null | undefined {
    const plan = this.#poolPlan(d, layout);
    if (plan === null) return undefined;
    if (reserve === null) this.#run(plan.inference, [x, y]);
    else {
      const need = plan.training.workspaceLength;
      if (reserve.length < need) {
        throw new RangeError(
          `max pooling: a reserve of ${reserve.length} elements, ${need} needed`,
        );
      }
      this.#run(plan.training, [x, y, reserve]);
    }
    return plan.outputLayout;
  }

  /**
   * Elements of the reserve the forward on x in `layout` fills: oneDNN's
   * workspace, the position of each output's maximum in its window; 0
   * where oneDNN does not pool this shape and layout.
   */
  maxPoolReserve(d: PoolDesc, layout: BlockedLayout | null): number {
    return this.#poolPlan(d, layout)?.training.workspaceLength ?? 0;
  }

  /** The layout the forward on x in `layout` writes y in (see there). */
  maxPoolOutputLayout(
    d: PoolDesc,
    layout: BlockedLayout | null,
  ): BlockedLayout | null | undefined {
    const plan = this.#poolPlan(d, layout);
    return plan === null ? undefined : plan.outputLayout;
  }

  /**
   * Max pooling's backward: dx from dy, x in `layout` and dy in
   * `dyLayout`. The positions of the maxima come from the forward's
   * `reserve`, or without one from running the forward again. Returns
   * dx's layout (x's), or undefined (dx untouched) where the layouts do
   * not go together.
   */
  maxPoolBackward(
    x: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    d: PoolDesc,
    layout: BlockedLayout | null,
    dyLayout: BlockedLayout | null,
    reserve: Float32Array | null = null,
  ): BlockedLayout | null | undefined {
    const plan = this.#poolPlan(d, layout);
    if (plan === null || dyLayout !== plan.outputLayout) return undefined;
    let ws = reserve;
    if (ws === null) {
      const y = this.#poolOutput.get(d.n * d.c * d.oh * d.ow);
      ws = this.#poolWorkspace.get(plan.training.workspaceLength);
      this.#run(plan.training, [x, y, ws]);
    }
    this.#run(plan.backward, [dy, ws, dx]);
    return layout;
  }

  /**
   * Each primitive built so far and oneDNN's implementation of it, with
   * "1 thread" where it runs on one.
   */
  implementations(): [string, string][] {
    const plans = [...this.#plans].flatMap(([key, byLayout]) =>
      [...byLayout].map(([layout, p]): [string, Plan] => [
        layout === null ? key : `${key} blocked`,
        p,
      ])
    );
    for (const [key, byLayout] of this.#pools) {
      for (const [layout, pool] of byLayout) {
        if (pool === null) continue;
        const name = `max pool ${key}${layout === null ? "" : " blocked"}`;
        plans.push([name, pool.training], [`${name} backward`, pool.backward]);
      }
    }
    return plans.map(([key, p]) => [
      key,
      p.singleThreaded ? `${p.implementation}, 1 thread` : p.implementation,
    ]);
  }

  batchNormForwardTraining(
    x: Float32Array,
    y: Float32Array,
    gamma: Float32Array | null,
    beta: Float32Array | null,
    runningMean: Float32Array | null,
    runningVar: Float32Array | null,
    saveMean: Float32Array,
    saveInvStd: Float32Array,
    d: BatchNormDesc,
    layout: BlockedLayout | null = null,
    relu = false,
    reserve: Float32Array | null = null,
  ): boolean {
    const route = layout === null ? this.#blockedRoute(d) : null;
    if (route !== null) {
      const data = this.#blockedData.get(route.length);
      this.#run(route.toBlocked, [x, data]);
      this.batchNormForwardTraining(
        data,
        data,
        gamma,
        beta,
        runningMean,
        runningVar,
        saveMean,
        saveInvStd,
        d,
        route.layout,
      );
      this.#run(route.toPlain, [data, y]);
      return false;
    }
    const variance = this.#channelTemp(d.c);
    const run = (fuse: boolean) => {
      const plan = this.#bnForwardPlan(
        d,
        gamma !== null,
        beta !== null,
        false,
        layout,
        fuse,
      );
      const arrays = [x, y, saveMean, variance];
      if (gamma) arrays.push(gamma);
      if (beta) arrays.push(beta);
      if (fuse) {
        if (reserve !== null && reserve.length < plan.workspaceLength) {
          throw new RangeError(
            `batch norm + ReLU: a reserve of ${reserve.length} elements, ${plan.workspaceLength} needed`,
          );
        }
        arrays.push(reserve ?? this.#bnWorkspace.get(plan.workspaceLength));
      }
      this.#run(plan, arrays);
    };
    // The ReLU inside the batch norm on blocked data only: the plain-layout
    // kernel runs four times as slowly with it. oneDNN's ReLU turns NaN
    // into 0, but a NaN (or infinity) anywhere in a channel's input makes
    // its mean or variance NaN, and a NaN out of finite inputs needs a
    // gamma or beta that is not finite: then the channel runs again without
    // the ReLU, which the caller applies keeping NaN, as PyTorch does.
    let fused = relu && layout !== null;
    run(fused);
    if (fused && !allFinite(d.c, saveMean, variance, gamma, beta)) {
      run(false);
      fused = false;
    }
    const count = d.n * d.spatial;
    const m = d.momentum;
    for (let ch = 0; ch < d.c; ch++) {
      const v = variance[ch];
      saveInvStd[ch] = 1 / Math.sqrt(v + d.eps);
      if (runningMean && runningVar) {
        // PyTorch updates the running variance with the unbiased estimate.
        const unbiased = count > 1 ? v * count / (count - 1) : v;
        runningMean[ch] = (1 - m) * runningMean[ch] + m * saveMean[ch];
        runningVar[ch] = (1 - m) * runningVar[ch] + m * unbiased;
      }
    }
    return fused;
  }

  /**
   * Elements of the reserve a training forward with the ReLU fills on
   * data in `layout` (the ReLU's mask, a bit per element), or 0 where it
   * would not fuse (plain data).
   */
  batchNormReluReserve(d: BatchNormDesc, layout: BlockedLayout | null): number {
    if (layout === null) return 0;
    return this.#bnForwardPlan(d, true, true, false, layout, true)
      .workspaceLength;
  }

  /**
   * Batch norm on running statistics. In a blocked layout, oneDNN's batch
   * norm. In the plain layout, y = x scale + shift per channel with scale =
   * gamma / sqrt(var + eps) and shift = beta - mean scale (PyTorch's order
   * of operations): a binary multiply by the channel's scale with a binary
   * add of its shift as a post-op, which streams at about the copy's rate
   * where oneDNN's plain-layout batch norm ran at a third of it. (The same
   * binary on blocked data falls to oneDNN's reference loops.)
   */
  batchNormForwardInference(
    x: Float32Array,
    y: Float32Array,
    gamma: Float32Array | null,
    beta: Float32Array | null,
    mean: Float32Array,
    variance: Float32Array,
    d: BatchNormDesc,
    layout: BlockedLayout | null = null,
  ): void {
    if (layout !== null) {
      const plan = this.#bnForwardPlan(
        d,
        gamma !== null,
        beta !== null,
        true,
        layout,
      );
      const arrays = [x, y, mean, variance];
      if (gamma) arrays.push(gamma);
      if (beta) arrays.push(beta);
      this.#run(plan, arrays);
      return;
    }
    const scale = this.#channelTemp(d.c);
    const shift = this.#channelTemp2(d.c);
    for (let ch = 0; ch < d.c; ch++) {
      const s = (gamma ? gamma[ch] : 1) / Math.sqrt(variance[ch] + d.eps);
      scale[ch] = s;
      shift[ch] = (beta ? beta[ch] : 0) - mean[ch] * s;
    }
    this.#run(this.#channelAffinePlan(d), [x, scale, shift, y]);
  }

  batchNormBackward(
    x: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    gamma: Float32Array | null,
    beta: boolean,
    dGamma: Float32Array | null,
    dBeta: Float32Array | null,
    saveMean: Float32Array,
    saveInvStd: Float32Array,
    d: BatchNormDesc,
    layout: BlockedLayout | null = null,
    reluMask: Float32Array | null = null,
  ): void {
    const variance = this.#channelTemp(d.c);
    for (let ch = 0; ch < d.c; ch++) {
      const s = saveInvStd[ch];
      variance[ch] = 1 / (s * s) - d.eps;
    }
    const scale = gamma !== null;
    const diffs = dGamma !== null || dBeta !== null;
    const relu = reluMask !== null;
    const plan = this.#bnBackwardPlan(d, scale, beta, diffs, layout, relu);
    const arrays = [x, dy, dx, saveMean, variance];
    if (reluMask !== null) arrays.push(reluMask);
    if (gamma) arrays.push(gamma);
    if (diffs && beta) arrays.push(this.#channelTemp2(d.c));
    // The primitive writes the gradients of every parameter it has; a
    // gradient not asked for goes to a temporary.
    if (diffs && scale) arrays.push(dGamma ?? this.#channelTemp2(d.c));
    if (diffs && beta) arrays.push(dBeta ?? this.#channelTemp2(d.c));
    this.#run(plan, arrays);
  }

  /**
   * c = a + b over `length` elements (c may be a or b); with `relu`, then
   * max(c, 0), for finite a and b only (oneDNN's ReLU drops a NaN).
   */
  add(
    a: Float32Array,
    b: Float32Array,
    c: Float32Array,
    length: number,
    relu = false,
  ): void {
    this.#run(this.#addPlan(length, relu), [a, b, c]);
  }

  /**
   * y += alpha x over `length` elements (x and y distinct), alpha given at
   * run time: a multiply by a one-element operand and oneDNN's sum post-op,
   * so one plan serves every alpha (a learning rate that moves each step).
   */
  axpy(alpha: number, x: Float32Array, y: Float32Array, length: number): void {
    this.#scalars[0] = alpha;
    this.#run(this.#axpyPlan(length, false), [x, this.#scalars, y]);
  }

  /**
   * y = alpha x + beta y over `length` elements (x and y distinct, beta
   * far enough from 0 that alpha / beta stays finite), as beta (y + (alpha / beta) x): the axpy's plan with a second
   * multiply after the sum, both factors given at run time.
   */
  axpby(
    alpha: number,
    x: Float32Array,
    beta: number,
    y: Float32Array,
    length: number,
  ): void {
    this.#scalars[0] = alpha / beta;
    this.#scalars2[0] = beta;
    this.#run(this.#axpyPlan(length, true), [
      x,
      this.#scalars,
      this.#scalars2,
      y,
    ]);
  }

  /**
   * One SGD step with momentum, PyTorch's rule, in two passes: the buffer
   * (#momentumPlan), then the parameter (an axpy by the learning rate). Returns
   * false, and touches nothing, for a case it leaves to the TypeScript
   * kernel: no momentum (there the weight decay would be folded into a
   * factor 1 - lr wd that float32 rounds to a few percent of its decay), or
   * Nesterov's step after the first (three factors that move with the
   * learning rate).
   */
  sgdUpdate(
    param: Float32Array,
    grad: Float32Array,
    buf: Float32Array | null,
    length: number,
    s: SgdStep,
  ): boolean {
    const { lr, momentum: mu, weightDecay: wd } = s;
    if (buf === null || mu === 0 || (s.nesterov && !s.firstStep)) return false;
    if (s.firstStep && wd === 0) {
      // PyTorch starts the buffer as the gradient itself, undamped.
      buf.set(grad.subarray(0, length));
    } else {
      this.#scalars[0] = wd === 0 ? 1 - s.dampening : wd;
      this.#scalars2[0] = 1 - s.dampening;
      const plan = this.#momentumPlan(
        length,
        wd !== 0,
        s.firstStep ? null : mu,
      );
      const factors = wd === 0 ? [this.#scalars] : [this.#scalars, grad];
      if (wd !== 0 && !s.firstStep) factors.push(this.#scalars2);
      this.#run(plan, [wd === 0 ? grad : param, ...factors, buf]);
    }
    this.axpy(-lr * (s.nesterov ? 1 + mu : 1), buf, param, length);
    return true;
  }

  /**
   * y[i] = the sum (or with `mean`, the mean) of row i of x, `rows` rows
   * of `length` elements, plain: a global average pooling. oneDNN's
   * reduction runs blocked data on its reference loops, 100 times as
   * slowly, so it is given plain data only.
   */
  rowSums(
    x: Float32Array,
    y: Float32Array,
    rows: number,
    length: number,
    mean: boolean,
  ): void {
    this.#run(this.#rowsPlan(rows, length, mean), [x, y]);
  }

  /**
   * C = alpha op(A) op(B) + beta C, row-major with leading dimensions, on
   * oneDNN's sgemm. A times B transposed with at most SWAP_ROWS rows of A
   * (a linear layer's forward at a small batch) runs as its transpose,
   * B times A transposed, into a temporary that is then transposed into C:
   * oneDNN is 3 times as fast that way round (16 x 2048 by 2048: 1.2
   * against 3.6 ms, OpenBLAS 2.8).
   */
  gemm(...args: SgemmArgs): void {
    const [transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc] = args;
    const dn = this.#dnnl;
    if (!transB || transA || m > SWAP_ROWS) {
      dn.sgemm(...args);
      return;
    }
    const t = this.#gemmTranspose.get(m * n);
    dn.sgemm(false, true, n, m, k, alpha, b, ldb, a, lda, 0, t, m);
    for (let i = 0; i < m; i++) {
      const row = i * ldc;
      if (beta === 0) {
        for (let j = 0; j < n; j++) c[row + j] = t[j * m + i];
      } else {
        for (let j = 0; j < n; j++) {
          c[row + j] = t[j * m + i] + beta * c[row + j];
        }
      }
    }
  }

  /**
   * Whether x's first `length` values are all finite, read on all cores:
   * sums of rows of FINITE_ROW elements (a sum that holds a NaN or an
   * infinity is not finite; one of finite values that overflows only sends
   * the caller to its exact path), the tail in TypeScript.
   */
  allFinite(x: Float32Array, length: number): boolean {
    const rows = Math.floor(length / FINITE_ROW);
    if (rows > 0) {
      const sums = this.#rowTotals.get(rows);
      this.rowSums(x, sums, rows, FINITE_ROW, false);
      for (let i = 0; i < rows; i++) {
        if (!Number.isFinite(sums[i])) return false;
      }
    }
    for (let i = rows * FINITE_ROW; i < length; i++) {
      if (!Number.isFinite(x[i])) return false;
    }
    return true;
  }

  /**
   * y = max(x, 0) over `length` elements (y may be x), for finite x only:
   * oneDNN's ReLU turns NaN and -Inf into 0 (the caller checks).
   */
  reluForward(x: Float32Array, y: Float32Array, length: number): void {
    this.#run(this.#reluPlan(length, false), [x, y]);
  }

  /**
   * dx = 0 where y <= 0, else dy (a NaN y passes dy, as PyTorch's), over
   * `length` elements, for finite dy only: oneDNN multiplies dy by 0 or 1,
   * so a NaN or infinite dy where y = 0 would come out NaN (the caller
   * checks), and a negative one -0 where the TypeScript kernel writes +0,
   * the same number.
   */
  reluBackward(
    y: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    length: number,
  ): void {
    this.#run(this.#reluPlan(length, true), [y, dy, dx]);
  }

  #channelTemp(c: number): Float32Array {
    if (this.#channels.length < c) this.#channels = new Float32Array(c);
    return this.#channels;
  }

  #channelTemp2(c: number): Float32Array {
    if (this.#channels2.length < c) this.#channels2 = new Float32Array(c);
    return this.#channels2;
  }

  #bnForwardPlan(
    d: BatchNormDesc,
    scale: boolean,
    shift: boolean,
    inference: boolean,
    layout: BlockedLayout | null,
    relu = false,
  ): Plan {
    const key = `bn ${inference ? "inference" : "training"} ${
      bnDims(d)
    } ${d.eps} ${scale} ${shift}${relu ? " relu" : ""}`;
    return this.#cached(key, layout, bnElements(d), () => {
      const dn = this.#dnnl;
      const data = this.#dataMd(d, layout);
      const stat = dn.memoryDesc([d.c], plainTag(1));
      const flags = bnFlags(scale, shift) |
        (inference ? BNORM.globalStats : 0) | (relu ? BNORM.fuseRelu : 0);
      const desc = dn.batchNormDesc(
        inference ? PROP.forwardInference : PROP.forwardTraining,
        data,
        d.eps,
        flags,
      );
      const pd = dn.primitiveDesc(desc, null, "batch normalization forward");
      const operands: [number, Uint8Array][] = [
        [ARG.src, data],
        [ARG.dst, data],
        [ARG.mean, stat],
        [ARG.variance, stat],
      ];
      if (scale) operands.push([ARG.scale, stat]);
      if (shift) operands.push([ARG.shift, stat]);
      // The ReLU's mask, which the fused backward reads.
      if (relu) {
        operands.push([ARG.workspace, dn.queryMd(pd, QUERY.workspaceMd)]);
      }
      return this.#plan(pd, operands);
    });
  }

  #bnBackwardPlan(
    d: BatchNormDesc,
    scale: boolean,
    shift: boolean,
    diffs: boolean,
    layout: BlockedLayout | null,
    relu = false,
  ): Plan {
    const key = `bn backward ${bnDims(d)} ${d.eps} ${scale} ${shift} ${diffs}${
      relu ? " relu" : ""
    }`;
    return this.#cached(key, layout, bnElements(d), () => {
      const dn = this.#dnnl;
      const data = this.#dataMd(d, layout);
      const stat = dn.memoryDesc([d.c], plainTag(1));
      // The shift changes no gradient but its own: it is declared only when
      // that gradient is computed (and oneDNN then reads it, unused).
      const flags = bnFlags(scale, diffs && shift) |
        (relu ? BNORM.fuseRelu : 0);
      const hint = dn.primitiveDesc(
        dn.batchNormDesc(PROP.forwardTraining, data, d.eps, flags),
        null,
        "batch normalization forward",
      );
      const desc = dn.batchNormDesc(
        diffs ? PROP.backward : PROP.backwardData,
        data,
        d.eps,
        flags,
        data,
      );
      const pd = dn.primitiveDesc(desc, hint, "batch normalization backward");
      const operands: [number, Uint8Array][] = [
        [ARG.src, data],
        [ARG.diffDst, data],
        [ARG.diffSrc, data],
        [ARG.mean, stat],
        [ARG.variance, stat],
      ];
      if (relu) {
        operands.push([ARG.workspace, dn.queryMd(pd, QUERY.workspaceMd)]);
      }
      if (scale) operands.push([ARG.scale, stat]);
      if (diffs && shift) operands.push([ARG.shift, stat]);
      if (diffs && scale) operands.push([ARG.diffScale, stat]);
      if (diffs && shift) operands.push([ARG.diffShift, stat]);
      return this.#plan(pd, operands);
    });
  }

  /** Plain dst = src times a per-channel operand plus a second one. */
  #channelAffinePlan(d: BatchNormDesc): Plan {
    const key = `channel affine ${bnDims(d)}`;
    return this.#cached(key, null, bnElements(d), () => {
      const dn = this.#dnnl;
      // [n, c] when spatial is 1: oneDNN's binary broadcasts a [1, c, 1]
      // operand over [n, c, 1] wrongly (the tests' [4, 3, 1] case).
      const dims = d.spatial === 1 ? [d.n, d.c] : [d.n, d.c, d.spatial];
      const data = dn.memoryDesc(dims, plainTag(dims.length));
      const channel = dn.memoryDesc(
        dims.map((v, i) => i === 1 ? v : 1),
        plainTag(dims.length),
      );
      const pd = dn.primitiveDesc(
        dn.binaryDesc(ALG.binaryMul, data, channel, data),
        null,
        "binary mul",
        dn.postOpsAttr([{ binary: ALG.binaryAdd, md: channel }]),
      );
      return this.#plan(pd, [
        [ARG.src, data],
        [ARG.src1, channel],
        [postOpSrc1(0), channel],
        [ARG.dst, data],
      ]);
    });
  }

  #addPlan(length: number, relu: boolean): Plan {
    const key = `add${relu ? " relu" : ""} ${length}`;
    return this.#cached(key, null, length, () => {
      const dn = this.#dnnl;
      const data = dn.memoryDesc([length], plainTag(1));
      const pd = dn.primitiveDesc(
        dn.binaryDesc(ALG.binaryAdd, data, data, data),
        null,
        "binary add",
        relu ? dn.userScratchpadRelu : dn.userScratchpad,
      );
      return this.#plan(pd, [
        [ARG.src, data],
        [ARG.src1, data],
        [ARG.dst, data],
      ]);
    });
  }

  /**
   * x times a one-element operand, plus what y held (the sum post-op); with
   * `scaled`, that times a second one-element operand (a binary post-op).
   */
  #axpyPlan(length: number, scaled: boolean): Plan {
    const key = `ax${scaled ? "pby" : "py"} ${length}`;
    return this.#cached(key, null, length, () => {
      const dn = this.#dnnl;
      const data = dn.memoryDesc([length], plainTag(1));
      const scalar = dn.memoryDesc([1], plainTag(1));
      const pd = dn.primitiveDesc(
        dn.binaryDesc(ALG.binaryMul, data, scalar, data),
        null,
        "binary mul",
        dn.postOpsAttr(
          scaled
            ? [{ sum: 1 }, { binary: ALG.binaryMul, md: scalar }]
            : [{ sum: 1 }],
        ),
      );
      return this.#plan(pd, [
        [ARG.src, data],
        [ARG.src1, scalar],
        ...(scaled ? [[postOpSrc1(1), scalar] as [number, Uint8Array]] : []),
        [ARG.dst, data],
      ]);
    });
  }

  /**
   * The momentum buffer in one pass, in PyTorch's order of operations:
   * buf = mu buf + keep (g + wd p), keep = 1 - dampening; on the first step
   * (mu null) buf = g + wd p. A binary multiply of p by the one-element wd,
   * then binary post-ops (+ g, then times the one-element keep) and the sum
   * post-op scaled by mu; without weight decay, g times keep plus mu buf.
   * wd and keep are given at run time, so a weight-decay schedule builds no
   * new plans; mu, rarely scheduled, is built in.
   */
  #momentumPlan(length: number, decay: boolean, mu: number | null): Plan {
    const key = `momentum ${decay ? "wd" : "no-wd"} ${mu ?? "first"} ${length}`;
    return this.#cached(key, null, length, () => {
      const dn = this.#dnnl;
      const data = dn.memoryDesc([length], plainTag(1));
      const scalar = dn.memoryDesc([1], plainTag(1));
      const postOps: PostOp[] = decay
        ? [{ binary: ALG.binaryAdd, md: data }]
        : [];
      if (decay && mu !== null) {
        postOps.push({ binary: ALG.binaryMul, md: scalar });
      }
      if (mu !== null) postOps.push({ sum: mu });
      const pd = dn.primitiveDesc(
        dn.binaryDesc(ALG.binaryMul, data, scalar, data),
        null,
        "binary mul",
        dn.postOpsAttr(postOps),
      );
      const args: [number, Uint8Array][] = [];
      args.push([ARG.src, data], [ARG.src1, scalar]);
      if (decay) args.push([postOpSrc1(0), data]);
      if (decay && mu !== null) args.push([postOpSrc1(1), scalar]);
      args.push([ARG.dst, data]);
      return this.#plan(pd, args);
    });
  }

  #rowsPlan(rows: number, length: number, mean: boolean): Plan {
    const key = `row ${mean ? "means" : "sums"} ${rows} ${length}`;
    return this.#cached(key, null, rows * length, () => {
      const dn = this.#dnnl;
      const src = dn.memoryDesc([rows, length], plainTag(2));
      const dst = dn.memoryDesc([rows, 1], plainTag(2));
      const alg = mean ? ALG.reductionMean : ALG.reductionSum;
      const pd = dn.primitiveDesc(
        dn.reductionDesc(alg, src, dst),
        null,
        "reduction",
      );
      return this.#plan(pd, [[ARG.src, src], [ARG.dst, dst]]);
    });
  }

  /**
   * ReLU over a flat run of `length` elements: the op is elementwise, so
   * one plan serves every layout. The backward reads the forward's output.
   */
  #reluPlan(length: number, backward: boolean): Plan {
    const key = `relu${backward ? " backward" : ""} ${length}`;
    return this.#cached(key, null, length, () => {
      const dn = this.#dnnl;
      const data = dn.memoryDesc([length], plainTag(1));
      if (!backward) {
        const pd = dn.primitiveDesc(
          dn.eltwiseDesc(PROP.forwardInference, ALG.eltwiseRelu, data, 0, 0),
          null,
          "relu forward",
        );
        return this.#plan(pd, [[ARG.src, data], [ARG.dst, data]]);
      }
      const alg = ALG.eltwiseReluUseDst;
      const hint = dn.primitiveDesc(
        dn.eltwiseDesc(PROP.forwardTraining, alg, data, 0, 0),
        null,
        "relu forward",
      );
      const pd = dn.primitiveDesc(
        dn.eltwiseDesc(PROP.backward, alg, data, 0, 0, data),
        hint,
        "relu backward",
      );
      return this.#plan(pd, [
        [ARG.dst, data],
        [ARG.diffDst, data],
        [ARG.diffSrc, data],
      ]);
    });
  }

  /**
   * Max pooling's primitives on one shape with x in `layout`: null where
   * oneDNN's output layout would not fit the output's buffer.
   */
  #poolPlan(d: PoolDesc, layout: BlockedLayout | null): PoolPlan | null {
    const key = keyForThreads(
      `${d.n},${d.c},${d.h},${d.w},${d.kh},${d.kw},` +
        `${d.strideH},${d.strideW},${d.padH},${d.padW}`,
    );
    let byLayout = this.#pools.get(key);
    if (byLayout === undefined) {
      byLayout = new Map();
      this.#pools.set(key, byLayout);
    }
    let plan = byLayout.get(layout);
    if (plan === undefined) {
      plan = onThreads(
        d.n * d.c * d.h * d.w,
        (small) => this.#buildPool(d, layout, small),
      );
      byLayout.set(layout, plan);
    }
    return plan;
  }

  #buildPool(
    d: PoolDesc,
    layout: BlockedLayout | null,
    small: boolean,
  ): PoolPlan | null {
    const dn = this.#dnnl;
    const yDims = [d.n, d.c, d.oh, d.ow];
    const src = layout?.md ?? dn.memoryDesc([d.n, d.c, d.h, d.w], plainTag(4));
    const plainDst = dn.memoryDesc(yDims, plainTag(4));
    // Blocked in, blocked out: oneDNN picks the output's blocking.
    const dst = layout ? dn.memoryDesc(yDims, FORMAT_ANY) : plainDst;
    const window = [
      [d.strideH, d.strideW],
      [d.kh, d.kw],
      [d.padH, d.padW],
      // oneDNN's right padding makes its output size exactly ours.
      [
        (d.oh - 1) * d.strideH + d.kh - d.h - d.padH,
        (d.ow - 1) * d.strideW + d.kw - d.w - d.padW,
      ],
    ] as const;
    const forward = (prop: number) =>
      dn.primitiveDesc(
        dn.poolingDesc(prop, ALG.poolingMax, [src, dst], ...window),
        null,
        "max pooling forward",
      );
    const inferencePd = forward(PROP.forwardInference);
    const chosen = dn.queryMd(inferencePd, QUERY.dstMd);
    if (dn.mdBytes(chosen) !== dn.mdBytes(plainDst)) return null;
    const outputLayout = layout ? this.#layouts.of(chosen, yDims) : null;
    const trainingPd = forward(PROP.forwardTraining);
    const wsMd = dn.queryMd(trainingPd, QUERY.workspaceMd);
    const backwardPd = dn.primitiveDesc(
      dn.poolingDesc(PROP.backward, ALG.poolingMax, [src, chosen], ...window),
      trainingPd,
      "max pooling backward",
    );
    return {
      inference: this.#plan(
        inferencePd,
        [[ARG.src, src], [ARG.dst, chosen]],
        small,
      ),
      training: this.#plan(trainingPd, [
        [ARG.src, src],
        [ARG.dst, chosen],
        [ARG.workspace, wsMd],
      ], small),
      backward: this.#plan(backwardPd, [
        [ARG.diffDst, chosen],
        [ARG.workspace, wsMd],
        [ARG.diffSrc, src],
      ], small),
      outputLayout,
    };
  }

  /**
   * How a training forward of plain data of shape `d` runs: rewritten
   * into the blocked layout a convolution would choose for it, or (null)
   * as it is. oneDNN's plain-layout statistics are plain C++, where the
   * blocked kernel is vectorised: on [8, 256, 56, 56] (a 2-core Sapphire
   * Rapids machine) the reorder into the blocked layout, the blocked
   * kernel (in place) and the reorder back ran 1.07 and 1.30 Gelem/s
   * against 0.83 and 0.77 for the plain kernel, alternated. The other
   * batch norms gain too little to pay for the reorders: inference ran
   * 1.39 and 1.70 against 1.45 and 1.48 Gelem/s, the backward (two
   * operands in) 0.61 and 0.64 against 0.61 and 0.61. Small shapes (at
   * most SMALL_OP elements, on one thread) and those without a spatial
   * extent (the projector's [n, c]) stay plain, where the reorders would
   * cost more than they save.
   */
  #blockedRoute(d: BatchNormDesc): BlockedRoute | null {
    const dims = bnDims(d);
    const elements = bnElements(d);
    if (d.spatial === 1 || elements <= SMALL_OP) return null;
    const key = keyForThreads(dims.join(","));
    let route = this.#bnBlocked.get(key);
    if (route !== undefined) return route;
    const dn = this.#dnnl;
    const plain = dn.memoryDesc(dims, plainTag(4));
    // A 1x1 convolution's choice of layout for its input: the layout the
    // network's own convolutions leave (layout.ts).
    const conv = dn.primitiveDesc(
      dn.convolutionDesc(
        PROP.forwardTraining,
        [
          dn.memoryDesc(dims, FORMAT_ANY),
          dn.memoryDesc([d.c, d.c, 1, 1], FORMAT_ANY),
          dn.memoryDesc(dims, FORMAT_ANY),
        ],
        [1, 1],
        [0, 0],
        [0, 0],
      ),
      null,
      "convolution forward",
    );
    const blocked = dn.queryMd(conv, QUERY.srcMd);
    route = null;
    if (!dn.mdEqual(blocked, plain)) {
      const reorder = (from: Uint8Array, to: Uint8Array) => {
        const operands: [number, Uint8Array][] = [
          [ARG.src, from],
          [ARG.dst, to],
        ];
        return this.#plan(dn.reorderDesc(from, to), operands);
      };
      route = {
        layout: this.#layouts.of(blocked, dims),
        toBlocked: reorder(plain, blocked),
        toPlain: reorder(blocked, plain),
        length: Math.ceil(dn.mdBytes(blocked) / 4),
      };
    }
    this.#bnBlocked.set(key, route);
    return route;
  }

  /**
   * A batch norm's data: NCHW, or the blocked layout its input is in (with
   * the image's own height and width, where NCHW uses [n, c, h * w, 1]).
   */
  #dataMd(d: BatchNormDesc, layout: BlockedLayout | null): Uint8Array {
    if (layout === null) return this.#dnnl.memoryDesc(bnDims(d), plainTag(4));
    const [n, c, h, w] = layout.dims;
    if (n !== d.n || c !== d.c || h * w !== d.spatial) {
      throw new RangeError(
        `batch norm of [${d.n}, ${d.c}, ${d.spatial}] on data laid out as [${layout.dims}]`,
      );
    }
    return layout.md;
  }

  /**
   * The plan under `key` (and the layout), built on first use: on one
   * OpenMP thread when its data has at most SMALL_OP `elements`.
   */
  #cached(
    key: string,
    layout: BlockedLayout | null,
    elements: number,
    build: () => Plan,
  ): Plan {
    const threadsKey = keyForThreads(key);
    let plans = this.#plans.get(threadsKey);
    if (plans === undefined) {
      plans = new Map();
      this.#plans.set(threadsKey, plans);
    }
    let plan = plans.get(layout);
    if (plan === undefined) {
      plan = onThreads(elements, (small) => ({
        ...build(),
        singleThreaded: small,
      }));
      plans.set(layout, plan);
    }
    return plan;
  }

  /** Memory objects for each operand, and a scratchpad if one is wanted. */
  #plan(
    pd: Handle,
    operands: [number, Uint8Array][],
    singleThreaded = false,
  ): Plan {
    const dn = this.#dnnl;
    const memories = operands.map(([, md]) => dn.memory(md));
    const pairs: [number, Handle][] = operands.map((
      [arg],
      i,
    ) => [arg, memories[i]]);
    const spMd = dn.queryMd(pd, QUERY.scratchpadMd);
    const spBytes = dn.mdBytes(spMd);
    let scratchpad: Handle | null = null;
    if (spBytes > 0) {
      scratchpad = dn.memory(spMd);
      pairs.push([ARG.scratchpad, scratchpad]);
    }
    return {
      primitive: dn.primitive(pd),
      args: execArgs(pairs),
      memories,
      scratchpad,
      scratchpadLength: Math.ceil(spBytes / 4),
      workspaceLength: Math.ceil(
        operands.reduce(
          (n, [arg, md]) => arg === ARG.workspace ? dn.mdBytes(md) : n,
          0,
        ) / 4,
      ),
      implementation: dn.implementation(pd),
      singleThreaded,
    };
  }

  /** Runs a plan on the caller's arrays, in operand order. */
  #run(plan: Plan, arrays: Float32Array[]): void {
    const dn = this.#dnnl;
    plan.memories.forEach((m, i) =>
      dn.setData(m, Deno.UnsafePointer.of(arrays[i]))
    );
    if (plan.scratchpad !== null) {
      const sp = this.#scratch(plan.scratchpadLength);
      dn.setData(plan.scratchpad, Deno.UnsafePointer.of(sp));
    }
    if (plan.singleThreaded) {
      singleThreaded(() => dn.execute(plan.primitive, plan.args));
    } else dn.execute(plan.primitive, plan.args);
  }
}
