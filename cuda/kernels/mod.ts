/**
 * The CUDA backend's own kernels: every op of the Backend interface that
 * cuBLAS and cuDNN do not offer, compiled at run time by NVRTC (or read from
 * the disk cache) and launched on the backend's stream.
 *
 * Each op mirrors the CPU backend's TypeScript kernel (cpu/elementwise.ts,
 * cpu/optim.ts, cpu/rows.ts): the same formulae in the same order, in
 * double, so that elementwise results should match it bit for bit (exp and
 * log aside, and opTensor's mul, whose three factors the CPU associates
 * differently when b is a scalar per row) and sums match it to rounding.
 * The optimiser step and the teacher's EMA run as one launch over all
 * their tensors (sgdUpdateMany, axpbyMany), over a table of the tensors
 * kept on the device (tables.ts).
 * No op synchronises with the host; sums use no atomics, so two runs give
 * bitwise-equal results. Two things a kernel cannot do as the
 * CPU does: throw for a label that is not a class index (that row's loss
 * and gradient are NaN instead), and sum a reduceSum whose output overlaps
 * its input (the CPU's does, through a temporary; nothing above the
 * interface asks for it).
 *
 * @module
 */

import type {
  AddTensorArgs,
  AxpbyArgs,
  AxpbyManyArgs,
  DotArgs,
  FillArgs,
  L2NormalizeBackwardArgs,
  L2NormalizeForwardArgs,
  LarsAdaptArgs,
  OpTensorArgs,
  ReduceSumArgs,
  ScaleShiftArgs,
  SgdStep,
  SgdUpdateArgs,
  SgdUpdateManyArgs,
  SoftmaxCrossEntropyBackwardArgs,
  SoftmaxCrossEntropyForwardArgs,
  UnaryArgs,
} from "../../nn/backend.ts";
import { tensorCount } from "../../nn/backend.ts";
import { addr } from "../buffer.ts";
import {
  launchKernel,
  moduleGetFunction,
  moduleLoadData,
  moduleUnload,
} from "../driver.ts";
import { buildKernels } from "./build.ts";
import { defaultCacheDir } from "./cache.ts";
import {
  broadcast,
  elementwise,
  isEmpty,
  type LaunchConfig,
  multiTensor,
  partialBytes,
  rows,
  sumAll,
  sumCols,
  sumRows,
} from "./launch.ts";
import {
  BINARY_OPS,
  opCode,
  SGD_MODES,
  type SgdMode,
  UNARY_OPS,
} from "./ops.ts";
import { broadcastForm, reduceForm } from "./shapes.ts";
import {
  TableCache,
  type TableCacheStats,
  type TableMemory,
} from "./tables.ts";
import {
  KERNEL_NAMES,
  type KernelArgs,
  type KernelName,
  marshal,
} from "./signatures.ts";

export { buildKernels, COMPILE_OPTIONS } from "./build.ts";
export { cacheKey, defaultCacheDir } from "./cache.ts";
export { KERNEL_NAMES, type KernelName } from "./signatures.ts";
export { KERNEL_SOURCE } from "./source.ts";
export type { LaunchConfig } from "./launch.ts";
export {
  TABLE_CACHE_SIZE,
  TableCache,
  type TableCacheStats,
  type TableMemory,
} from "./tables.ts";

/**
 * Device scratch memory from the backend's caching allocator. Freeing right
 * after the launches are queued is safe: everything runs on one stream, and
 * the allocator reuses blocks in stream order.
 */
export interface Scratch {
  alloc(bytes: number): bigint;
  free(address: bigint): void;
}

/**
 * Queues one kernel. The real one looks the kernel up in the loaded module
 * and calls `cuLaunchKernel`; a test can pass one that records the calls.
 */
export type Launcher = <K extends KernelName>(
  kernel: K,
  config: LaunchConfig,
  args: KernelArgs<K>,
) => void;

/** Bytes of a partial sum and of LARC's rate pair (doubles). */
const DOUBLE = 8;

/** What sgd_update does with the buffer: the CPU backend's three cases. */
function sgdMode(hasBuffer: boolean, step: SgdStep): SgdMode {
  if (!hasBuffer || step.momentum === 0) return "plain";
  return step.firstStep ? "first" : "later";
}

/** The column of sgd_update_many's table that holds the gradients. */
const GRAD_COLUMN = 1;

