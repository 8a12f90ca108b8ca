/**
 * The CPU backend: OpenBLAS for matrix products and convolutions (through
 * im2col, or oneDNN where installed and faster), oneDNN's primitives for
 * batch norm, ReLU, max pooling, sums and row sums where installed,
 * TypeScript kernels for the rest (and as the fallback and reference of
 * those), host memory from a caching allocator.
 *
 * @module
 */

import type {
  ActivationBackwardArgs,
  ActivationForwardArgs,
  AddTensorArgs,
  AxpbyArgs,
  AxpbyManyArgs,
  Backend,
  BatchNormBackwardArgs,
  BatchNormDesc,
  BatchNormForwardInferenceArgs,
  BatchNormForwardTrainingArgs,
  ConvBackwardDataArgs,
  ConvBackwardFilterArgs,
  ConvDesc,
  ConvForwardArgs,
  CopyArgs,
  DataBuffer,
  DotArgs,
  FillArgs,
  GemmArgs,
  L2NormalizeBackwardArgs,
  L2NormalizeForwardArgs,
  LarsAdaptArgs,
  MemoryInfo,
  OpTensorArgs,
  PoolBackwardArgs,
  PoolDesc,
  PoolForwardArgs,
  ReduceSumArgs,
  ScaleShiftArgs,
  SgdStep,
  SgdUpdateArgs,
  SgdUpdateManyArgs,
  SoftmaxCrossEntropyBackwardArgs,
  SoftmaxCrossEntropyForwardArgs,
  UnaryArgs,
} from "../nn/backend.ts";
import { tensorCount } from "../nn/backend.ts";
import { CachingAllocator, Scratch } from "./allocator.ts";
import { type Blas, blas, type SgemmArgs } from "./blas.ts";
import * as bn from "./batchnorm.ts";
import * as conv from "./conv.ts";
import { type Dnnl, dnnl, tryDnnl } from "./dnnl.ts";
import { convKey, type ConvOp, DnnlConvolutions } from "./dnnl_conv.ts";
import { DnnlOps, SWAP_ROWS } from "./dnnl_ops.ts";
import { adaptThreads, SMALL_GEMM, threadCount } from "./threads.ts";
import { type BlockedLayout, Layouts } from "./layout.ts";
import * as ew from "./elementwise.ts";
import * as pool from "./pool.ts";
import * as optim from "./optim.ts";
import * as rows from "./rows.ts";

/** Host memory handed out by the CPU backend. */
export class CpuBuffer implements DataBuffer {
  readonly device = "cpu";
  /**
   * The oneDNN layout the data is in, or null for plain NCHW (or a flat
   * run of elements); see layout.ts.
   */
  layout: BlockedLayout | null = null;
  readonly #data: Float32Array;
  /**
   * Known to hold no NaN and no -Inf: what oneDNN's ReLU and max pooling
   * need to match PyTorch's, so the check in front of them can be skipped.
   * The op that wrote the buffer sets it after writing (`markNoNaNOrNegInf`);
   * `data` and `raw`, through which anything may write, clear it. Only reads
   * go through `read` and `readPlain`, which keep it.
   */
  #noNaNOrNegInf = false;

  constructor(data: Float32Array) {
    this.#data = data;
  }

  /** The data in plain layout: a blocked buffer is rewritten first. */
  get data(): Float32Array {
    this.#noNaNOrNegInf = false;
    return this.readPlain;
  }

  /** The data in the layout `layout` names, for the ops that know it. */
  get raw(): Float32Array {
    this.#noNaNOrNegInf = false;
    return this.#data;
  }

  /** As `raw`, for an op that only reads it. */
  get read(): Float32Array {
    return this.#data;
  }

