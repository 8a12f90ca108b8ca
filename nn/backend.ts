/**
 * The backend boundary: the one op list that every device implements.
 *
 * The ops are shaped after what cuBLAS and cuDNN offer, so that each CUDA op is
 * one or a few library calls and each CPU op is one OpenBLAS call or one
 * TypeScript kernel. Everything above this interface (tensors, autograd,
 * modules, the MEC loss) is written once, in terms of these ops.
 *
 * Conventions: buffers hold float32 elements; every size and offset is counted
 * in elements; matrices are row-major; images are NCHW. An op overwrites its
 * output unless it takes a `beta`, in which case `out = result + beta * out`.
 * Shapes are checked above the interface, where the error can name the user's
 * op; a backend may assume that sizes are consistent.
 *
 * @module
 */

/** Device memory owned by one backend. Only that backend looks inside. */
export interface DataBuffer {
  /** Number of float32 elements. */
  readonly length: number;
  /** Name of the backend that made it ("cpu", "cuda:0"). */
  readonly device: string;
}

/** `C = alpha * op(A) * op(B) + beta * C`, row-major, as `cublasSgemm`. */
export interface GemmArgs {
  transA: boolean;
  transB: boolean;
  /** Rows of op(A) and C. */
  m: number;
  /** Columns of op(B) and C. */
  n: number;
  /** Columns of op(A), rows of op(B). */
  k: number;
  alpha: number;
  a: DataBuffer;
  /** Element where A starts in `a`. */
  aOffset: number;
  /** Leading dimension (row stride) of A as stored. */
  lda: number;
  b: DataBuffer;
  bOffset: number;
  ldb: number;
  beta: number;
  c: DataBuffer;
  cOffset: number;
  ldc: number;
}

/** A 2-D cross-correlation as cuDNN describes it (groups 1, dilation 1). */
export interface ConvDesc {
  /** Batch, input channels, input height and width. */
  n: number;
  c: number;
  h: number;
  w: number;
  /** Output channels and kernel height and width. */
  k: number;
  r: number;
  s: number;
  strideH: number;
  strideW: number;
  padH: number;
  padW: number;
  /** Output height and width. */
  oh: number;
  ow: number;
}

/** A max pooling window as cuDNN describes it (padding counts as -infinity). */
export interface PoolDesc {
  n: number;
  c: number;
  h: number;
  w: number;
  kh: number;
  kw: number;
  strideH: number;
  strideW: number;
  padH: number;
  padW: number;
  oh: number;
  ow: number;
}

/**
 * Batch norm over a tensor viewed as [n, c, spatial] (cuDNN's spatial mode for
 * 4-D inputs, per-activation mode with spatial = 1 for 2-D inputs).
 */
export interface BatchNormDesc {
  n: number;
  c: number;
  spatial: number;
  eps: number;
  /** Weight of the new batch statistic in the running averages. */
  momentum: number;
}

/**
 * A shape of three dimensions that every elementwise and reduction op works on.
 * Any broadcast between two tensors that needs at most three runs of
 * "same size" / "size 1" dimensions folds into this form.
 */
export type Dims3 = readonly [number, number, number];

/** Binary elementwise operations of `opTensor` (cudnnOpTensor's list). */
export type BinaryOp = "add" | "mul" | "min" | "max";

/** Unary elementwise functions. */
export type UnaryOp = "sqrt" | "rsqrt" | "square" | "exp" | "log" | "abs";

/** Hyper-parameters of one SGD step, PyTorch's `torch.optim.SGD`. */
export interface SgdStep {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  /** True on a buffer's first step: the buffer starts as the gradient. */
  firstStep: boolean;
}

/** Memory use of a backend, in bytes. */
export interface MemoryInfo {
  /** Bytes in buffers handed out and not yet freed. */
  allocated: number;
  /** Bytes held by the caching allocator for reuse. */
  cached: number;
  /** The most bytes allocated at once so far, where the backend tracks it. */
  peak?: number;
}

// --- the ops' arguments ------------------------------------------------------
// Each op that takes more than a buffer takes one object of named fields,
// named after cuBLAS's and cuDNN's parameters where they have one.

