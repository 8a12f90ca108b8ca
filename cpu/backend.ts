/**
 * The CPU backend: OpenBLAS for matrix products and convolutions (through
 * im2col, or oneDNN where installed and faster), TypeScript kernels for the
 * rest, host memory from a caching allocator.
 *
 * @module
 */

import type {
  Backend,
  BatchNormDesc,
  BinaryOp,
  ConvDesc,
  DataBuffer,
  Dims3,
  GemmArgs,
  MemoryInfo,
  PoolDesc,
  SgdStep,
  UnaryOp,
} from "../nn/backend.ts";
import { CachingAllocator, Scratch } from "./allocator.ts";
import { type Blas, blas } from "./blas.ts";
import * as bn from "./batchnorm.ts";
import * as conv from "./conv.ts";
import { dnnl, tryDnnl } from "./dnnl.ts";
import { convKey, type ConvOp, DnnlConvolutions } from "./dnnl_conv.ts";
import * as ew from "./elementwise.ts";
import * as pool from "./pool.ts";
import * as optim from "./optim.ts";
import * as rows from "./rows.ts";

/** Host memory handed out by the CPU backend. */
export class CpuBuffer implements DataBuffer {
  readonly device = "cpu";
  constructor(readonly data: Float32Array) {}
  get length(): number {
    return this.data.length;
  }
}

function host(b: DataBuffer): Float32Array {
  if (!(b instanceof CpuBuffer)) {
    throw new TypeError(
      `the CPU backend was given a buffer of device "${b.device}"`,
    );
  }
  return b.data;
}

function hostOrNull(b: DataBuffer | null): Float32Array | null {
  return b === null ? null : host(b);
}

/** Timed calls of each implementation when choosing one for a shape. */
const CONV_TIMED_CALLS = 2;
/**
 * How much faster im2col must be to be kept over oneDNN. Each library's
 * worker threads spin for a while after their work (OpenBLAS's for about
 * 0.1 s), slowing the other library's next call on two cores; timing one op
 * alone does not see that. Over ResNet-50's convolutions, taking whichever
 * was faster per op ran well below taking oneDNN throughout.
 */
const SWITCH_MARGIN = 0.25;

type ConvMode = "default" | "auto" | "im2col" | "dnnl";

/**
 * `MEC_CONV`: unset, oneDNN where installed and im2col elsewhere; "auto"
 * times oneDNN against im2col per shape; "im2col" never uses oneDNN; "dnnl"
 * always does (an error if missing). The default is fixed rather than timed
 * so that two runs compute the same numbers, which an exact `--resume`
 * needs; timing under changing load can pick differently from run to run.
 */
function convMode(): ConvMode {
  const mode = Deno.env.get("MEC_CONV");
  if (mode === undefined || mode === "") return "default";
  if (mode === "auto" || mode === "im2col" || mode === "dnnl") return mode;
  throw new Error(`MEC_CONV must be auto, im2col or dnnl, got "${mode}"`);
}

export class CpuBackend implements Backend {
  readonly name = "cpu";
  #allocator = new CachingAllocator();
  #scratch = new Scratch();
  #blas: Blas | null = null;
  #scratchFn = (length: number) => this.#scratch.get(length);
  /** oneDNN convolutions; null when not used; undefined until first asked. */
  #dnnl: DnnlConvolutions | null | undefined;
  #convMode: ConvMode = "default";
  /** The implementation chosen per op and shape. */
  #convChoices = new Map<string, "im2col" | "dnnl">();