  /** As `data`, for an op that only reads it (the rewrite keeps values). */
  get readPlain(): Float32Array {
    const layout = this.layout;
    if (layout !== null) {
      this.layout = null;
      layout.toPlain(this.#data);
    }
    return this.#data;
  }

  get noNaNOrNegInf(): boolean {
    return this.#noNaNOrNegInf;
  }

  /** Called by the op that has just written values it knows are clean. */
  markNoNaNOrNegInf(): void {
    this.#noNaNOrNegInf = true;
  }

  get length(): number {
    return this.#data.length;
  }
}

function cpu(b: DataBuffer): CpuBuffer {
  if (!(b instanceof CpuBuffer)) {
    throw new TypeError(
      `the CPU backend was given a buffer of device "${b.device}"`,
    );
  }
  return b;
}

/** The buffer's data in plain layout. */
function host(b: DataBuffer): Float32Array {
  return cpu(b).data;
}

/** The buffer's data in plain layout, for an op that only reads it. */
function hostRead(b: DataBuffer): Float32Array {
  return cpu(b).readPlain;
}

/**
 * The data of a buffer an op overwrites whole, in the layout it is given
 * (null: plain): what it held before is not converted.
 */
function output(b: DataBuffer, layout: BlockedLayout | null): Float32Array {
  const c = cpu(b);
  c.layout = layout;
  return c.raw;
}

/**
 * The shared layout of buffers an elementwise op reads, all of one length:
 * when some are in one blocked layout and the rest plain, the plain ones
 * are rewritten in it (an elementwise op does not care which order the
 * elements are in, only that its operands agree), so that a plain
 * gradient meeting a blocked activation, like the global average pool's
 * into the last block, does not turn the rest of the backward plain.
 * Null after making them all plain when two blocked layouts differ.
 */
function commonLayout(...buffers: DataBuffer[]): BlockedLayout | null {
  let layout: BlockedLayout | null = null;
  for (const b of buffers) {
    const l = cpu(b).layout;
    if (l === null || l === layout) continue;
    if (layout !== null) {
      for (const b of buffers) host(b);
      return null;
    }
    layout = l;
  }
  if (layout === null) return null;
  for (const b of buffers) {
    const c = cpu(b);
    if (c.layout === null) {
      layout.fromPlain(c.raw);
      c.layout = layout;
    }
  }
  return layout;
}

/**
 * The layout of a buffer an op reads as [n, c, spatial] (a view may have
 * reshaped the tensor a convolution wrote), or null after making it plain
 * when its layout's dimensions do not fit.
 */
function channelLayout(
  b: DataBuffer,
  n: number,
  c: number,
  spatial: number,
): BlockedLayout | null {
  const layout = cpu(b).layout;
  if (layout === null) return null;
  const [ln, lc, h, w] = layout.dims;
  if (ln === n && lc === c && h * w === spatial) return layout;
  host(b);
  return null;
}

/** Rewrites a buffer's data in `layout`, from whatever layout it is in. */
function inLayout(b: DataBuffer, layout: BlockedLayout): void {
  const c = cpu(b);
  if (c.layout === layout) return;
  layout.fromPlain(host(b));
  c.layout = layout;
}

function hostOrNull(b: DataBuffer | null): Float32Array | null {
  return b === null ? null : host(b);
}

/**
 * Elements per row from which oneDNN's reduction beats the TypeScript
 * kernel: on shorter rows it is slower (4 M elements in rows of 49, the
 * ResNet's last 7x7 map: 12.7 ms against 3.6 ms; rows of 256: 1.5 ms
 * against 2.6 ms).
 */
const ROW_REDUCTION = 256;

/**
 * Elements from which the optimiser's updates run on oneDNN, where they
 * are bound by memory instead of one core's loop (SGD with momentum through
 * sgdUpdateMany, oneDNN against TypeScript: 4,096 elements, 12-17 against
 * 21-23 µs; 65,536: 33-41 against 295 µs; 25 M: 21-23 against 108-118 ms;
 * the moving average 5 against 7 µs, 12 against 186 µs, 10 against 39 ms).
 */
const OPTIM_ON_DNNL = 4096;

/**
 * Elements from which the finiteness checks before oneDNN's ReLU, residual
 * sum and pooling read on oneDNN's threads: below, one OpenBLAS thread's
 * sasum is quicker (8 µs against 1 µs at 4,096 elements, 58 against 16 at
 * 262,144). Above, oneDNN's two threads win, most of all between its own
 * calls, where its idle worker spins on the core a lone sasum would share
 * (the residual sum and ReLU of [16, 256, 56, 56] with both operands
 * checked: 16.5 against 24 ms).
 */
const FINITE_ON_DNNL = 1 << 20;

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

/**
 * `MEC_KERNELS`: unset or "dnnl", batch norm and same-shape sums on
 * oneDNN where it is installed; "ts", on the TypeScript kernels always.
 */
function kernelMode(): "dnnl" | "ts" {
  const mode = Deno.env.get("MEC_KERNELS");
  if (mode === undefined || mode === "" || mode === "dnnl") return "dnnl";
  if (mode === "ts") return "ts";
  throw new Error(`MEC_KERNELS must be dnnl or ts, got "${mode}"`);
}

/**
 * `MEC_CPU_CACHE_MB`: the most megabytes the allocator keeps cached for
 * reuse (unlimited when unset).
 */
function cacheLimit(): number {
  const value = Deno.env.get("MEC_CPU_CACHE_MB");
  if (value === undefined || value === "") return Infinity;
  const mb = Number(value);
  if (!(mb >= 0)) {
    throw new Error(
      `MEC_CPU_CACHE_MB must be a number of megabytes, got "${value}"`,
    );
  }
  return mb * 2 ** 20;
}

export class CpuBackend implements Backend {
  readonly name = "cpu";
  #allocator = new CachingAllocator(cacheLimit());
  #scratch = new Scratch();
  #blas: Blas | null = null;
  #scratchFn = (length: number) => this.#scratch.get(length);
  /** oneDNN convolutions; null when not used; undefined until first asked. */
  #dnnl: DnnlConvolutions | null | undefined;
  #convMode: ConvMode = "default";
  /** oneDNN's memory-bound primitives; null when not used. */
  #ops: DnnlOps | null | undefined;
  /**
   * Reserves that hold a fused batch norm + ReLU's mask, with the layout
   * of the data it was made on: a reserve of a forward that did not fuse
   * is not in it.
   */
  readonly #reluMasks = new WeakMap<CpuBuffer, BlockedLayout>();
  /**
   * Reserves that hold a max pooling's maxima (oneDNN's workspace), with
   * the layout of the input it was made on.
   */
  readonly #poolReserves = new WeakMap<CpuBuffer, BlockedLayout | null>();
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
    this.#allocator.free(cpu(buffer).raw);
  }