/** `dst[dstOffset + i] = src[srcOffset + i]` for i < length (`cudaMemcpy`). */
export interface CopyArgs {
  src: DataBuffer;
  srcOffset: number;
  dst: DataBuffer;
  dstOffset: number;
  /** Number of elements copied. */
  length: number;
}

/** Sets `count` elements `offset, offset + stride, ...` of y to `value`. */
export interface FillArgs {
  y: DataBuffer;
  value: number;
  /** First element set; 0 when omitted. */
  offset?: number;
  /** Number of elements set; when omitted, every stride-th one to the end. */
  count?: number;
  /** Distance between elements set; 1 when omitted. */
  stride?: number;
}

/**
 * `result[resultOffset] = sum_i x[xOffset + i*incx] * y[yOffset + i*incy]`
 * for i < n, as `cublasSdot` with the result left on the device.
 */
export interface DotArgs {
  /** Number of products summed. */
  n: number;
  x: DataBuffer;
  xOffset: number;
  /** Stride between x's elements. */
  incx: number;
  y: DataBuffer;
  yOffset: number;
  /** Stride between y's elements. */
  incy: number;
  result: DataBuffer;
  resultOffset: number;
}

/** `y = alpha * x + beta * y` over the first n elements (`cublasSaxpy` + scale). */
export interface AxpbyArgs {
  n: number;
  alpha: number;
  x: DataBuffer;
  beta: number;
  y: DataBuffer;
}

/** `cudnnConvolutionForward`: y = conv(x, w), y overwritten. */
export interface ConvForwardArgs {
  /** Input [n, c, h, w]. */
  x: DataBuffer;
  /** Filter [k, c, r, s]. */
  w: DataBuffer;
  /** Output [n, k, oh, ow]. */
  y: DataBuffer;
  desc: ConvDesc;
}

/** `cudnnConvolutionBackwardData`: dx = gradient of y = conv(x, w) in x. */
export interface ConvBackwardDataArgs {
  dy: DataBuffer;
  w: DataBuffer;
  /** Overwritten. */
  dx: DataBuffer;
  desc: ConvDesc;
}

/** `cudnnConvolutionBackwardFilter`: dw = gradient of y = conv(x, w) in w. */
export interface ConvBackwardFilterArgs {
  x: DataBuffer;
  dy: DataBuffer;
  /** Overwritten. */
  dw: DataBuffer;
  desc: ConvDesc;
}

/** `cudnnBatchNormalizationForwardTraining`. */
export interface BatchNormForwardTrainingArgs {
  x: DataBuffer;
  y: DataBuffer;
  /** Per-channel gamma; null means 1 (a non-affine norm). */
  scale: DataBuffer | null;
  /** Per-channel beta; null means 0. */
  bias: DataBuffer | null;
  /** Running mean, updated in place; null to leave no running statistics. */
  runningMean: DataBuffer | null;
  /** Running (unbiased) variance, updated in place with runningMean. */
  runningVar: DataBuffer | null;
  /** Out: the batch mean per channel, for the backward pass. */
  saveMean: DataBuffer;
  /** Out: 1 / sqrt(biased batch variance + eps) per channel. */
  saveInvStd: DataBuffer;
  desc: BatchNormDesc;
  /**
   * Then max(y, 0), keeping NaN: batch norm and the ReLU after it in one
   * op (cudnnBatchNormalizationForwardTrainingEx's BN_ACTIVATION).
   */
  relu?: boolean;
  /**
   * With `relu`, where the backend may keep what a fused backward reads
   * (cuDNN's reserve space): `batchNormReluReserve` elements.
   */
  reserve?: DataBuffer | null;
}

/** `cudnnBatchNormalizationForwardInference`. */
export interface BatchNormForwardInferenceArgs {
  x: DataBuffer;
  y: DataBuffer;
  /** Per-channel gamma; null means 1. */
  scale: DataBuffer | null;
  /** Per-channel beta; null means 0. */
  bias: DataBuffer | null;
  /** The mean used (usually the running mean). */
  estimatedMean: DataBuffer;
  /** The variance used (usually the running variance). */
  estimatedVariance: DataBuffer;
  desc: BatchNormDesc;
}

