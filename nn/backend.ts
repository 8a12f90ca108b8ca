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
  aOffset: number;
  lda: number;
  b: DataBuffer;
  bOffset: number;
  ldb: number;
  beta: number;
  c: DataBuffer;
  cOffset: number;
  ldc: number;
  /** Strided batch (`cublasSgemmStridedBatched`): count and element strides. */
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
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
}

/** The op list. */
export interface Backend {
  /** "cpu" or "cuda:N". */
  readonly name: string;

  // --- memory ---------------------------------------------------------------
  /** A buffer of `length` elements with undefined contents. */
  alloc(length: number): DataBuffer;
  /** Returns the buffer to the allocator; it must not be used again. */
  free(buffer: DataBuffer): void;
  /** Copies host data into the buffer, starting at `offset`. */
  write(buffer: DataBuffer, data: Float32Array, offset?: number): void;
  /** Copies `length` elements starting at `offset` to a new host array. */
  read(buffer: DataBuffer, offset?: number, length?: number): Float32Array;
  /** `dst[dstOffset + i] = src[srcOffset + i]` for i < length. */
  copy(
    src: DataBuffer,
    srcOffset: number,
    dst: DataBuffer,
    dstOffset: number,
    length: number,
  ): void;
  /** Sets `count` elements `offset, offset + stride, ...` to `value`. */
  fill(
    buffer: DataBuffer,
    value: number,
    offset?: number,
    count?: number,
    stride?: number,
  ): void;
  /** Waits for queued work (a no-op on the CPU). */
  synchronize(): void;
  memory(): MemoryInfo;
  /** Releases cached blocks to the system. */
  emptyCache(): void;

  // --- BLAS -----------------------------------------------------------------
  gemm(args: GemmArgs): void;
  /** `out[outOffset] = sum_i x[xOffset + i*incx] * y[yOffset + i*incy]`. */
  dot(
    length: number,
    x: DataBuffer,
    xOffset: number,
    incx: number,
    y: DataBuffer,
    yOffset: number,
    incy: number,
    out: DataBuffer,
    outOffset: number,
  ): void;
  /** `y = alpha * x + beta * y` over `length` elements. */
  axpby(
    length: number,
    alpha: number,
    x: DataBuffer,
    beta: number,
    y: DataBuffer,
  ): void;

  // --- convolution (cudnnConvolution*) ---------------------------------------
  /** y[n,k,oh,ow] = sum_{c,r,s} x[n,c,oh*sh+r-ph,ow*sw+s-pw] * w[k,c,r,s]. */
  conv2dForward(x: DataBuffer, w: DataBuffer, y: DataBuffer, d: ConvDesc): void;
  /** dx = gradient of the forward with respect to x (overwritten). */
  conv2dBackwardData(
    dy: DataBuffer,
    w: DataBuffer,
    dx: DataBuffer,
    d: ConvDesc,
  ): void;
  /** dw = gradient of the forward with respect to w (overwritten). */
  conv2dBackwardFilter(
    x: DataBuffer,
    dy: DataBuffer,
    dw: DataBuffer,
    d: ConvDesc,
  ): void;

  // --- batch norm (cudnnBatchNormalization*) --------------------------------
  /**
   * Normalises with the batch statistics, writes y, the batch mean and
   * 1/sqrt(var + eps) (biased variance) for the backward pass, and updates the
   * running averages (unbiased variance) when they are given. A null gamma or
   * beta means 1 or 0.
   */
  batchNormForwardTraining(
    x: DataBuffer,
    y: DataBuffer,
    gamma: DataBuffer | null,
    beta: DataBuffer | null,
    runningMean: DataBuffer | null,
    runningVar: DataBuffer | null,
    saveMean: DataBuffer,
    saveInvStd: DataBuffer,
    d: BatchNormDesc,
  ): void;
  /** Normalises with the given statistics. */
  batchNormForwardInference(
    x: DataBuffer,
    y: DataBuffer,
    gamma: DataBuffer | null,
    beta: DataBuffer | null,
    mean: DataBuffer,
    variance: DataBuffer,
    d: BatchNormDesc,
  ): void;
  /** Gradients of the training-mode forward; null outputs are skipped. */
  batchNormBackward(
    x: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    gamma: DataBuffer | null,
    dGamma: DataBuffer | null,
    dBeta: DataBuffer | null,
    saveMean: DataBuffer,
    saveInvStd: DataBuffer,
    d: BatchNormDesc,
  ): void;