  /** The BLAS library, loaded on first use. */
  get blas(): Blas {
    if (this.#blas === null) this.#blas = blas();
    return this.#blas;
  }

  alloc(length: number): DataBuffer {
    return new CpuBuffer(this.#allocator.alloc(length));
  }

  free(buffer: DataBuffer): void {
    this.#allocator.free(host(buffer));
  }

  write(buffer: DataBuffer, data: Float32Array, offset = 0): void {
    host(buffer).set(data, offset);
  }

  read(buffer: DataBuffer, offset = 0, length?: number): Float32Array {
    const data = host(buffer);
    return data.slice(offset, offset + (length ?? data.length - offset));
  }

  copy(
    src: DataBuffer,
    srcOffset: number,
    dst: DataBuffer,
    dstOffset: number,
    length: number,
  ): void {
    host(dst).set(
      host(src).subarray(srcOffset, srcOffset + length),
      dstOffset,
    );
  }

  fill(
    buffer: DataBuffer,
    value: number,
    offset = 0,
    count?: number,
    stride = 1,
  ): void {
    const data = host(buffer);
    const n = count ?? Math.ceil((data.length - offset) / stride);
    if (stride === 1) {
      data.fill(value, offset, offset + n);
      return;
    }
    for (let i = 0; i < n; i++) data[offset + i * stride] = value;
  }

  synchronize(): void {}

  memory(): MemoryInfo {
    const m = this.#allocator.memory();
    return { allocated: m.allocated, cached: m.cached + this.#scratch.bytes };
  }

  emptyCache(): void {
    this.#allocator.empty();
    this.#scratch.release();
  }

  gemm(g: GemmArgs): void {
    const a = host(g.a);
    const b = host(g.b);
    const c = host(g.c);
    const batch = g.batch ?? 1;
    for (let i = 0; i < batch; i++) {
      const ao = g.aOffset + i * (g.strideA ?? 0);
      const bo = g.bOffset + i * (g.strideB ?? 0);
      const co = g.cOffset + i * (g.strideC ?? 0);
      this.blas.sgemm(
        g.transA,
        g.transB,
        g.m,
        g.n,
        g.k,
        g.alpha,
        ao === 0 ? a : a.subarray(ao),
        g.lda,
        bo === 0 ? b : b.subarray(bo),
        g.ldb,
        g.beta,
        co === 0 ? c : c.subarray(co),
        g.ldc,
      );
    }
  }

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
  ): void {
    host(out)[outOffset] = ew.dot(
      length,
      host(x),
      xOffset,
      incx,
      host(y),
      yOffset,
      incy,
    );
  }

  axpby(
    length: number,
    alpha: number,
    x: DataBuffer,
    beta: number,
    y: DataBuffer,
  ): void {
    ew.axpby(length, alpha, host(x), beta, host(y));
  }

  conv2dForward(x: DataBuffer, w: DataBuffer, y: DataBuffer, d: ConvDesc) {
    const [xs, ws, ys] = [host(x), host(w), host(y)];
    this.#convolve(
      "forward",
      d,
      () => conv.conv2dForward(this.blas, this.#scratchFn, xs, ws, ys, d),
      (dc) => dc.forward(xs, ws, ys, d),
    );
  }

  conv2dBackwardData(
    dy: DataBuffer,
    w: DataBuffer,
    dx: DataBuffer,
    d: ConvDesc,
  ): void {
    const [dys, ws, dxs] = [host(dy), host(w), host(dx)];
    this.#convolve(
      "backwardData",
      d,
      () =>
        conv.conv2dBackwardData(this.blas, this.#scratchFn, dys, ws, dxs, d),
      (dc) => dc.backwardData(dys, ws, dxs, d),
    );
  }

  conv2dBackwardFilter(
    x: DataBuffer,
    dy: DataBuffer,
    dw: DataBuffer,
    d: ConvDesc,
  ): void {
    const [xs, dys, dws] = [host(x), host(dy), host(dw)];
    this.#convolve(
      "backwardFilter",
      d,
      () =>
        conv.conv2dBackwardFilter(this.blas, this.#scratchFn, xs, dys, dws, d),
      (dc) => dc.backwardFilter(xs, dys, dws, d),
    );
  }

  /**
   * Which implementation runs `op` on shape `d`: "im2col", or "oneDNN "
   * followed by oneDNN's kernel name; undefined before the first call.
   */
  convImplementation(op: ConvOp, d: ConvDesc): string | undefined {
    const choice = this.#convChoices.get(`${op} ${convKey(d)}`);
    if (choice !== "dnnl") return choice;
    return `oneDNN ${this.#dnnlConvolutions()!.implementation(op, d)}`;
  }

  /** oneDNN's convolutions unless disabled or not installed. */
  #dnnlConvolutions(): DnnlConvolutions | null {
    if (this.#dnnl === undefined) {
      const mode = this.#convMode = convMode();
      const lib = mode === "im2col"
        ? null
        : mode === "dnnl"
        ? dnnl()
        : tryDnnl();
      this.#dnnl = lib && new DnnlConvolutions(lib, this.#scratchFn);
    }
    return this.#dnnl;
  }

  /**
   * Runs a convolution op with the implementation chosen for its shape. With
   * `MEC_CONV=auto` the choice is made as cudnn.benchmark does: on a shape's
   * first call, oneDNN and then im2col each run once to warm up (oneDNN
   * builds its kernels, V8 optimises the copy loops) and are timed on two
   * more calls. oneDNN goes first because
   * OpenBLAS's threads spin longer after their work than OpenMP's and would
   * slow it. The ops overwrite their output, so the extra calls are
   * harmless; the chosen one runs last.
   */
  #convolve(
    op: ConvOp,
    d: ConvDesc,
    im2col: () => void,
    onednn: (dc: DnnlConvolutions) => void,
  ): void {
    const key = `${op} ${convKey(d)}`;
    const choice = this.#convChoices.get(key);
    const dc = this.#dnnlConvolutions();
    if (choice === "im2col" || dc === null) {
      if (choice === undefined) this.#convChoices.set(key, "im2col");
      im2col();
      return;
    }
    if (choice === "dnnl" || this.#convMode !== "auto") {
      if (choice === undefined) this.#convChoices.set(key, "dnnl");
      onednn(dc);
      return;
    }
    const time = (run: () => void) => {
      run();
      let best = Infinity;
      for (let i = 0; i < CONV_TIMED_CALLS; i++) {
        const t = performance.now();
        run();
        best = Math.min(best, performance.now() - t);
      }
      return best;
    };
    // A burst of other load on the machine during one timing must not pin
    // a shape to im2col for good, so im2col has to win twice.
    let faster: "im2col" | "dnnl" = "im2col";
    for (let round = 0; round < 2 && faster === "im2col"; round++) {
      const dnnlTime = time(() => onednn(dc));
      const im2colTime = time(im2col);
      if (im2colTime * (1 + SWITCH_MARGIN) >= dnnlTime) faster = "dnnl";
    }
    this.#convChoices.set(key, faster);
    if (faster === "dnnl") onednn(dc);
  }

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
  ): void {
    bn.batchNormForwardTraining(
      host(x),
      host(y),
      hostOrNull(gamma),
      hostOrNull(beta),
      hostOrNull(runningMean),
      hostOrNull(runningVar),
      host(saveMean),
      host(saveInvStd),
      d,
    );
  }

  batchNormForwardInference(
    x: DataBuffer,
    y: DataBuffer,
    gamma: DataBuffer | null,
    beta: DataBuffer | null,
    mean: DataBuffer,
    variance: DataBuffer,
    d: BatchNormDesc,
  ): void {
    bn.batchNormForwardInference(
      host(x),
      host(y),
      hostOrNull(gamma),
      hostOrNull(beta),
      host(mean),
      host(variance),
      d,
    );
  }

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
  ): void {
    bn.batchNormBackward(
      host(x),
      host(dy),
      host(dx),
      hostOrNull(gamma),
      hostOrNull(dGamma),
      hostOrNull(dBeta),
      host(saveMean),
      host(saveInvStd),
      d,
    );
  }

  reluForward(x: DataBuffer, y: DataBuffer, length: number): void {
    ew.reluForward(host(x), host(y), length);
  }

  reluBackward(
    y: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    length: number,
  ): void {
    ew.reluBackward(host(y), host(dy), host(dx), length);
  }

  maxPoolForward(x: DataBuffer, y: DataBuffer, d: PoolDesc): void {
    pool.maxPoolForward(host(x), host(y), d);
  }

  maxPoolBackward(
    x: DataBuffer,
    y: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    d: PoolDesc,
  ): void {
    pool.maxPoolBackward(host(x), host(y), host(dy), host(dx), d);
  }

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
  ): void {
    ew.opTensor(
      op,
      alpha1,
      host(a),
      alpha2,
      host(b),
      bShape,
      beta,
      host(c),
      shape,
    );
  }

  addTensor(
    alpha: number,
    a: DataBuffer,
    aShape: Dims3,
    beta: number,
    c: DataBuffer,
    shape: Dims3,
  ): void {
    ew.addTensor(alpha, host(a), aShape, beta, host(c), shape);
  }

  reduceSum(
    alpha: number,
    x: DataBuffer,
    shape: Dims3,
    beta: number,
    y: DataBuffer,
    outShape: Dims3,
  ): void {
    ew.reduceSum(alpha, host(x), shape, beta, host(y), outShape);
  }

  scaleShift(
    x: DataBuffer,
    y: DataBuffer,
    length: number,
    alpha: number,
    beta: number,
  ): void {
    ew.scaleShift(host(x), host(y), length, alpha, beta);
  }

  unary(op: UnaryOp, x: DataBuffer, y: DataBuffer, length: number): void {
    ew.unary(op, host(x), host(y), length);
  }

  sgdUpdate(
    param: DataBuffer,
    grad: DataBuffer,
    momentumBuffer: DataBuffer | null,
    length: number,
    step: SgdStep,
  ): void {
    optim.sgdUpdate(
      host(param),
      host(grad),
      hostOrNull(momentumBuffer),
      length,
      step,
    );
  }

  larsAdapt(
    param: DataBuffer,
    grad: DataBuffer,
    length: number,
    trust: number,
    weightDecay: number,
    eps: number,
  ): void {
    optim.larsAdapt(host(param), host(grad), length, trust, weightDecay, eps);
  }

  l2NormalizeForward(
    x: DataBuffer,
    y: DataBuffer,
    norms: DataBuffer,
    r: number,
    cols: number,
    eps: number,
  ): void {
    rows.l2NormalizeForward(host(x), host(y), host(norms), r, cols, eps);
  }

  l2NormalizeBackward(
    y: DataBuffer,
    norms: DataBuffer,
    dy: DataBuffer,
    dx: DataBuffer,
    r: number,
    cols: number,
    eps: number,
  ): void {
    rows.l2NormalizeBackward(
      host(y),
      host(norms),
      host(dy),
      host(dx),
      r,
      cols,
      eps,
    );
  }

  softmaxCrossEntropyForward(
    logits: DataBuffer,
    labels: DataBuffer,
    probs: DataBuffer,
    losses: DataBuffer,
    r: number,
    cols: number,
  ): void {
    rows.softmaxCrossEntropyForward(
      host(logits),
      host(labels),
      host(probs),
      host(losses),
      r,
      cols,
    );
  }

  softmaxCrossEntropyBackward(
    probs: DataBuffer,
    labels: DataBuffer,
    dLosses: DataBuffer,
    dx: DataBuffer,
    r: number,
    cols: number,
  ): void {
    rows.softmaxCrossEntropyBackward(
      host(probs),
      host(labels),
      host(dLosses),
      host(dx),
      r,
      cols,
    );
  }
}