/** `cudnnBatchNormalizationBackward`. */
export interface BatchNormBackwardArgs {
  /** The forward's input. */
  x: DataBuffer;
  dy: DataBuffer;
  /** Overwritten. */
  dx: DataBuffer;
  /** The forward's gamma; null means 1. */
  scale: DataBuffer | null;
  /** Out: gradient of gamma; null to skip it. */
  dScale: DataBuffer | null;
  /** Out: gradient of beta; null to skip it. */
  dBias: DataBuffer | null;
  /** What the training forward saved. */
  saveMean: DataBuffer;
  saveInvStd: DataBuffer;
  desc: BatchNormDesc;
  /**
   * The forward ran with `relu` and this reserve: dy is the gradient of
   * the ReLU's output y, and the backward goes through the ReLU first (in
   * the same pass where the backend can).
   */
  relu?: { y: DataBuffer; reserve: DataBuffer };
}

/** An elementwise function `y = f(x)` over `length` elements. */
export interface ActivationForwardArgs {
  x: DataBuffer;
  y: DataBuffer;
  length: number;
}

/**
 * `cudnnActivationBackward` for ReLU: dx = 0 where y <= 0, else dy (a NaN y
 * passes dy, as PyTorch's threshold_backward does).
 */
export interface ActivationBackwardArgs {
  /** The forward's output. */
  y: DataBuffer;
  dy: DataBuffer;
  dx: DataBuffer;
  length: number;
}

/** `cudnnPoolingForward`. */
export interface PoolForwardArgs {
  x: DataBuffer;
  y: DataBuffer;
  desc: PoolDesc;
  /**
   * Where the backend may keep what its backward reads (the maxima's
   * positions), `maxPoolReserve` elements.
   */
  reserve?: DataBuffer | null;
}

/** `cudnnPoolingBackward`: dx overwritten. */
export interface PoolBackwardArgs {
  /** The forward's input and output. */
  x: DataBuffer;
  y: DataBuffer;
  dy: DataBuffer;
  dx: DataBuffer;
  desc: PoolDesc;
  /** The forward's reserve, if it was given one. */
  reserve?: DataBuffer | null;
}

/**
 * `cudnnOpTensor`: `c = op(alpha1 * a, alpha2 * b) + beta * c`, where a and c
 * have `shape` and b has `bShape`.
 */
export interface OpTensorArgs {
  op: BinaryOp;
  alpha1: number;
  a: DataBuffer;
  alpha2: number;
  b: DataBuffer;
  /** b's dims: each equals shape's or is 1 (broadcast). */
  bShape: Dims3;
  beta: number;
  c: DataBuffer;
  /** The shape of a and c. */
  shape: Dims3;
  /**
   * Then c = max(c, 0), keeping NaN: a residual block's sum and its ReLU
   * in one op where the backend can.
   */
  relu?: boolean;
}

/** `cudnnAddTensor`: `c = alpha * broadcast(a) + beta * c`. */
export interface AddTensorArgs {
  alpha: number;
  a: DataBuffer;
  /** a's dims: each equals shape's or is 1 (broadcast). */
  aShape: Dims3;
  beta: number;
  c: DataBuffer;
  /** The shape of c. */
  shape: Dims3;
}

/**
 * `cudnnReduceTensor` (add): `y = alpha * sum(x over the dims where yShape
 * is 1) + beta * y`.
 */
export interface ReduceSumArgs {
  alpha: number;
  x: DataBuffer;
  /** The shape of x. */
  shape: Dims3;
  beta: number;
  y: DataBuffer;
  /** y's dims: each equals shape's (kept) or is 1 (summed over). */
  yShape: Dims3;
}

/** `y = scale * x + shift` elementwise over `length` elements. */
export interface ScaleShiftArgs {
  x: DataBuffer;
  y: DataBuffer;
  length: number;
  scale: number;
  shift: number;
}

/** `y = op(x)` elementwise over `length` elements. */
export interface UnaryArgs extends ActivationForwardArgs {
  op: UnaryOp;
}