  write(buffer: DataBuffer, data: Float32Array, offset = 0): void {
    const whole = offset === 0 && data.length === buffer.length;
    (whole ? output(buffer, null) : host(buffer)).set(data, offset);
  }

  read(buffer: DataBuffer, offset = 0, length?: number): Float32Array {
    const data = hostRead(buffer);
    return data.slice(offset, offset + (length ?? data.length - offset));
  }

  copy({ src, srcOffset, dst, dstOffset, length }: CopyArgs): void {
    host(dst).set(
      hostRead(src).subarray(srcOffset, srcOffset + length),
      dstOffset,
    );
  }

  fill({ y, value, offset = 0, count, stride = 1 }: FillArgs): void {
    const n = count ?? Math.ceil((y.length - offset) / stride);
    const whole = offset === 0 && stride === 1 && n === y.length;
    const data = whole ? output(y, null) : host(y);
    if (stride === 1) {
      data.fill(value, offset, offset + n);
      return;
    }
    for (let i = 0; i < n; i++) data[offset + i * stride] = value;
  }

  /** Nothing to wait for: every op has completed when it returns. */
  synchronize(): void {}

  memory(): MemoryInfo {
    const m = this.#allocator.memory();
    return {
      allocated: m.allocated,
      cached: m.cached + this.#scratch.bytes + (this.#layouts?.bytes ?? 0) +
        (this.#ops?.bytes ?? 0),
      peak: m.peak,
    };
  }

  threadsUnderLoad(): number | null {
    const threads = threadCount();
    return threads === 0 ? null : threads;
  }

  emptyCache(): void {
    this.#allocator.empty();
    this.#scratch.release();
    this.#layouts?.release();
    this.#ops?.release();
  }

  /**
   * Drops the cached arrays no allocation used since the last call, and
   * lets the thread count follow the load (threads.ts).
   */
  endStep(): void {
    this.#allocator.trim();
    adaptThreads();
  }

  /**
   * On oneDNN's sgemm from SMALL_GEMM multiply-adds, where it runs the
   * shapes of a step as fast as OpenBLAS or faster (a weight's gradient
   * from a batch of 16, 2048 x 2048 by 16: 0.9 against 2.6 ms), except an
   * accumulating product of more than SWAP_ROWS rows, which it ran at half
   * OpenBLAS's rate; below, OpenBLAS on one thread (threads.ts).
   */
  gemm(g: GemmArgs): void {
    const a = host(g.a);
    const b = host(g.b);
    const c = host(g.c);
    const large = g.m * g.n * g.k >= SMALL_GEMM &&
      (g.beta === 0 || g.m <= SWAP_ROWS);
    const args: SgemmArgs = [
      g.transA,
      g.transB,
      g.m,
      g.n,
      g.k,
      g.alpha,
      g.aOffset === 0 ? a : a.subarray(g.aOffset),
      g.lda,
      g.bOffset === 0 ? b : b.subarray(g.bOffset),
      g.ldb,
      g.beta,
      g.cOffset === 0 ? c : c.subarray(g.cOffset),
      g.ldc,
    ];
    const ops = large ? this.#dnnlOps() : null;
    if (ops) ops.gemm(...args);
    else this.blas.sgemm(...args);
  }

  dot(a: DotArgs): void {
    host(a.result)[a.resultOffset] = ew.dot(
      a.n,
      host(a.x),
      a.xOffset,
      a.incx,
      host(a.y),
      a.yOffset,
      a.incy,
    );
  }

  /**
   * In the operands' blocked layout when they share one (a gradient sum).
   * y += x, autograd's sum of two gradients, on oneDNN's sum: the same
   * float32 rounding as the TypeScript kernel's float64 sum, on all cores.
   * Other factors on oneDNN too from OPTIM_ON_DNNL elements (the teacher's
   * moving average), within float32 rounding of the TypeScript kernel.
   */
  axpby(a: AxpbyArgs): void {
    this.#axpby(a);
  }

  /** One `axpby` per tensor, in order (the teacher's moving average). */
  axpbyMany({ alpha, beta, xs, ys, lengths }: AxpbyManyArgs): void {
    const count = tensorCount("axpbyMany", lengths, { xs, ys });
    for (let i = 0; i < count; i++) {
      this.#axpby({ n: lengths[i], alpha, x: xs[i], beta, y: ys[i] });
    }
  }

  /** axpby's body, shared by axpbyMany without going through the public op. */
  #axpby({ n, alpha, x, beta, y }: AxpbyArgs): void {
    const whole = n === x.length && n === y.length;
    const ops = this.#dnnlOps();
    if (whole && ops && alpha === 1 && beta === 1) {
      commonLayout(x, y);
      ops.add(cpu(x).raw, cpu(y).raw, cpu(y).raw, n);
      return;
    }
    // Elementwise: in the operands' layout when they share one.
    const same = whole && commonLayout(x, y) !== null;
    const [xs, ys] = same ? [cpu(x).raw, cpu(y).raw] : [host(x), host(y)];
    // oneDNN's form scales x by alpha / beta: beta is kept far from 0.
    const onDnnl = n >= OPTIM_ON_DNNL && Math.abs(beta) >= 2 ** -20;
    if (ops && onDnnl && xs !== ys) {
      ops.axpby(alpha, xs, beta, ys, n);
    } else ew.axpby(n, alpha, xs, beta, ys);
  }

