/**
 * The CUDA backend: every op of nn/backend.ts on one GPU's memory.
 *
 * - memory: a caching allocator (cuda/allocator.ts) over `cuMemAlloc`, one
 *   non-blocking stream for all work, pinned staging buffers for `write` and
 *   `read` (cuda/staging.ts): the host touches device data only there;
 * - GEMM on cuBLAS (row-major mapped onto column-major), exact float32
 *   unless TF32 is asked for;
 * - convolution, batch norm, ReLU and max pooling on cuDNN, one plan per
 *   shape (cuda/conv.ts, cuda/descriptors.ts);
 * - everything else in CUDA C kernels compiled by NVRTC (cuda/kernels/),
 *   the optimiser step and the teacher's EMA as one launch each over all
 *   tensors, with their table of tensors kept on the device.
 *
 * No op synchronises with the host: only `read` and `synchronize` wait.
 * Every op runs on the one stream, in the order it was called, so a buffer
 * freed after its last use can be handed out again at once.
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
  BackendOptions,
  BatchNormBackwardArgs,
  BatchNormDesc,
  BatchNormForwardInferenceArgs,
  BatchNormForwardTrainingArgs,
  ConvBackwardDataArgs,
  ConvBackwardFilterArgs,
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
  SgdUpdateArgs,
  SgdUpdateManyArgs,
  SoftmaxCrossEntropyBackwardArgs,
  SoftmaxCrossEntropyForwardArgs,
  UnaryArgs,
} from "../nn/backend.ts";
import { CachingAllocator, driverMemory } from "./allocator.ts";
import { addr, type Block, CudaBuffer, cudaBuffer } from "./buffer.ts";
import {
  type ConvBuffers,
  convKey,
  type ConvMode,
  ConvPlan,
  type Workspace,
} from "./conv.ts";
import { CublasHandle } from "./cublas.ts";
import {
  ActivationDescriptor,
  BATCHNORM_SPATIAL,
  type ConvDirection,
  CudnnHandle,
  type TensorDescriptor,
} from "./cudnn.ts";
import {
  type BatchNormDescriptors,
  batchNormDescriptors,
  DescriptorCache,
  flatDescriptor,
  type PoolDescriptors,
  poolDescriptors,
} from "./descriptors.ts";
import type { OpenedGpu } from "./device.ts";
import * as cu from "./driver.ts";
import { Kernels } from "./kernels/mod.ts";
import { driverStaging, Staging } from "./staging.ts";

/** Per-channel constants cuDNN's batch norm needs where nn passes null. */
interface ChannelConstants {
  ones: CudaBuffer;
  zeros: CudaBuffer;
}