/** One fused SGD step on one tensor (see `Backend.sgdUpdate`). */
export interface SgdUpdateArgs {
  /** Updated in place. */
  param: DataBuffer;
  grad: DataBuffer;
  /** The momentum buffer, updated in place; null without momentum. */
  momentumBuffer: DataBuffer | null;
  length: number;
  step: SgdStep;
}

/**
 * One SGD step on each of several tensors with the same hyper-parameters
 * (see `Backend.sgdUpdateMany`): tensor i is `params[i]`, `grads[i]` and
 * `momentumBuffers[i]`, its first `lengths[i]` elements.
 */
export interface SgdUpdateManyArgs {
  /** Updated in place. */
  params: DataBuffer[];
  grads: DataBuffer[];
  /** The momentum buffers, updated in place; null without momentum. */
  momentumBuffers: DataBuffer[] | null;
  lengths: number[];
  /** One step for all of them, `firstStep` included. */
  step: SgdStep;
}

/**
 * `ys[i] = alpha * xs[i] + beta * ys[i]` over the first `lengths[i]`
 * elements, for each i (see `Backend.axpbyMany`).
 */
export interface AxpbyManyArgs {
  alpha: number;
  beta: number;
  xs: DataBuffer[];
  ys: DataBuffer[];
  lengths: number[];
}

/**
 * The number of tensors of an `sgdUpdateMany` or `axpbyMany` call, after
 * checking what a backend cannot: that every list (null ones aside) has one
 * entry per length, and that each length is a whole number no larger than
 * its buffers. A RangeError names the op and the list otherwise. Both
 * backends call it, so a bad call fails alike on each, before any tensor
 * changes.
 */
export function tensorCount(
  op: string,
  lengths: readonly number[],
  lists: Record<string, readonly DataBuffer[] | null>,
): number {
  const count = lengths.length;
  for (const [name, list] of Object.entries(lists)) {
    if (list === null) continue;
    if (list.length !== count) {
      throw new RangeError(
        `${op}: ${list.length} ${name} for ${count} lengths`,
      );
    }
  }
  for (let i = 0; i < count; i++) {
    const n = lengths[i];
    if (!Number.isInteger(n) || n < 0) {
      throw new RangeError(`${op}: length ${i} is ${n}, not a whole number`);
    }
    for (const [name, list] of Object.entries(lists)) {
      if (list !== null && list[i].length < n) {
        throw new RangeError(
          `${op}: ${name}[${i}] has ${
            list[i].length
          } elements, length ${i} is ${n}`,
        );
      }
    }
  }
  return count;
}

/** LARC's rescaling of one tensor's gradient (see `Backend.larsAdapt`). */
export interface LarsAdaptArgs {
  param: DataBuffer;
  /** Rescaled in place. */
  grad: DataBuffer;
  length: number;
  /** The trust coefficient. */
  trust: number;
  weightDecay: number;
  eps: number;
}

/** Row-wise L2 normalisation of a rows x cols matrix. */
export interface L2NormalizeForwardArgs {
  x: DataBuffer;
  y: DataBuffer;
  /** Out: each row's norm ||x_i|| (before the eps clamp), rows elements. */
  norms: DataBuffer;
  rows: number;
  cols: number;
  eps: number;
}

/** Gradient of the row-wise L2 normalisation, from its output and norms. */
export interface L2NormalizeBackwardArgs {
  /** The forward's output. */
  y: DataBuffer;
  /** The norms the forward wrote. */
  norms: DataBuffer;
  dy: DataBuffer;
  dx: DataBuffer;
  rows: number;
  cols: number;
  eps: number;
}

/** Softmax and cross-entropy of each row of a rows x cols matrix. */
export interface SoftmaxCrossEntropyForwardArgs {
  logits: DataBuffer;
  /** rows class indices stored as integral floats. */
  labels: DataBuffer;
  /** Out: softmax of each row, rows x cols. */
  probs: DataBuffer;
  /** Out: `-log softmax(x)[label]` per row. */
  losses: DataBuffer;
  rows: number;
  cols: number;
}