/** sgd_update's and sgd_update_many's hyper-parameters. */
function sgdHyper(mode: SgdMode, step: SgdStep) {
  return {
    mode: opCode(SGD_MODES, mode),
    nesterov: step.nesterov ? 1 : 0,
    lr: step.lr,
    momentum: step.momentum,
    keep: 1 - step.dampening,
    weight_decay: step.weightDecay,
  };
}

/** Table memory of kernels made without any: a multi-tensor op throws. */
const NO_TABLES: TableMemory = {
  alloc(): bigint {
    throw new Error(
      "these kernels were made without table memory: the multi-tensor ops need one",
    );
  },
  free(): void {},
  write(): void {},
};

/** The kernels, loaded into the current CUDA context. */
export class Kernels {
  readonly #launch: Launcher;
  readonly #scratch: Scratch;
  readonly #unload: () => void;
  /** The device tables of the multi-tensor ops (tables.ts). */
  readonly #tables: TableCache;
  /** Whether the CUBIN came from the disk cache (false: NVRTC compiled it). */
  readonly fromCache: boolean;

  /**
   * Kernels that queue through `launch`; `Kernels.load` makes the real ones.
   * `tables` is where the multi-tensor ops keep their tables (without it
   * they throw); `unload` runs on dispose.
   */
  constructor(
    launch: Launcher,
    scratch: Scratch,
    opts: {
      unload?: () => void;
      fromCache?: boolean;
      tables?: TableMemory;
      tableCapacity?: number;
    } = {},
  ) {
    this.#launch = launch;
    this.#scratch = scratch;
    this.#unload = opts.unload ?? (() => {});
    this.#tables = new TableCache(opts.tables ?? NO_TABLES, opts.tableCapacity);
    this.fromCache = opts.fromCache ?? false;
  }

  /**
   * Compiles the kernels for `arch` ("sm_90") with NVRTC, or reads the CUBIN
   * from the disk cache (`cacheDir`, default `defaultCacheDir()`, null for
   * none), loads the module (cuModuleLoadData) and looks up every function.
   * Needs a current CUDA context (a GPU), so it is not run in CI. A cached
   * image that the driver refuses is rebuilt once. The multi-tensor ops'
   * tables live in `scratch` blocks held until evicted, written by `upload`
   * (the backend's pinned staging, queued on `stream`).
   */
  static load(opts: {
    arch: string;
    stream: Deno.PointerValue;
    scratch: Scratch;
    upload: (address: bigint, data: Float32Array) => void;
    cacheDir?: string | null;
  }): Kernels {
    const dir = opts.cacheDir === undefined ? defaultCacheDir() : opts.cacheDir;
    let built = buildKernels(opts.arch, dir);
    let module: Deno.PointerValue;
    try {
      module = moduleLoadData(built.cubin);
    } catch (e) {
      if (!built.hit) throw e;
      built = buildKernels(opts.arch, dir, { refresh: true });
      module = moduleLoadData(built.cubin);
    }
    let functions: Map<KernelName, Deno.PointerValue>;
    try {
      functions = new Map(
        KERNEL_NAMES.map((name) => [name, moduleGetFunction(module, name)]),
      );
    } catch (e) {
      moduleUnload(module);
      throw e;
    }
    const stream = opts.stream;
    const launch: Launcher = (kernel, config, args) =>
      launchKernel(
        functions.get(kernel) ?? null,
        config.grid,
        config.block,
        config.shared,
        stream,
        marshal(kernel, args),
      );
    const scratch = opts.scratch;
    return new Kernels(launch, scratch, {
      unload: () => moduleUnload(module),
      fromCache: built.hit,
      tables: {
        alloc: (bytes) => scratch.alloc(bytes),
        free: (address) => scratch.free(address),
        write: opts.upload,
      },
    });
  }

  /** Frees the tables and unloads the module; the kernels must not be used again. */
  dispose(): void {
    this.#tables.clear();
    this.#unload();
  }

  /** How often the multi-tensor ops found their table on the device. */
  tableStats(): TableCacheStats {
    return this.#tables.stats();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #run<K extends KernelName>(
    kernel: K,
    config: LaunchConfig,
    args: KernelArgs<K>,
  ): void {
    if (!isEmpty(config)) this.#launch(kernel, config, args);
  }