  // oneDNN's convolutions read blocked inputs and write blocked outputs
  // (layout.ts); im2col's see and write plain ones. With MEC_CONV=auto both
  // may run on one call: the last one leaves the output's layout.
  conv2dForward({ x, w, y, desc: d }: ConvForwardArgs): void {
    this.#convolve(
      "forward",
      d,
      () =>
        conv.conv2dForward(
          this.blas,
          this.#scratchFn,
          hostRead(x),
          hostRead(w),
          output(y, null),
          d,
        ),
      (dc) => dc.forward(cpu(x), cpu(w), cpu(y), d),
    );
  }

  conv2dBackwardData({ dy, w, dx, desc: d }: ConvBackwardDataArgs): void {
    this.#convolve(
      "backwardData",
      d,
      () =>
        conv.conv2dBackwardData(
          this.blas,
          this.#scratchFn,
          hostRead(dy),
          hostRead(w),
          output(dx, null),
          d,
        ),
      (dc) => dc.backwardData(cpu(dy), cpu(w), cpu(dx), d),
    );
  }

  conv2dBackwardFilter({ x, dy, dw, desc: d }: ConvBackwardFilterArgs): void {
    this.#convolve(
      "backwardFilter",
      d,
      () =>
        conv.conv2dBackwardFilter(
          this.blas,
          this.#scratchFn,
          hostRead(x),
          hostRead(dy),
          output(dw, null),
          d,
        ),
      (dc) => dc.backwardFilter(cpu(x), cpu(dy), cpu(dw), d),
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

  /** oneDNN primitives in use, for the bench and tests. */
  get dnnlOps(): DnnlOps | null {
    return this.#dnnlOps();
  }

  /** oneDNN's memory-bound ops unless disabled or not installed. */
  #dnnlOps(): DnnlOps | null {
    if (this.#ops === undefined) {
      const lib = kernelMode() === "ts" ? null : tryDnnl();
      this.#ops = lib &&
        new DnnlOps(lib, this.#scratchFn, this.#layoutsOf(lib));
    }
    return this.#ops;
  }

  /** The blocked layouts of this backend's buffers, once oneDNN is loaded. */
  #layouts: Layouts | null = null;

  #layoutsOf(lib: Dnnl): Layouts {
    return this.#layouts ??= new Layouts(lib);
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
      this.#dnnl = lib &&
        new DnnlConvolutions(lib, this.#scratchFn, this.#layoutsOf(lib));
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

  // On oneDNN, batch norm keeps a blocked input's layout (layout.ts).
  // With `relu`, oneDNN applies it inside the batch norm where that is
  // fast (dnnl_ops.ts); elsewhere the ReLU runs after it, on its output.
  batchNormForwardTraining(a: BatchNormForwardTrainingArgs): void {
    const ops = this.#dnnlOps();
    const relu = a.relu ?? false;
    const reserve = relu && a.reserve ? cpu(a.reserve) : null;
    let fused = false;
    if (ops) {
      const { n, c, spatial } = a.desc;
      const layout = channelLayout(a.x, n, c, spatial);
      fused = ops.batchNormForwardTraining(
        cpu(a.x).raw,
        output(a.y, layout),
        hostOrNull(a.scale),
        hostOrNull(a.bias),
        hostOrNull(a.runningMean),
        hostOrNull(a.runningVar),
        host(a.saveMean),
        host(a.saveInvStd),
        a.desc,
        layout,
        relu,
        reserve?.raw ?? null,
      );
      if (reserve !== null && fused && layout !== null) {
        this.#reluMasks.set(reserve, layout);
      }
      const finite = bn.trainingOutputFinite(
        host(a.saveMean),
        host(a.saveInvStd),
        hostOrNull(a.scale),
        hostOrNull(a.bias),
        a.desc,
      );
      // Finite values, and the fused ReLU's of them: the ReLU after it
      // and the residual sum skip their check.
      if (finite) cpu(a.y).markNoNaNOrNegInf();
    } else {
      bn.batchNormForwardTraining(
        host(a.x),
        output(a.y, null),
        hostOrNull(a.scale),
        hostOrNull(a.bias),
        hostOrNull(a.runningMean),
        hostOrNull(a.runningVar),
        host(a.saveMean),
        host(a.saveInvStd),
        a.desc,
      );
    }
    if (relu && !fused) {
      if (reserve !== null) this.#reluMasks.delete(reserve);
      this.reluForward({ x: a.y, y: a.y, length: a.y.length });
    }
  }

  /** The fused ReLU's mask on blocked data (dnnl_ops.ts); 0 elsewhere. */
  batchNormReluReserve(x: DataBuffer, d: BatchNormDesc): number {
    const ops = this.#dnnlOps();
    if (!ops) return 0;
    return ops.batchNormReluReserve(d, channelLayout(x, d.n, d.c, d.spatial));
  }

  batchNormForwardInference(a: BatchNormForwardInferenceArgs): void {
    const ops = this.#dnnlOps();
    if (ops) {
      const { n, c, spatial } = a.desc;
      const layout = channelLayout(a.x, n, c, spatial);
      ops.batchNormForwardInference(
        cpu(a.x).raw,
        output(a.y, layout),
        hostOrNull(a.scale),
        hostOrNull(a.bias),
        host(a.estimatedMean),
        host(a.estimatedVariance),
        a.desc,
        layout,
      );
      return;
    }
    bn.batchNormForwardInference(
      host(a.x),
      output(a.y, null),
      hostOrNull(a.scale),
      hostOrNull(a.bias),
      host(a.estimatedMean),
      host(a.estimatedVariance),
      a.desc,
    );
  }

  /**
   * With `relu`, where the forward left the ReLU's mask in the reserve,
   * oneDNN applies it inside the batch norm's backward, on x and dy in the
   * forward's layout (they are rewritten in it if an op made them plain);
   * elsewhere the ReLU's backward runs first, into a temporary.
   */
  batchNormBackward(a: BatchNormBackwardArgs): void {
    const ops = this.#dnnlOps();
    let layout: BlockedLayout | null = null;
    let mask: Float32Array | null = null;
    if (a.relu) {
      const reserve = cpu(a.relu.reserve);
      const masked = ops ? this.#reluMasks.get(reserve) : undefined;
      if (masked === undefined) {
        const length = a.dy.length;
        const dy = this.alloc(length);
        this.reluBackward({ y: a.relu.y, dy: a.dy, dx: dy, length });
        this.batchNormBackward({ ...a, dy, relu: undefined });
        this.free(dy);
        return;
      }
      inLayout(a.x, masked);
      inLayout(a.dy, masked);
      layout = masked;
      mask = reserve.raw;
    } else if (ops) {
      const { n, c, spatial } = a.desc;
      layout = channelLayout(a.x, n, c, spatial) && commonLayout(a.x, a.dy);
      if (layout === null) host(a.dy);
    }
    if (ops) {
      // oneDNN needs to know whether the forward had a shift: it did when a
      // gradient of it is asked for; without one, none is computed.
      ops.batchNormBackward(
        cpu(a.x).raw,
        cpu(a.dy).raw,
        output(a.dx, layout),
        hostOrNull(a.scale),
        a.dBias !== null,
        hostOrNull(a.dScale),
        hostOrNull(a.dBias),
        host(a.saveMean),
        host(a.saveInvStd),
        a.desc,
        layout,
        mask,
      );
      return;
    }
    bn.batchNormBackward(
      host(a.x),
      host(a.dy),
      output(a.dx, null),
      hostOrNull(a.scale),
      hostOrNull(a.dScale),
      hostOrNull(a.dBias),
      host(a.saveMean),
      host(a.saveInvStd),
      a.desc,
    );
  }

  /**
   * Whether a whole buffer's values are finite: one pass, on oneDNN's
   * threads from FINITE_ON_DNNL elements, else on one OpenBLAS thread.
   */
  #finite(b: DataBuffer): boolean {
    const c = cpu(b);
    const data = c.read;
    const ops = data.length >= FINITE_ON_DNNL ? this.#dnnlOps() : null;
    const finite = ops
      ? ops.allFinite(data, data.length)
      : this.blas.allFinite(data.length, data);
    if (finite) c.markNoNaNOrNegInf();
    return finite;
  }

  /**
   * Whether a buffer holds no NaN and no -Inf, which is all oneDNN's ReLU,
   * residual sum + ReLU and max pooling need to give PyTorch's results:
   * known without a pass where the op that wrote it proved it (the outputs
   * of those ops, and of batch norms whose statistics bound them).
   */
  #noNaNOrNegInf(b: DataBuffer): boolean {
    return cpu(b).noNaNOrNegInf || this.#finite(b);
  }

  /**
   * On oneDNN when x is finite, else on the TypeScript kernel, which keeps
   * NaN as PyTorch's does (oneDNN's turns it into 0, and a NaN that
   * vanished inside the network would hide a diverged run from the
   * non-finite loss check). The check is one pass that reads x, and both
   * together run 5 times as fast as the TypeScript kernel on two cores. In
   * the input's layout, whatever it is: the op is elementwise.
   */
  reluForward({ x, y, length }: ActivationForwardArgs): void {
    if (length === x.length && length === y.length) {
      const ops = this.#dnnlOps();
      const exact = ops !== null && this.#noNaNOrNegInf(x);
      const xs = cpu(x).raw;
      const ys = output(y, cpu(x).layout);
      if (exact) {
        ops.reluForward(xs, ys, length);
        cpu(y).markNoNaNOrNegInf();
      } else ew.reluForward(xs, ys, length);
      return;
    }
    ew.reluForward(host(x), host(y), length);
  }

  /** On oneDNN when dy is finite (dnnl_ops.ts), else in TypeScript. */
  reluBackward({ y, dy, dx, length }: ActivationBackwardArgs): void {
    if (length === y.length && length === dy.length && length === dx.length) {
      const layout = commonLayout(y, dy);
      const [ys, dys] = [cpu(y).raw, cpu(dy).raw];
      const dxs = output(dx, layout);
      const ops = this.#dnnlOps();
      if (ops && this.#finite(dy)) {
        ops.reluBackward(ys, dys, dxs, length);
      } else ew.reluBackward(ys, dys, dxs, length);
      return;
    }
    ew.reluBackward(host(y), host(dy), host(dx), length);
  }

  /**
   * On oneDNN, in x's layout, when x is finite: oneDNN's max drops a NaN,
   * where PyTorch's keeps it, and its windows start at the lowest finite
   * float, above -Inf. The TypeScript kernel (PyTorch's semantics exactly)
   * runs the rest.
   */
  maxPoolForward({ x, y, desc, reserve }: PoolForwardArgs): void {
    const ops = this.#dnnlOps();
    const kept = reserve ? cpu(reserve) : null;
    if (ops && this.#noNaNOrNegInf(x)) {
      const xLayout = channelLayout(x, desc.n, desc.c, desc.h * desc.w);
      const layout = ops.maxPoolForward(
        cpu(x).read,
        cpu(y).raw,
        desc,
        xLayout,
        kept?.raw ?? null,
      );
      if (layout !== undefined) {
        cpu(y).layout = layout;
        // Maxima of values that are neither NaN nor -Inf.
        cpu(y).markNoNaNOrNegInf();
        if (kept !== null) this.#poolReserves.set(kept, xLayout);
        return;
      }
    }
    if (kept !== null) this.#poolReserves.delete(kept);
    pool.maxPoolForward(host(x), output(y, null), desc);
  }

  /** oneDNN's workspace for the layout x is in; 0 without oneDNN. */
  maxPoolReserve(x: DataBuffer, d: PoolDesc): number {
    const ops = this.#dnnlOps();
    if (!ops) return 0;
    return ops.maxPoolReserve(d, channelLayout(x, d.n, d.c, d.h * d.w));
  }

  /**
   * From the forward's reserve where it holds the maxima's positions: dy
   * is brought into the forward output's layout and nothing else is read.
   * Otherwise on oneDNN, which finds the maxima again, when x is finite,
   * or in TypeScript.
   */
  maxPoolBackward({ x, y, dy, dx, desc, reserve }: PoolBackwardArgs): void {
    const ops = this.#dnnlOps();
    const kept = reserve ? cpu(reserve) : null;
    const xLayout = kept === null ? undefined : this.#poolReserves.get(kept);
    if (ops && kept !== null && xLayout !== undefined) {
      const yLayout = ops.maxPoolOutputLayout(desc, xLayout);
      if (yLayout === null) host(dy);
      else if (yLayout !== undefined) inLayout(dy, yLayout);
      const layout = ops.maxPoolBackward(
        cpu(x).raw,
        cpu(dy).raw,
        cpu(dx).raw,
        desc,
        xLayout,
        cpu(dy).layout,
        kept.raw,
      );
      if (layout !== undefined) {
        cpu(dx).layout = layout;
        return;
      }
    }
    if (ops && this.#noNaNOrNegInf(x)) {
      channelLayout(x, desc.n, desc.c, desc.h * desc.w);
      const run = () =>
        ops.maxPoolBackward(
          cpu(x).raw,
          cpu(dy).raw,
          cpu(dx).raw,
          desc,
          cpu(x).layout,
          cpu(dy).layout,
        );
      let layout = run();
      if (layout === undefined) {
        // dy's layout is not the forward's output's: both plain, then.
        host(x);
        host(dy);
        layout = run();
      }
      if (layout !== undefined) {
        cpu(dx).layout = layout;
        return;
      }
    }
    pool.maxPoolBackward(host(x), host(y), host(dy), output(dx, null), desc);
  }

  /**
   * A sum on oneDNN; with `relu`, the ReLU as oneDNN's post-op of the sum
   * when neither operand holds NaN or -Inf (their sum holds neither, and
   * oneDNN's ReLU is exact on everything else), else after it.
   */
  opTensor(a: OpTensorArgs): void {
    const ops = this.#dnnlOps();
    const relu = a.relu ?? false;
    const [p, q, r] = a.shape;
    const n = p * q * r;
    const thenRelu = () => this.reluForward({ x: a.c, y: a.c, length: n });
    if (
      ops && a.op === "add" && a.alpha1 === 1 && a.alpha2 === 1 &&
      a.beta === 0 && a.bShape.every((d, i) => d === a.shape[i])
    ) {
      if (n === a.a.length && n === a.b.length && n === a.c.length) {
        // Elementwise: in the operands' layout when they share one.
        const fused = relu && this.#noNaNOrNegInf(a.a) &&
          this.#noNaNOrNegInf(a.b);
        const layout = commonLayout(a.a, a.b);
        const [x, y] = [cpu(a.a).raw, cpu(a.b).raw];
        ops.add(x, y, output(a.c, layout), n, fused);
        if (fused) cpu(a.c).markNoNaNOrNegInf();
        if (relu && !fused) thenRelu();
        return;
      }
      ops.add(host(a.a), host(a.b), host(a.c), n);
      if (relu) thenRelu();
      return;
    }
    ew.opTensor(
      a.op,
      a.alpha1,
      host(a.a),
      a.alpha2,
      host(a.b),
      a.bShape,
      a.beta,
      host(a.c),
      a.shape,
    );
    if (relu) thenRelu();
  }

  addTensor({ alpha, a, aShape, beta, c, shape }: AddTensorArgs): void {
    ew.addTensor(alpha, host(a), aShape, beta, host(c), shape);
  }

  /**
   * Sums (or means) over the last dimension alone, the global average
   * pooling and its kin, of rows of at least ROW_REDUCTION elements on
   * oneDNN's reduction (6 times the TypeScript kernel's speed on two cores
   * at 3,136); every other reduction in TypeScript.
   */
  reduceSum({ alpha, x, shape, beta, y, yShape }: ReduceSumArgs): void {
    const [d0, d1, d2] = shape;
    const ops = this.#dnnlOps();
    const mean = alpha === 1 / d2;
    if (
      ops && beta === 0 && (alpha === 1 || mean) && d2 >= ROW_REDUCTION &&
      yShape[0] === d0 && yShape[1] === d1 && yShape[2] === 1 &&
      x.length === d0 * d1 * d2 && y.length === d0 * d1
    ) {
      ops.rowSums(host(x), output(y, null), d0 * d1, d2, mean);
      return;
    }
    ew.reduceSum(alpha, host(x), shape, beta, host(y), yShape);
  }

  scaleShift({ x, y, length, scale, shift }: ScaleShiftArgs): void {
    ew.scaleShift(host(x), host(y), length, scale, shift);
  }

  unary({ op, x, y, length }: UnaryArgs): void {
    ew.unary(op, host(x), host(y), length);
  }

  sgdUpdate(a: SgdUpdateArgs): void {
    this.#sgd(
      host(a.param),
      host(a.grad),
      hostOrNull(a.momentumBuffer),
      a.length,
      a.step,
    );
  }

  /** One `sgdUpdate` per tensor, in order. */
  sgdUpdateMany(a: SgdUpdateManyArgs): void {
    const { params, grads, momentumBuffers: bufs, lengths } = a;
    const count = tensorCount("sgdUpdateMany", lengths, {
      params,
      grads,
      momentumBuffers: bufs,
    });
    for (let i = 0; i < count; i++) {
      this.#sgd(
        host(params[i]),
        host(grads[i]),
        bufs === null ? null : host(bufs[i]),
        lengths[i],
        a.step,
      );
    }
  }

  /**
   * On oneDNN from OPTIM_ON_DNNL elements, for the cases it covers
   * (dnnl_ops.ts), else the TypeScript kernel's one fused pass.
   */
  #sgd(
    param: Float32Array,
    grad: Float32Array,
    buf: Float32Array | null,
    length: number,
    step: SgdStep,
  ): void {
    const ops = length >= OPTIM_ON_DNNL ? this.#dnnlOps() : null;
    if (ops && ops.sgdUpdate(param, grad, buf, length, step)) return;
    optim.sgdUpdate(param, grad, buf, length, step);
  }

  larsAdapt(a: LarsAdaptArgs): void {
    optim.larsAdapt(
      host(a.param),
      host(a.grad),
      a.length,
      a.trust,
      a.weightDecay,
      a.eps,
    );
  }

  l2NormalizeForward(a: L2NormalizeForwardArgs): void {
    rows.l2NormalizeForward(
      host(a.x),
      host(a.y),
      host(a.norms),
      a.rows,
      a.cols,
      a.eps,
    );
  }

  l2NormalizeBackward(a: L2NormalizeBackwardArgs): void {
    rows.l2NormalizeBackward(
      host(a.y),
      host(a.norms),
      host(a.dy),
      host(a.dx),
      a.rows,
      a.cols,
      a.eps,
    );
  }

  softmaxCrossEntropyForward(a: SoftmaxCrossEntropyForwardArgs): void {
    rows.softmaxCrossEntropyForward(
      host(a.logits),
      host(a.labels),
      host(a.probs),
      host(a.losses),
      a.rows,
      a.cols,
    );
  }

  softmaxCrossEntropyBackward(a: SoftmaxCrossEntropyBackwardArgs): void {
    rows.softmaxCrossEntropyBackward(
      host(a.probs),
      host(a.labels),
      host(a.dLosses),
      host(a.dx),
      a.rows,
      a.cols,
    );
  }
}