/** Gradient of the per-row cross-entropy in the logits. */
export interface SoftmaxCrossEntropyBackwardArgs {
  /** The probabilities the forward wrote. */
  probs: DataBuffer;
  labels: DataBuffer;
  /** Gradient of each row's loss, rows elements. */
  dLosses: DataBuffer;
  /** Overwritten, rows x cols. */
  dx: DataBuffer;
  rows: number;
  cols: number;
}

/** Numerics settings a backend may offer (the CPU has none to set). */
export interface BackendOptions {
  /**
   * TF32 tensor cores for float32 GEMM and convolutions (10-bit mantissa
   * products). Off by default: exact float32, as PyTorch's matmul.
   */
  tf32?: boolean;
  /**
   * Deterministic algorithms only, chosen without timing, so that two runs
   * compute the same bits (an exact `--resume`).
   */
  deterministic?: boolean;
}

/** The op list. */
export interface Backend {
  /** "cpu" or "cuda:N". */
  readonly name: string;

  /** Applies numerics settings; backends without such choices omit it. */
  configure?(options: BackendOptions): void;

  // --- memory ---------------------------------------------------------------
  /** A buffer of `length` elements with undefined contents. */
  alloc(length: number): DataBuffer;
  /** Returns the buffer to the allocator; it must not be used again. */
  free(buffer: DataBuffer): void;
  /**
   * Copies host data into the buffer, starting at `offset`. The host array
   * may be reused as soon as this returns.
   */
  write(buffer: DataBuffer, data: Float32Array, offset?: number): void;
  /**
   * Copies `length` elements starting at `offset` to a new host array. It
   * waits for the ops queued before it that write the buffer (synchronizing
   * as needed), so the array holds their results.
   */
  read(buffer: DataBuffer, offset?: number, length?: number): Float32Array;
  copy(args: CopyArgs): void;
  fill(args: FillArgs): void;
  /**
   * Returns when every op queued on this backend so far has completed and
   * its results are visible to `read` and to the host. On the CPU this is a
   * no-op: ops complete before they return. Timers call it before reading the
   * clock.
   */
  synchronize(): void;
  memory(): MemoryInfo;
  /**
   * The threads the backend computes on while the machine's load keeps it
   * below the count it started with (the CPU backend, cpu/threads.ts),
   * else null: for progress lines. Backends without it never lower it.
   */
  threadsUnderLoad?(): number | null;
  /** Releases cached blocks to the system. */
  emptyCache(): void;
  /**
   * The end of a training step; a training loop calls it once per step.
   * The cache releases the blocks no allocation used since the last call,
   * so it keeps what every step reuses and returns the rest; the CPU
   * backend also revisits its thread count (cpu/threads.ts). Backends
   * without it keep their cache.
   */
  endStep?(): void;

  // --- BLAS -----------------------------------------------------------------
  gemm(args: GemmArgs): void;
  dot(args: DotArgs): void;
  axpby(args: AxpbyArgs): void;
  /**
   * `axpby` on each tensor of a list, with one alpha and beta: the teacher's
   * EMA over all its parameters, `axpbyMany({ alpha: 1 - m, beta: m, xs:
   * student, ys: teacher, lengths })`. The results are those of one `axpby`
   * per tensor, bit for bit; the CUDA backend runs them as one launch, so
   * no y may overlap another tensor of the call.
   */
  axpbyMany(args: AxpbyManyArgs): void;

  // --- convolution (cudnnConvolution*) ---------------------------------------
  /** y[n,k,oh,ow] = sum_{c,r,s} x[n,c,oh*sh+r-ph,ow*sw+s-pw] * w[k,c,r,s]. */
  conv2dForward(args: ConvForwardArgs): void;
  /** dx = gradient of the forward with respect to x (overwritten). */
  conv2dBackwardData(args: ConvBackwardDataArgs): void;
  /** dw = gradient of the forward with respect to w (overwritten). */
  conv2dBackwardFilter(args: ConvBackwardFilterArgs): void;

