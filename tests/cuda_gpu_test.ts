/**
 * The bindings on a real GPU: driver memory and copies, a kernel compiled by
 * NVRTC for the GPU's own architecture and launched, cuBLAS SGEMM, a cuDNN
 * convolution and batch norm, events, and a one-GPU NCCL all-reduce, each
 * checked against a float64 reference on the host. Skipped, with one line,
 * on a machine without a usable GPU.
 */

import { CublasHandle } from "../cuda/cublas.ts";
import * as dnn from "../cuda/cudnn.ts";
import { listGpus, openGpu } from "../cuda/device.ts";
import * as cu from "../cuda/driver.ts";
import { NcclComm, SUM } from "../cuda/nccl.ts";
import { compile } from "../cuda/nvrtc.ts";
import { Generator } from "../nn/random.ts";
import { assert } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import { librariesMissing, noteSkipped } from "./cuda_env.ts";
import { batchNormRef, conv2dRef, matmulRef } from "./reference.ts";

function gpuProblem(): string | null {
  try {
    listGpus();
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
  return librariesMissing();
}

const problem = gpuProblem();
if (problem) noteSkipped("on a GPU", problem);
const ignore = problem !== null;

let gpu: ReturnType<typeof setup> | null = null;

function setup() {
  const opened = openGpu(0);
  const stream = cu.streamCreate();
  return { opened, stream, arch: `sm_${opened.info.capability.join("")}` };
}

function ctx() {
  gpu ??= setup();
  return gpu;
}

/** A device copy of host values (float32). */
function upload(values: ArrayLike<number>): bigint {
  const host = Float32Array.from(values);
  const d = cu.memAlloc(host.byteLength);
  cu.copyHostToDevice(d, host, host.byteLength);
  return d;
}

function download(d: bigint, length: number): Float32Array {
  const host = new Float32Array(length);
  cu.streamSynchronize(ctx().stream);
  cu.copyDeviceToHost(host, d, host.byteLength);
  return host;
}

Deno.test({
  name:
    "GPU: memory round-trips through the device, and memset fills 32-bit words",
  ignore,
  fn() {
    const { stream } = ctx();
    const values = Float32Array.from({ length: 1000 }, (_, i) => i * 0.5 - 7);
    const d = upload(values);
    assert.deepEqual([...download(d, values.length)], [...values]);
    cu.memsetD32Async(
      d,
      new Uint32Array(new Float32Array([2.5]).buffer)[0],
      10,
      stream,
    );
    const back = download(d, values.length);
    assert.deepEqual([...back.subarray(0, 11)], [
      ...new Array(10).fill(2.5),
      values[10],
    ]);
    const info = cu.memoryInfo();
    assert.ok(info.free > 0 && info.total >= info.free);
    cu.memFree(d);
  },
});

Deno.test({
  name: "GPU: a kernel compiled by NVRTC for this GPU runs, timed by events",
  ignore,
  fn() {
    const { stream, arch } = ctx();
    const k = compile(
      `extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) y[i] = a * x[i] + y[i]; }`,
      { arch },
    );
    const module = cu.moduleLoadData(k.cubin);
    const fn = cu.moduleGetFunction(module, "saxpy");
    const n = 100_003;
    const gen = new Generator(1);
    const x = randomValues(gen, n);
    const y = randomValues(gen, n);
    const [dx, dy] = [upload(x), upload(y)];
    const [start, end] = [cu.eventCreate(), cu.eventCreate()];
    cu.eventRecord(start, stream);
    cu.launchKernel(fn, [Math.ceil(n / 256), 1, 1], [256, 1, 1], 0, stream, [
      new Float32Array([3]),
      new BigUint64Array([dx]),
      new BigUint64Array([dy]),
      new Int32Array([n]),
    ]);
    cu.eventRecord(end, stream);
    cu.eventSynchronize(end);
    assert.ok(cu.eventElapsedMs(start, end) >= 0);
    const expected = Float64Array.from(
      y,
      (v, i) => Math.fround(Math.fround(3 * x[i]) + v),
    );
    assertClose(download(dy, n), expected, "saxpy", { rtol: 1e-6, atol: 1e-7 });
    for (const e of [start, end]) cu.eventDestroy(e);
    cu.memFree(dx);
    cu.memFree(dy);
    cu.moduleUnload(module);
  },
});

Deno.test({
  name:
    "GPU: cuBLAS computes row-major products, plain and strided-batched, in exact float32",
  ignore,
  fn() {
    const { stream } = ctx();
    using blas = new CublasHandle(stream);
    const gen = new Generator(2);
    const [m, n, k, count] = [33, 17, 65, 3];
    for (
      const [transA, transB] of [[false, false], [true, false], [false, true], [
        true,
        true,
      ]]
    ) {
      const a = randomValues(gen, m * k * count);
      const b = randomValues(gen, k * n * count);
      const [da, db, dc] = [
        upload(a),
        upload(b),
        cu.memAlloc(4 * m * n * count),
      ];
      blas.gemm(
        {
          transA,
          transB,
          m,
          n,
          k,
          aOffset: 0,
          lda: transA ? m : k,
          bOffset: 0,
          ldb: transB ? k : n,
          cOffset: 0,
          ldc: n,
        },
        1,
        da,
        db,
        0,
        dc,
        { count, strideA: m * k, strideB: k * n, strideC: m * n },
      );
      const got = download(dc, m * n * count);
      for (let t = 0; t < count; t++) {
        const ref = matmulRef(
          a.subarray(t * m * k, (t + 1) * m * k),
          transA ? [k, m] : [m, k],
          b.subarray(t * k * n, (t + 1) * k * n),
          transB ? [n, k] : [k, n],
          transA,
          transB,
        );
        assertClose(
          got.subarray(t * m * n, (t + 1) * m * n),
          ref,
          `batch ${t} ${transA} ${transB}`,
        );
      }
      for (const d of [da, db, dc]) cu.memFree(d);
    }
  },
});

Deno.test({
  name:
    "GPU: cuDNN's convolution in all three directions matches the float64 reference",
  ignore,
  fn() {
    const { stream } = ctx();
    using h = new dnn.CudnnHandle(stream);
    const gen = new Generator(3);
    const [n, c, hh, ww, k, r, s, stride, pad] = [2, 5, 11, 9, 6, 3, 3, 2, 1];
    const oh = Math.floor((hh + 2 * pad - r) / stride) + 1;
    const ow = Math.floor((ww + 2 * pad - s) / stride) + 1;
    const d: dnn.ConvDescriptors = {
      x: dnn.TensorDescriptor.nchw(n, c, hh, ww),
      w: new dnn.FilterDescriptor(k, c, r, s),
      conv: new dnn.ConvolutionDescriptor(pad, pad, stride, stride),
      y: dnn.TensorDescriptor.nchw(n, k, oh, ow),
    };
    d.conv.setMathType(dnn.FMA_MATH);
    const x = randomValues(gen, n * c * hh * ww);
    const w = randomValues(gen, k * c * r * s);
    const dyv = randomValues(gen, n * k * oh * ow);
    const [dx, dw, dy] = [upload(x), upload(w), upload(dyv)];
    const y = cu.memAlloc(4 * n * k * oh * ow);
    const gx = cu.memAlloc(4 * x.length);
    const gw = cu.memAlloc(4 * w.length);
    const ws = cu.memAlloc(64 << 20);
    const fwd = h.findAlgorithms("forward", d, dx, dw, y, ws, 64 << 20).find((
      p,
    ) => p.status === 0)!;
    h.convolutionForward(d, fwd.algo, dx, dw, y, ws, 64 << 20);
    const desc = {
      n,
      c,
      h: hh,
      w: ww,
      k,
      r,
      s,
      stride: [stride, stride] as [number, number],
      pad: [pad, pad] as [number, number],
    };
    assertClose(
      download(y, n * k * oh * ow),
      conv2dRef(x, w, null, desc),
      "forward",
    );
    const bd = h.algorithms("backwardData", d).find((p) =>
      p.status === 0 && p.determinism === dnn.DETERMINISTIC
    )!;
    h.convolutionBackwardData(d, bd.algo, dw, dy, gx, ws, 64 << 20);
    const bf = h.algorithms("backwardFilter", d).find((p) =>
      p.status === 0 && p.determinism === dnn.DETERMINISTIC
    )!;
    h.convolutionBackwardFilter(d, bf.algo, dx, dy, gw, ws, 64 << 20);
    // Gradients by the adjoint identity: <conv(x), dy> = <x, dx> = <w, dw>.
    const dot = (p: ArrayLike<number>, q: ArrayLike<number>) => {
      let t = 0;
      for (let i = 0; i < p.length; i++) t += p[i] * q[i];
      return t;
    };
    const yRef = conv2dRef(x, w, null, desc);
    const target = dot(yRef, dyv);
    assertClose([dot(x, download(gx, x.length))], [target], "backward data", {
      rtol: 1e-4,
    });
    assertClose([dot(w, download(gw, w.length))], [target], "backward filter", {
      rtol: 1e-4,
    });
    for (const p of [dx, dw, dy, y, gx, gw, ws]) cu.memFree(p);
    d.x.dispose();
    d.w.dispose();
    d.conv.dispose();
    d.y.dispose();
  },
});

Deno.test({
  name:
    "GPU: cuDNN batch norm normalises with the biased variance and keeps the unbiased one",
  ignore,
  fn() {
    const { stream } = ctx();
    using h = new dnn.CudnnHandle(stream);
    const gen = new Generator(4);
    const [n, c, sp] = [4, 3, 5];
    const x = randomValues(gen, n * c * sp, -2, 3);
    using xd = dnn.TensorDescriptor.nchw(n, c, sp, 1);
    using bn = dnn.deriveBatchNormDescriptor(xd, dnn.BATCHNORM_SPATIAL);
    const [dx, scale, bias] = [upload(x), upload([1, 1, 1]), upload([0, 0, 0])];
    const [rm, rv] = [upload([0, 0, 0]), upload([1, 1, 1])];
    const [y, sm, si] = [
      cu.memAlloc(4 * x.length),
      cu.memAlloc(12),
      cu.memAlloc(12),
    ];
    h.batchNormForwardTraining(
      dnn.BATCHNORM_SPATIAL,
      xd,
      dx,
      y,
      bn,
      scale,
      bias,
      1,
      rm,
      rv,
      1e-5,
      sm,
      si,
    );
    const ref = batchNormRef(x, [n, c, sp], null, null, 1e-5, null);
    assertClose(download(y, x.length), ref.y, "y");
    assertClose(download(sm, c), ref.mean, "saved mean");
    // With factor 1 the running variance is the batch's own estimate, which
    // PyTorch (running cuDNN underneath) keeps unbiased.
    const unbiased = Float64Array.from(
      ref.variance,
      (v) => v * (n * sp) / (n * sp - 1),
    );
    assertClose(download(rv, c), unbiased, "running variance");
    for (const p of [dx, scale, bias, rm, rv, y, sm, si]) cu.memFree(p);
  },
});

Deno.test({
  name: "GPU: NCCL all-reduces on one GPU through a one-rank communicator",
  ignore,
  fn() {
    const { stream } = ctx();
    const [comm] = NcclComm.initAll([0]);
    assert.equal(comm.count, 1);
    assert.equal(comm.rank, 0);
    const values = [1, 2, 3, 4.5];
    const [send, recv] = [upload(values), cu.memAlloc(16)];
    comm.allReduce(send, recv, 4, SUM, stream);
    assert.deepEqual([...download(recv, 4)], values);
    comm.checkAsync();
    comm.destroy();
    cu.memFree(send);
    cu.memFree(recv);
  },
});