  /** Scratch for `bytes`, freed after `queue` has queued its launches. */
  #withScratch(bytes: number, queue: (address: bigint) => void): void {
    if (bytes === 0) {
      queue(0n);
      return;
    }
    const address = this.#scratch.alloc(bytes);
    try {
      queue(address);
    } finally {
      this.#scratch.free(address);
    }
  }

  fill({ y, value, offset = 0, count, stride = 1 }: FillArgs): void {
    const n = count ?? Math.ceil((y.length - offset) / stride);
    if (!(n > 0)) return;
    this.#run("fill", elementwise(n), {
      y: addr(y, offset),
      count: n,
      stride,
      value,
    });
  }

  axpby({ n, alpha, x, beta, y }: AxpbyArgs): void {
    this.#run("axpby", elementwise(n), {
      n,
      alpha,
      x: addr(x),
      beta,
      y: addr(y),
    });
  }

  /** Two passes through scratch; the result stays on the device. */
  dot(a: DotArgs): void {
    const n = Math.max(a.n, 0);
    const plan = sumAll(n);
    this.#withScratch(plan.chunks * DOUBLE, (partials) => {
      this.#run("dot_partial", plan.pass1, {
        n,
        x: addr(a.x, a.xOffset),
        incx: a.incx,
        y: addr(a.y, a.yOffset),
        incy: a.incy,
        partials,
      });
      this.#run("sum_partials", plan.pass2, {
        partials,
        chunks: plan.chunks,
        m: 1,
        alpha: 1,
        beta: 0,
        y: addr(a.result, a.resultOffset),
      });
    });
  }

  opTensor(a: OpTensorArgs): void {
    const f = broadcastForm(a.shape, a.bShape);
    this.#run("op_tensor", broadcast(f.rows, f.cols), {
      op: opCode(BINARY_OPS, a.op),
      alpha1: a.alpha1,
      a: addr(a.a),
      alpha2: a.alpha2,
      b: addr(a.b),
      beta: a.beta,
      c: addr(a.c),
      rows: f.rows,
      d1: f.d1,
      cols: f.cols,
      s0: f.strides[0],
      s1: f.strides[1],
      s2: f.strides[2],
    });
  }

  addTensor({ alpha, a, aShape, beta, c, shape }: AddTensorArgs): void {
    const f = broadcastForm(shape, aShape);
    this.#run("add_tensor", broadcast(f.rows, f.cols), {
      alpha,
      a: addr(a),
      beta,
      c: addr(c),
      rows: f.rows,
      d1: f.d1,
      cols: f.cols,
      s0: f.strides[0],
      s1: f.strides[1],
      s2: f.strides[2],
    });
  }

  /** One pass, or two through scratch when a sum is split into chunks. */
  reduceSum({ alpha, x, shape, beta, y, yShape }: ReduceSumArgs): void {
    const form = reduceForm(shape, yShape);
    const plan = form.kind === "rows"
      ? sumRows(form.d0, form.m, form.d2)
      : sumCols(form.d0, form.d1, form.d2);
    const outputs = plan.kind === "rows" ? plan.m : plan.d0 * plan.d2;
    if (outputs === 0) return;
    this.#withScratch(partialBytes(plan), (partials) => {
      const out = { alpha, beta, y: addr(y), partials };
      if (plan.kind === "rows") {
        this.#run("sum_rows", plan.pass1, {
          x: addr(x),
          d0: plan.d0,
          m: plan.m,
          d2: plan.d2,
          rows_per_chunk: plan.rowsPerChunk,
          cols_per_chunk: plan.colsPerChunk,
          chunks2: plan.chunks2,
          ...out,
        });
      } else {
        this.#run("sum_cols", plan.pass1, {
          x: addr(x),
          d0: plan.d0,
          d1: plan.d1,
          d2: plan.d2,
          rows_per_chunk: plan.rowsPerChunk,
          ...out,
        });
      }
      if (plan.pass2 !== null) {
        this.#run("sum_partials", plan.pass2, {
          partials,
          chunks: plan.chunks,
          m: outputs,
          alpha,
          beta,
          y: addr(y),
        });
      }
    });
  }

  scaleShift({ x, y, length, scale, shift }: ScaleShiftArgs): void {
    this.#run("scale_shift", elementwise(length), {
      n: length,
      x: addr(x),
      y: addr(y),
      scale,
      shift,
    });
  }

  unary({ op, x, y, length }: UnaryArgs): void {
    this.#run("unary", elementwise(length), {
      op: opCode(UNARY_OPS, op),
      n: length,
      x: addr(x),
      y: addr(y),
    });
  }

  /**
   * The teacher's EMA and any other list of axpbys: one launch of
   * axpby_many over a cached table of (x, y) columns.
   */
  axpbyMany({ alpha, beta, xs, ys, lengths }: AxpbyManyArgs): void {
    const tensors = tensorCount("axpbyMany", lengths, { xs, ys });
    const plan = multiTensor(lengths);
    if (plan.total === 0) return;
    const table = this.#tables.address(plan.offsets, [
      xs.map((x) => addr(x)),
      ys.map((y) => addr(y)),
    ]);
    this.#run("axpby_many", plan.config, { tensors, table, alpha, beta });
  }

  sgdUpdate(
    { param, grad, momentumBuffer, length, step }: SgdUpdateArgs,
  ): void {
    const mode = sgdMode(momentumBuffer !== null, step);
    this.#run("sgd_update", elementwise(length), {
      n: length,
      param: addr(param),
      grad: addr(grad),
      buf: mode === "plain" || momentumBuffer === null
        ? 0n
        : addr(momentumBuffer),
      ...sgdHyper(mode, step),
    });
  }

  /**
   * An optimiser step over many tensors: one launch of sgd_update_many over
   * a cached table of (param, grad, buf) columns, buf 0 without momentum.
   */
  sgdUpdateMany(a: SgdUpdateManyArgs): void {
    const { params, grads, momentumBuffers: bufs, lengths, step } = a;
    const tensors = tensorCount("sgdUpdateMany", lengths, {
      params,
      grads,
      momentumBuffers: bufs,
    });
    const plan = multiTensor(lengths);
    if (plan.total === 0) return;
    const mode = sgdMode(bufs !== null, step);
    // Gradients move from step to step (see tables.ts): their column is
    // volatile, rewritten in place rather than making a new table.
    const table = this.#tables.address(plan.offsets, [
      params.map((p) => addr(p)),
      grads.map((g) => addr(g)),
      mode === "plain" || bufs === null
        ? new Array<bigint>(tensors).fill(0n)
        : bufs.map((b) => addr(b)),
    ], [GRAD_COLUMN]);
    this.#run("sgd_update_many", plan.config, {
      tensors,
      table,
      ...sgdHyper(mode, step),
    });
  }

  /**
   * Three passes, the norms staying on the device: partial sums of squares,
   * one block turning them into the rate (or "leave it"), then the update.
   */
  larsAdapt(a: LarsAdaptArgs): void {
    if (!(a.length > 0)) return; // both norms are 0: nothing changes
    const plan = sumAll(a.length);
    const rateOffset = 2 * plan.chunks * DOUBLE;
    this.#withScratch(rateOffset + 2 * DOUBLE, (partials) => {
      const rate = partials + BigInt(rateOffset);
      this.#run("sum_squares2", plan.pass1, {
        n: a.length,
        a: addr(a.param),
        b: addr(a.grad),
        partials,
      });
      this.#run("lars_rate", plan.pass2, {
        partials,
        chunks: plan.chunks,
        trust: a.trust,
        weight_decay: a.weightDecay,
        eps: a.eps,
        rate,
      });
      this.#run("lars_apply", elementwise(a.length), {
        n: a.length,
        rate,
        weight_decay: a.weightDecay,
        param: addr(a.param),
        grad: addr(a.grad),
      });
    });
  }

  l2NormalizeForward(a: L2NormalizeForwardArgs): void {
    this.#run("l2_normalize_forward", rows(a.rows, a.cols), {
      x: addr(a.x),
      y: addr(a.y),
      norms: addr(a.norms),
      rows: a.rows,
      cols: a.cols,
      eps: a.eps,
    });
  }

  l2NormalizeBackward(a: L2NormalizeBackwardArgs): void {
    this.#run("l2_normalize_backward", rows(a.rows, a.cols), {
      y: addr(a.y),
      norms: addr(a.norms),
      dy: addr(a.dy),
      dx: addr(a.dx),
      rows: a.rows,
      cols: a.cols,
      eps: a.eps,
    });
  }

  softmaxCrossEntropyForward(a: SoftmaxCrossEntropyForwardArgs): void {
    this.#run("softmax_cross_entropy_forward", rows(a.rows, a.cols), {
      logits: addr(a.logits),
      labels: addr(a.labels),
      probs: addr(a.probs),
      losses: addr(a.losses),
      rows: a.rows,
      cols: a.cols,
    });
  }

  softmaxCrossEntropyBackward(a: SoftmaxCrossEntropyBackwardArgs): void {
    this.#run("softmax_cross_entropy_backward", rows(a.rows, a.cols), {
      probs: addr(a.probs),
      labels: addr(a.labels),
      d_losses: addr(a.dLosses),
      dx: addr(a.dx),
      rows: a.rows,
      cols: a.cols,
    });
  }
}