export class CudaBackend implements Backend {
  readonly name: string;
  readonly gpu: OpenedGpu;
  readonly stream: Deno.PointerValue;
  readonly #allocator = new CachingAllocator(driverMemory());
  readonly #staging: Staging;
  readonly #blas: CublasHandle;
  readonly #dnn: CudnnHandle;
  readonly #kernels: Kernels;
  readonly #relu = new ActivationDescriptor();
  #mode: ConvMode = { deterministic: false, tf32: false };
  readonly #convs = new DescriptorCache<ConvShape, ConvPlan>(
    ({ d, mode }) => new ConvPlan(d, mode),
    ({ d, mode }) => convKey(d, mode),
  );
  readonly #pools = new DescriptorCache<PoolDesc, PoolDescriptors>(
    poolDescriptors,
  );
  readonly #norms = new DescriptorCache<BatchNormDesc, BatchNormDescriptors>(
    batchNormDescriptors,
    (d) => `${d.n},${d.c},${d.spatial}`,
  );
  readonly #flats = new DescriptorCache<number, TensorDescriptor>(
    flatDescriptor,
    String,
  );
  readonly #channels = new Map<number, ChannelConstants>();
  /** Blocks lent as workspace and scratch, by address, until freed. */
  readonly #lent = new Map<bigint, Block>();
  readonly #workspace: Workspace = {
    alloc: (bytes) => {
      const block = this.#allocator.alloc(bytes);
      this.#lent.set(block.address, block);
      return block.address;
    },
    free: (address) => {
      const block = this.#lent.get(address);
      if (block === undefined) {
        throw new Error(`workspace at ${address} was not lent`);
      }
      this.#lent.delete(address);
      this.#allocator.free(block);
    },
  };

  constructor(name: string, gpu: OpenedGpu) {
    this.name = name;
    this.gpu = gpu;
    this.stream = cu.streamCreate(cu.STREAM_NON_BLOCKING);
    // Staging's waits for the GPU go through #waitForStream and
    // #waitForEvent, so that a host wait (see setHostWait) covers them too.
    this.#staging = new Staging({
      ...driverStaging(),
      streamSynchronize: (stream) => this.#waitForStream(stream),
      eventSynchronize: (event) => this.#waitForEvent(event),
    }, this.stream);
    this.#blas = new CublasHandle(this.stream);
    this.#dnn = new CudnnHandle(this.stream);
    this.#kernels = Kernels.load({
      arch: `sm_${gpu.info.capability.join("")}`,
      stream: this.stream,
      scratch: this.#workspace,
      upload: (address, data) => this.#staging.write(address, data),
    });
  }

  /**
   * TF32 for GEMM and convolutions (off: exact float32, PyTorch's default
   * for matmul); deterministic convolution algorithms (on: two runs compute
   * the same bits, so `--resume` is exact).
   */
  configure(options: BackendOptions): void {
    const mode = {
      tf32: options.tf32 ?? this.#mode.tf32,
      deterministic: options.deterministic ?? this.#mode.deterministic,
    };
    this.#blas.setTf32(mode.tf32);
    this.#mode = mode;
  }

  // --- memory ---------------------------------------------------------------

  alloc(length: number): DataBuffer {
    return new CudaBuffer(this.name, length, this.#allocator.alloc(length * 4));
  }

  free(buffer: DataBuffer): void {
    this.#allocator.free(cudaBuffer(buffer).block);
  }

  write(buffer: DataBuffer, data: Float32Array, offset = 0): void {
    this.#staging.write(addr(buffer, offset), data);
  }

  read(buffer: DataBuffer, offset = 0, length?: number): Float32Array {
    return this.#staging.read(
      addr(buffer, offset),
      length ?? buffer.length - offset,
    );
  }

  copy(a: CopyArgs): void {
    if (a.length === 0) return;
    cu.copyDeviceToDeviceAsync(
      addr(a.dst, a.dstOffset),
      addr(a.src, a.srcOffset),
      a.length * 4,
      this.stream,
    );
  }

  fill(a: FillArgs): void {
    this.#kernels.fill(a);
  }

  synchronize(): void {
    this.#waitForStream(this.stream);
  }

  /**
   * How the host waits for the GPU's work (in `synchronize` and every read):
   * blocking in the driver (null, the default), or through `wait`, given an
   * event recorded after the work. Data parallelism sets one that polls the
   * event with a deadline and checks NCCL's own errors meanwhile, so that a
   * collective left waiting for a rank that died becomes an error instead of
   * a process that waits for ever.
   */
  setHostWait(wait: ((event: Deno.PointerValue) => void) | null): void {
    this.#hostWait = wait;
  }

  #hostWait: ((event: Deno.PointerValue) => void) | null = null;

  #waitForStream(stream: Deno.PointerValue): void {
    if (this.#hostWait === null) return cu.streamSynchronize(stream);
    const event = cu.eventCreate(cu.EVENT_DISABLE_TIMING);
    try {
      cu.eventRecord(event, stream);
      this.#hostWait(event);
    } finally {
      cu.eventDestroy(event);
    }
  }

  #waitForEvent(event: Deno.PointerValue): void {
    if (this.#hostWait === null) return cu.eventSynchronize(event);
    this.#hostWait(event);
  }

  memory(): MemoryInfo {
    const s = this.#allocator.stats();
    return { allocated: s.allocated, cached: s.cached, peak: s.peakAllocated };
  }

  emptyCache(): void {
    this.#allocator.emptyCache();
  }

  // --- BLAS -----------------------------------------------------------------

  gemm(g: GemmArgs): void {
    this.#blas.gemm(g, g.alpha, addr(g.a), addr(g.b), g.beta, addr(g.c));
  }

  dot(a: DotArgs): void {
    this.#kernels.dot(a);
  }

  axpby(a: AxpbyArgs): void {
    this.#kernels.axpby(a);
  }

  /** One kernel launch for all tensors, over a table cached on the device. */
  axpbyMany(a: AxpbyManyArgs): void {
    this.#kernels.axpbyMany(a);
  }

  // --- convolution ------------------------------------------------------------

  #conv(d: ConvForwardArgs["desc"]): ConvPlan {
    return this.#convs.get({ d, mode: this.#mode });
  }

  /** Runs a cuDNN call with the workspace its algorithm needs. */
  #withWorkspace(bytes: number, run: (ws: bigint) => void): void {
    const ws = this.#workspace.alloc(bytes);
    try {
      run(ws);
    } finally {
      this.#workspace.free(ws);
    }
  }

  /**
   * One direction of a convolution, with buffers by role: x the input (or
   * its gradient), w the filter (or its gradient), y the output (or its
   * gradient), as cuDNN's descriptors name them.
   */
  #convolve(
    d: ConvForwardArgs["desc"],
    dir: ConvDirection,
    b: ConvBuffers,
  ): void {
    const plan = this.#conv(d);
    const p = plan.algorithm(this.#dnn, dir, b, this.#workspace);
    this.#withWorkspace(
      p.memory,
      (ws) => this.#dnn.convolution(dir, plan.desc, p.algo, b, ws, p.memory),
    );
  }

  conv2dForward(a: ConvForwardArgs): void {
    this.#convolve(a.desc, "forward", {
      x: addr(a.x),
      w: addr(a.w),
      y: addr(a.y),
    });
  }

  conv2dBackwardData(a: ConvBackwardDataArgs): void {
    this.#convolve(a.desc, "backwardData", {
      x: addr(a.dx),
      w: addr(a.w),
      y: addr(a.dy),
    });
  }

  conv2dBackwardFilter(a: ConvBackwardFilterArgs): void {
    this.#convolve(a.desc, "backwardFilter", {
      x: addr(a.x),
      w: addr(a.dw),
      y: addr(a.dy),
    });
  }

  // --- batch norm -------------------------------------------------------------

  /** Ones and zeros per channel, for a non-affine norm (cuDNN needs both). */
  #constants(c: number): ChannelConstants {
    let k = this.#channels.get(c);
    if (k === undefined) {
      const ones = this.alloc(c) as CudaBuffer;
      const zeros = this.alloc(c) as CudaBuffer;
      this.fill({ y: ones, value: 1 });
      this.fill({ y: zeros, value: 0 });
      k = { ones, zeros };
      this.#channels.set(c, k);
    }
    return k;
  }

  batchNormForwardTraining(a: BatchNormForwardTrainingArgs): void {
    const d = this.#norms.get(a.desc);
    const k = this.#constants(a.desc.c);
    if ((a.runningMean === null) !== (a.runningVar === null)) {
      throw new RangeError(
        "batch norm: running mean and variance are updated together",
      );
    }
    this.#dnn.batchNormForwardTraining(
      BATCHNORM_SPATIAL,
      d.x,
      addr(a.x),
      addr(a.y),
      d.channels,
      addr(a.scale ?? k.ones),
      addr(a.bias ?? k.zeros),
      // cuDNN's factor is the weight of the new statistic: PyTorch's momentum.
      a.desc.momentum,
      a.runningMean ? addr(a.runningMean) : 0n,
      a.runningVar ? addr(a.runningVar) : 0n,
      a.desc.eps,
      addr(a.saveMean),
      addr(a.saveInvStd),
    );
    // cuDNN fuses the activation (batchNormForwardTrainingEx) for NHWC
    // tensors only; these are NCHW, so the ReLU runs after, in place.
    if (a.relu) {
      const { n, c, spatial } = a.desc;
      this.reluForward({ x: a.y, y: a.y, length: n * c * spatial });
    }
  }

  batchNormForwardInference(a: BatchNormForwardInferenceArgs): void {
    const d = this.#norms.get(a.desc);
    const k = this.#constants(a.desc.c);
    this.#dnn.batchNormForwardInference(
      BATCHNORM_SPATIAL,
      d.x,
      addr(a.x),
      addr(a.y),
      d.channels,
      addr(a.scale ?? k.ones),
      addr(a.bias ?? k.zeros),
      addr(a.estimatedMean),
      addr(a.estimatedVariance),
      a.desc.eps,
    );
  }

  batchNormBackward(a: BatchNormBackwardArgs): void {
    if (a.relu) {
      // No reserve is asked for here (no batchNormReluReserve): a caller's
      // ReLU goes through its own backward first.
      const length = a.dy.length;
      const dy = this.alloc(length);
      try {
        this.reluBackward({ y: a.relu.y, dy: a.dy, dx: dy, length });
        this.batchNormBackward({ ...a, dy, relu: undefined });
      } finally {
        this.free(dy);
      }
      return;
    }
    const d = this.#norms.get(a.desc);
    const k = this.#constants(a.desc.c);
    // cuDNN always writes both parameter gradients: scratch for skipped ones.
    const scratch: CudaBuffer[] = [];
    const out = (b: DataBuffer | null) => {
      if (b) return addr(b);
      const s = this.alloc(a.desc.c) as CudaBuffer;
      scratch.push(s);
      return s.address;
    };
    try {
      this.#dnn.batchNormBackward(
        BATCHNORM_SPATIAL,
        d.x,
        addr(a.x),
        addr(a.dy),
        addr(a.dx),
        d.channels,
        addr(a.scale ?? k.ones),
        out(a.dScale),
        out(a.dBias),
        a.desc.eps,
        addr(a.saveMean),
        addr(a.saveInvStd),
      );
    } finally {
      for (const s of scratch) this.free(s);
    }
  }

  // --- activation and pooling -------------------------------------------------

  reluForward(a: ActivationForwardArgs): void {
    if (a.length === 0) return;
    const d = this.#flats.get(a.length);
    this.#dnn.activationForward(this.#relu, d, addr(a.x), addr(a.y));
  }

  reluBackward(a: ActivationBackwardArgs): void {
    if (a.length === 0) return;
    const d = this.#flats.get(a.length);
    // ReLU's gradient depends only on the sign, the same in y as in x.
    const y = addr(a.y);
    this.#dnn.activationBackward(this.#relu, d, y, addr(a.dy), y, addr(a.dx));
  }

  maxPoolForward(a: PoolForwardArgs): void {
    const d = this.#pools.get(a.desc);
    this.#dnn.poolingForward(d.pool, d.x, addr(a.x), d.y, addr(a.y));
  }

  maxPoolBackward(a: PoolBackwardArgs): void {
    const d = this.#pools.get(a.desc);
    this.#dnn.poolingBackward(
      d.pool,
      d.y,
      addr(a.y),
      addr(a.dy),
      d.x,
      addr(a.x),
      addr(a.dx),
    );
  }

  // --- elementwise, reductions, optimisers, fused rows -------------------------

  opTensor(a: OpTensorArgs): void {
    this.#kernels.opTensor(a);
    if (a.relu) {
      const length = a.shape[0] * a.shape[1] * a.shape[2];
      this.reluForward({ x: a.c, y: a.c, length });
    }
  }

  addTensor(a: AddTensorArgs): void {
    this.#kernels.addTensor(a);
  }

  reduceSum(a: ReduceSumArgs): void {
    this.#kernels.reduceSum(a);
  }

  scaleShift(a: ScaleShiftArgs): void {
    this.#kernels.scaleShift(a);
  }

  unary(a: UnaryArgs): void {
    this.#kernels.unary(a);
  }

  sgdUpdate(a: SgdUpdateArgs): void {
    this.#kernels.sgdUpdate(a);
  }

  /** One kernel launch for all tensors, over a table cached on the device. */
  sgdUpdateMany(a: SgdUpdateManyArgs): void {
    this.#kernels.sgdUpdateMany(a);
  }

  larsAdapt(a: LarsAdaptArgs): void {
    this.#kernels.larsAdapt(a);
  }

  l2NormalizeForward(a: L2NormalizeForwardArgs): void {
    this.#kernels.l2NormalizeForward(a);
  }

  l2NormalizeBackward(a: L2NormalizeBackwardArgs): void {
    this.#kernels.l2NormalizeBackward(a);
  }

  softmaxCrossEntropyForward(a: SoftmaxCrossEntropyForwardArgs): void {
    this.#kernels.softmaxCrossEntropyForward(a);
  }

  softmaxCrossEntropyBackward(a: SoftmaxCrossEntropyBackwardArgs): void {
    this.#kernels.softmaxCrossEntropyBackward(a);
  }
}

/** A convolution shape with the mode its algorithms are chosen in. */
interface ConvShape {
  d: ConvForwardArgs["desc"];
  mode: ConvMode;
}