  // --- batch norm (cudnnBatchNormalization*) --------------------------------
  /**
   * Normalises with the batch statistics, writes y, the batch mean and
   * 1/sqrt(var + eps) (biased variance) for the backward pass, and updates the
   * running averages (unbiased variance) when they are given.
   */
  batchNormForwardTraining(args: BatchNormForwardTrainingArgs): void;
  /** Normalises with the given statistics. */
  batchNormForwardInference(args: BatchNormForwardInferenceArgs): void;
  /** Gradients of the training-mode forward; null outputs are skipped. */
  batchNormBackward(args: BatchNormBackwardArgs): void;
  /**
   * Elements of the reserve a training forward with `relu` on x may fill
   * for a backward that applies the ReLU's gradient in its own pass; 0 (or
   * no method) where the backend has no such backward.
   */
  batchNormReluReserve?(x: DataBuffer, desc: BatchNormDesc): number;

  // --- activation and pooling (cudnnActivation*, cudnnPooling*) --------------
  /** y = max(x, 0). */
  reluForward(args: ActivationForwardArgs): void;
  /** dx = 0 where y <= 0, else dy (y is the forward output). */
  reluBackward(args: ActivationBackwardArgs): void;
  maxPoolForward(args: PoolForwardArgs): void;
  /** Routes dy to the first maximum of each window (dx overwritten). */
  maxPoolBackward(args: PoolBackwardArgs): void;
  /**
   * Elements of the reserve a max pooling forward on x may fill for its
   * backward, which then need not find the maxima again; 0 (or no method)
   * where the backend's backward works from x and y alone.
   */
  maxPoolReserve?(x: DataBuffer, desc: PoolDesc): number;

  // --- elementwise and reductions (cudnnOpTensor, cudnnAddTensor, ...) -------
  opTensor(args: OpTensorArgs): void;
  addTensor(args: AddTensorArgs): void;
  reduceSum(args: ReduceSumArgs): void;
  scaleShift(args: ScaleShiftArgs): void;
  unary(args: UnaryArgs): void;

  // --- fused optimiser updates -------------------------------------------------
  /**
   * One SGD step on a tensor, in place: d = grad + wd * param; with momentum,
   * buf = first ? d : momentum * buf + (1 - dampening) * d and d = buf (or
   * d + momentum * buf with Nesterov); param -= lr * d. The teacher's EMA
   * needs no op of its own: it is `axpby({ n, alpha: 1 - m, x: student,
   * beta: m, y: teacher })` per tensor, `axpbyMany` for all of them.
   */
  sgdUpdate(args: SgdUpdateArgs): void;
  /**
   * `sgdUpdate` on each tensor of a list, with one step (so one `firstStep`
   * for all: an optimiser groups its tensors by it). The results are those
   * of one `sgdUpdate` per tensor, bit for bit; the CUDA backend runs them
   * as one launch, so no parameter or buffer may overlap another tensor of
   * the call (a gradient may be shared by two parameters: it is only read).
   */
  sgdUpdateMany(args: SgdUpdateManyArgs): void;
  /**
   * LARC's gradient rescaling (NVIDIA apex, clip off), in place on grad:
   * when ||param|| and ||grad|| are both non-zero, grad = (grad + wd * param)
   * * trust * ||param|| / (||grad|| + wd * ||param|| + eps); otherwise grad
   * is left as it is. The SGD step that follows runs with weight decay 0.
   */
  larsAdapt(args: LarsAdaptArgs): void;

  // --- fused kernels ----------------------------------------------------------
  /**
   * Row-wise `y = x / max(||x||, eps)` on a rows x cols matrix, as PyTorch's
   * `F.normalize`; writes each row's norm to `norms`.
   */
  l2NormalizeForward(args: L2NormalizeForwardArgs): void;
  /** Gradient of the above, from its output y and the saved norms. */
  l2NormalizeBackward(args: L2NormalizeBackwardArgs): void;
  /**
   * Softmax of each row into `probs` and the per-row cross-entropy
   * `-log softmax(x)[label]` into `losses`. Labels are integral floats.
   */
  softmaxCrossEntropyForward(args: SoftmaxCrossEntropyForwardArgs): void;
  /** `dx[i, j] = dLosses[i] * (probs[i, j] - [j == label_i])`. */
  softmaxCrossEntropyBackward(args: SoftmaxCrossEntropyBackwardArgs): void;
}