  // --- activation and pooling (cudnnActivation*, cudnnPooling*) --------------
  reluForward(x: DataBuffer, y: DataBuffer, length: number): void;
  /** dx = dy where y > 0, else 0 (y is the forward output). */
  reluBackward(
    y: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    length: number,
  ): void;
  maxPoolForward(x: DataBuffer, y: DataBuffer, d: PoolDesc): void;
  /** Routes dy to the first maximum of each window (dx overwritten). */
  maxPoolBackward(
    x: DataBuffer,
    y: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    d: PoolDesc,
  ): void;

  // --- elementwise and reductions (cudnnOpTensor, cudnnAddTensor, ...) -------
  /**
   * `c = op(alpha1 * a, alpha2 * b) + beta * c` where a and c have `shape` and
   * b has `bShape`, each of whose dimensions equals shape's or is 1.
   */
  opTensor(
    op: BinaryOp,
    alpha1: number,
    a: DataBuffer,
    alpha2: number,
    b: DataBuffer,
    bShape: Dims3,
    beta: number,
    c: DataBuffer,
    shape: Dims3,
  ): void;
  /** `c = alpha * broadcast(a) + beta * c`; a's dims equal c's or are 1. */
  addTensor(
    alpha: number,
    a: DataBuffer,
    aShape: Dims3,
    beta: number,
    c: DataBuffer,
    shape: Dims3,
  ): void;
  /** `y = alpha * sum(x over the dims where outShape is 1) + beta * y`. */
  reduceSum(
    alpha: number,
    x: DataBuffer,
    shape: Dims3,
    beta: number,
    y: DataBuffer,
    outShape: Dims3,
  ): void;
  /** `y = alpha * x + beta` elementwise. */
  scaleShift(
    x: DataBuffer,
    y: DataBuffer,
    length: number,
    alpha: number,
    beta: number,
  ): void;
  unary(op: UnaryOp, x: DataBuffer, y: DataBuffer, length: number): void;

  // --- fused optimiser updates -------------------------------------------------
  /**
   * One SGD step on a tensor, in place: d = grad + wd * param; with momentum,
   * buf = first ? d : momentum * buf + (1 - dampening) * d and d = buf (or
   * d + momentum * buf with Nesterov); param -= lr * d. The teacher's EMA
   * needs no op of its own: it is `axpby(n, 1 - m, student, m, teacher)`.
   */
  sgdUpdate(
    param: DataBuffer,
    grad: DataBuffer,
    momentumBuffer: DataBuffer | null,
    length: number,
    step: SgdStep,
  ): void;
  /**
   * LARC's gradient rescaling (NVIDIA apex, clip off), in place on grad:
   * when ||param|| and ||grad|| are both non-zero, grad = (grad + wd * param)
   * * trust * ||param|| / (||grad|| + wd * ||param|| + eps); otherwise grad
   * is left as it is. The SGD step that follows runs with weight decay 0.
   */
  larsAdapt(
    param: DataBuffer,
    grad: DataBuffer,
    length: number,
    trust: number,
    weightDecay: number,
    eps: number,
  ): void;

  // --- fused kernels ----------------------------------------------------------
  /**
   * Row-wise `y = x / max(||x||, eps)` on a rows x cols matrix, as PyTorch's
   * `F.normalize`; writes each row's norm to `norms`.
   */
  l2NormalizeForward(
    x: DataBuffer,
    y: DataBuffer,
    norms: DataBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  /** Gradient of the above, from its output y and the saved norms. */
  l2NormalizeBackward(
    y: DataBuffer,
    norms: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  /**
   * Softmax of each row into `probs` and the per-row cross-entropy
   * `-log softmax(x)[label]` into `losses`. Labels are integral floats.
   */
  softmaxCrossEntropyForward(
    logits: DataBuffer,
    labels: DataBuffer,
    probs: DataBuffer,
    losses: DataBuffer,
    rows: number,
    cols: number,
  ): void;
  /** `dx[i, j] = dLosses[i] * (probs[i, j] - [j == label_i])`. */
  softmaxCrossEntropyBackward(
    probs: DataBuffer,
    labels: DataBuffer,
    dLosses: DataBuffer,
    dx: DataBuffer,
    rows: number,
    cols: number,
  ): void;
}
