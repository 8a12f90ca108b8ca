/**
 * What NVIDIA's real libraries answer without a GPU: versions (checked
 * against the headers of the same wheels), error strings, every cuDNN
 * descriptor ResNet-50 needs read back through cuDNN's own getters, NVRTC
 * compiling to CUBIN for sm_80 and sm_90, the row-major to column-major
 * GEMM mapping, and the error paths of handle creation.
 */

import {
  type ColumnMajorCall,
  columnMajorGemm,
  CublasHandle,
  cublasStatusString,
  cublasVersion,
  OP_T,
} from "../cuda/cublas.ts";
import * as dnn from "../cuda/cudnn.ts";
import { CudaError } from "../cuda/ffi.ts";
import {
  NcclComm,
  ncclStatusString,
  ncclVersion,
  uniqueId,
} from "../cuda/nccl.ts";
import {
  compile,
  CompileError,
  nvrtcStatusString,
  nvrtcVersion,
  supportedArchs,
} from "../cuda/nvrtc.ts";
import { CpuBackend } from "../cpu/mod.ts";
import { resnet50Network } from "../bench/conv_shapes.ts";
import { convDesc } from "../nn/ops/conv.ts";
import { poolDesc } from "../nn/ops/pool.ts";
import { Generator } from "../nn/random.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import {
  hasDriver,
  includeFolders,
  librariesMissing,
  noteSkipped,
} from "./cuda_env.ts";

const missing = librariesMissing();
if (missing) noteSkipped("NVIDIA libraries without a GPU", missing);
const ignore = missing !== null;

/** `#define NAME value` from a header in the include folders. */
function headerDefine(header: string, name: string): number {
  for (const folder of includeFolders) {
    try {
      const text = Deno.readTextFileSync(`${folder}/${header}`);
      const m = new RegExp(`#define ${name}\\s+(\\d+)`).exec(text);
      if (m) return Number(m[1]);
    } catch {
      // not in this folder
    }
  }
  throw new Error(`${name} not found in ${header}`);
}

const hasHeader = (h: string) =>
  includeFolders.some((f) => {
    try {
      return Deno.statSync(`${f}/${h}`).isFile;
    } catch {
      return false;
    }
  });

Deno.test({
  name: "library versions equal the version macros of their own headers",
  ignore: ignore || !hasHeader("cudnn_version.h") || !hasHeader("nccl.h") ||
    !hasHeader("cublas_api.h"),
  fn() {
    const v = (h: string, ...names: string[]) =>
      names.map((n) => headerDefine(h, n)).join(".");
    assert.equal(
      cublasVersion(),
      v(
        "cublas_api.h",
        "CUBLAS_VER_MAJOR",
        "CUBLAS_VER_MINOR",
        "CUBLAS_VER_PATCH",
      ),
    );
    assert.equal(
      dnn.cudnnVersion(),
      v("cudnn_version.h", "CUDNN_MAJOR", "CUDNN_MINOR", "CUDNN_PATCHLEVEL"),
    );
    assert.equal(
      ncclVersion(),
      v("nccl.h", "NCCL_MAJOR", "NCCL_MINOR", "NCCL_PATCH"),
    );
    assert.match(nvrtcVersion(), /^1[2-9]\.\d+$/);
  },
});

Deno.test({
  name: "each library's error strings come from the library itself",
  ignore,
  fn() {
    assert.match(
      cublasStatusString(1),
      /^CUBLAS_STATUS_NOT_INITIALIZED \(.+\)$/,
    );
    assert.match(cublasStatusString(99), /unrecognized|unknown/i);
    assert.match(dnn.cudnnStatusString(2000), /^CUDNN_STATUS_BAD_PARAM/);
    assert.equal(nvrtcStatusString(6), "NVRTC_ERROR_COMPILATION");
    assert.match(ncclStatusString(1), /unhandled cuda error/i);
  },
});

Deno.test({
  name:
    "NVRTC compiles a kernel to CUBIN for sm_80 and sm_90, and to PTX only for compute_90",
  ignore,
  fn() {
    assert.ok(supportedArchs().includes(80) && supportedArchs().includes(90));
    const src =
      `extern "C" __global__ void saxpy(float a, const float* x, float* y, int n) {
      int i = blockIdx.x * blockDim.x + threadIdx.x;
      if (i < n) y[i] = a * x[i] + y[i];
    }`;
    for (const arch of ["sm_80", "sm_90"]) {
      const k = compile(src, { arch, options: ["--std=c++17"] });
      assert.deepEqual(
        [...k.cubin.subarray(0, 4)],
        [0x7f, 0x45, 0x4c, 0x46],
        "an ELF image",
      );
      assert.ok(
        k.cubin.length > 1000,
        `${arch} CUBIN of ${k.cubin.length} bytes`,
      );
      assert.match(k.ptx, new RegExp(`\\.target ${arch}\\b`));
      assert.match(k.ptx, /\.visible \.entry saxpy\(/);
    }
    const virtual = compile(src, { arch: "compute_90" });
    assert.equal(virtual.cubin.length, 0);
    assert.match(virtual.ptx, /\.target sm_90/);
  },
});

Deno.test({
  name: "NVRTC reports resource usage and lowers template names",
  ignore,
  fn() {
    const k = compile(
      `template <typename T> __global__ void scale(T* x, T a, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= a; }
       template __global__ void scale<float>(float*, float, int);`,
      {
        arch: "sm_90",
        options: ["--ptxas-options=-v"],
        nameExpressions: ["scale<float>"],
      },
    );
    assert.equal(k.lowered.get("scale<float>"), "_Z5scaleIfEvPT_S0_i");
    assert.match(k.log, /Used \d+ registers/);
  },
});

Deno.test({
  name: "a kernel with an error throws the compiler's log",
  ignore,
  fn() {
    let caught: unknown;
    try {
      compile(
        `extern "C" __global__ void k(float* x) { x[0] = undefined_thing; }`,
        {
          name: "broken.cu",
          arch: "sm_90",
        },
      );
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof CompileError, String(caught));
    assert.equal(caught.status, 6);
    assert.match(
      caught.log,
      /broken\.cu\(1\): error: identifier "undefined_thing" is undefined/,
    );
    // The first line alone (what the tools print) names the error.
    assert.match(
      caught.message.split("\n")[0],
      /NVRTC_ERROR_COMPILATION.*undefined_thing/,
    );
  },
});

/** Every distinct convolution of torchvision's ResNet-50 at 224 px, as conv2d takes it. */
function resnet50Convs(
  n: number,
): { x: number[]; w: number[]; stride: number; padding: number }[] {
  return resnet50Network(n).map(({ shape: { desc: d } }) => ({
    x: [d.n, d.c, d.h, d.w],
    w: [d.k, d.c, d.r, d.s],
    stride: d.strideH,
    padding: d.padH,
  }));
}

/** Shapes where an off-by-one in the output size would show. */
const AWKWARD = [
  { x: [3, 3, 225, 223], w: [64, 3, 7, 7], stride: 2, padding: 3 },
  { x: [2, 8, 1, 1], w: [4, 8, 3, 3], stride: 2, padding: 1 },
  { x: [1, 16, 7, 7], w: [32, 16, 1, 1], stride: 2, padding: 0 },
  { x: [5, 3, 28, 28], w: [16, 3, 3, 3], stride: 1, padding: 1 },
  { x: [2, 4, 9, 6], w: [6, 4, 3, 5], stride: [2, 1], padding: [1, 2] },
] as {
  x: number[];
  w: number[];
  stride: number | [number, number];
  padding: number | [number, number];
}[];

Deno.test({
  name:
    "cuDNN computes the output size of every ResNet-50 and awkward convolution as conv2d does",
  ignore,
  fn() {
    const shapes = [...resnet50Convs(8), ...AWKWARD];
    const layers = resnet50Network(1).reduce((t, l) => t + l.count, 0);
    assert.equal(layers, 53, "ResNet-50 has 53 convolutions");
    for (const { x, w, stride, padding } of shapes) {
      const d = convDesc(x, w, { stride, padding });
      using xd = dnn.TensorDescriptor.nchw(d.n, d.c, d.h, d.w);
      using wd = new dnn.FilterDescriptor(d.k, d.c, d.r, d.s);
      using cd = new dnn.ConvolutionDescriptor(
        d.padH,
        d.padW,
        d.strideH,
        d.strideW,
      );
      const where = `x ${x} w ${w} stride ${stride} pad ${padding}`;
      assert.deepEqual(cd.outputDim(xd, wd), [d.n, d.k, d.oh, d.ow], where);
      assert.deepEqual(wd.get(), {
        dataType: dnn.DATA_FLOAT,
        format: dnn.TENSOR_NCHW,
        dims: w,
      }, where);
      assert.deepEqual(cd.get(), {
        padH: d.padH,
        padW: d.padW,
        strideH: d.strideH,
        strideW: d.strideW,
        dilationH: 1,
        dilationW: 1,
        mode: dnn.CROSS_CORRELATION,
        computeType: dnn.DATA_FLOAT,
      }, where);
      assert.equal(wd.sizeInBytes(), 4 * w.reduce((a, b) => a * b));
      cd.setMathType(dnn.FMA_MATH);
      assert.equal(cd.mathType(), dnn.FMA_MATH);
    }
  },
});

Deno.test({
  name: "cuDNN computes max-pool output sizes as maxPool2d does",
  ignore,
  fn() {
    const cases = [
      { x: [8, 64, 112, 112], kernelSize: 3, stride: 2, padding: 1 }, // ResNet's stem
      { x: [2, 3, 7, 7], kernelSize: 2, stride: 2, padding: 0 },
      { x: [1, 4, 9, 6], kernelSize: 3, stride: 1, padding: 1 },
      { x: [3, 2, 5, 8], kernelSize: [3, 2], stride: [2, 3], padding: [1, 1] },
    ] as {
      x: number[];
      kernelSize: number | [number, number];
      stride: number | [number, number];
      padding: number | [number, number];
    }[];
    for (const { x, ...opts } of cases) {
      const d = poolDesc(x, opts);
      using xd = dnn.TensorDescriptor.nchw(d.n, d.c, d.h, d.w);
      using pd = new dnn.PoolingDescriptor(
        d.kh,
        d.kw,
        d.padH,
        d.padW,
        d.strideH,
        d.strideW,
      );
      assert.deepEqual(
        pd.outputDim(xd),
        [d.n, d.c, d.oh, d.ow],
        `${x} ${JSON.stringify(opts)}`,
      );
      assert.deepEqual(pd.get(), {
        mode: dnn.POOLING_MAX,
        nanPropagation: dnn.PROPAGATE_NAN,
        kh: d.kh,
        kw: d.kw,
        padH: d.padH,
        padW: d.padW,
        strideH: d.strideH,
        strideW: d.strideW,
      });
    }
  },
});

Deno.test({
  name:
    "cuDNN tensor descriptors read back with NCHW strides, and batch norm's per-channel shape",
  ignore,
  fn() {
    using x = dnn.TensorDescriptor.nchw(8, 3, 224, 224);
    assert.deepEqual(x.get4d(), {
      dataType: dnn.DATA_FLOAT,
      dims: [8, 3, 224, 224],
      strides: [150528, 50176, 224, 1],
    });
    assert.equal(x.sizeInBytes(), 4 * 8 * 3 * 224 * 224);
    using spatial = dnn.deriveBatchNormDescriptor(x, dnn.BATCHNORM_SPATIAL);
    assert.deepEqual(spatial.get4d().dims, [1, 3, 1, 1]);
    // BatchNorm1d on [n, c] is the 4-D tensor n x c x 1 x 1, per activation.
    using flat = dnn.TensorDescriptor.nchw(256, 2048, 1, 1);
    assert.deepEqual(flat.get4d().strides, [2048, 1, 1, 1]);
    using perActivation = dnn.deriveBatchNormDescriptor(
      flat,
      dnn.BATCHNORM_PER_ACTIVATION,
    );
    assert.deepEqual(perActivation.get4d().dims, [1, 2048, 1, 1]);
    // The 3-D broadcast form of the elementwise ops, as an Nd descriptor.
    using nd = new dnn.TensorDescriptor();
    nd.setNd([4, 5, 6], [30, 6, 1]);
    assert.deepEqual(nd.getNd(), {
      dataType: dnn.DATA_FLOAT,
      dims: [4, 5, 6],
      strides: [30, 6, 1],
    });
  },
});

Deno.test({
  name: "cuDNN's other descriptors hold what was set",
  ignore,
  fn() {
    using act = new dnn.ActivationDescriptor();
    assert.deepEqual(act.get(), {
      mode: dnn.ACTIVATION_RELU,
      nanPropagation: dnn.PROPAGATE_NAN,
      coef: 0,
    });
    for (const [name, op] of Object.entries(dnn.OP_TENSOR)) {
      using d = new dnn.OpTensorDescriptor(op);
      assert.deepEqual(d.get(), {
        op,
        computeType: dnn.DATA_FLOAT,
        nanPropagation: dnn.PROPAGATE_NAN,
      }, name);
    }
    using red = new dnn.ReduceTensorDescriptor();
    assert.deepEqual(red.get(), {
      op: dnn.REDUCE_ADD,
      computeType: dnn.DATA_FLOAT,
      nanPropagation: dnn.PROPAGATE_NAN,
      indices: dnn.REDUCE_NO_INDICES,
      indicesType: dnn.INDICES_32BIT,
    });
  },
});

Deno.test({
  name: "cuDNN rejects a bad descriptor on the host with its own message",
  ignore,
  fn() {
    using x = new dnn.TensorDescriptor();
    assertThrows(
      () => x.set4d(0, 3, 8, 8),
      /cudnnSetTensor4dDescriptor failed with CUDNN_STATUS_BAD_PARAM/,
    );
    using x2 = dnn.TensorDescriptor.nchw(1, 3, 8, 8);
    using w = new dnn.FilterDescriptor(4, 5, 3, 3); // 5 input channels, x has 3
    using c = new dnn.ConvolutionDescriptor(1, 1, 1, 1);
    assertThrows(
      () => c.outputDim(x2, w),
      /cudnnGetConvolution2dForwardOutputDim failed with CUDNN_STATUS_BAD_PARAM/,
    );
  },
});

/**
 * `C = alpha op(A) op(B) + beta C` exactly as cuBLAS defines it
 * (column-major), for each product of a strided batch.
 */
function columnMajorRef(
  g: ColumnMajorCall<Float64Array>,
  count: number,
  alpha: number,
  beta: number,
  c: Float64Array,
): void {
  const [a, b] = [g.A, g.B];
  for (let t = 0; t < count; t++) {
    const [ao, bo, co] = [
      g.a + t * g.strideA,
      g.b + t * g.strideB,
      g.c + t * g.strideC,
    ];
    const A = (i: number, p: number) =>
      g.transa === OP_T ? a[ao + p + i * g.lda] : a[ao + i + p * g.lda];
    const B = (p: number, j: number) =>
      g.transb === OP_T ? b[bo + j + p * g.ldb] : b[bo + p + j * g.ldb];
    for (let j = 0; j < g.n; j++) {
      for (let i = 0; i < g.m; i++) {
        let s = 0;
        for (let p = 0; p < g.k; p++) s += A(i, p) * B(p, j);
        const at = co + i + j * g.ldc;
        c[at] = alpha * s + beta * c[at];
      }
    }
  }
}

const TRANSPOSES = [[false, false], [true, false], [false, true], [true, true]];

Deno.test("columnMajorGemm makes cuBLAS compute the row-major products the CPU backend computes", () => {
  const gen = new Generator(7);
  const cpu = new CpuBackend();
  for (const [transA, transB] of TRANSPOSES) {
    const [m, n, k, count] = [5, 7, 3, 3];
    // Padded leading dimensions, offsets and strides, so that a swapped
    // ld, offset or stride shows.
    const lda = (transA ? m : k) + 2;
    const ldb = (transB ? k : n) + 1;
    const ldc = n + 3;
    const [aOffset, bOffset, cOffset] = [4, 2, 5];
    const batch = {
      count,
      strideA: lda * (transA ? k : m) + 1,
      strideB: ldb * (transB ? n : k) + 3,
      strideC: ldc * m + 2,
    };
    const a = randomValues(gen, aOffset + batch.strideA * count);
    const b = randomValues(gen, bOffset + batch.strideB * count);
    const c0 = randomValues(gen, cOffset + batch.strideC * count);
    const [alpha, beta] = [0.75, -0.5];
    const rm = {
      transA,
      transB,
      m,
      n,
      k,
      aOffset,
      lda,
      bOffset,
      ldb,
      cOffset,
      ldc,
    };

    const viaCublas = Float64Array.from(c0);
    columnMajorRef(
      columnMajorGemm(rm, a, b, batch),
      count,
      alpha,
      beta,
      viaCublas,
    );

    const [ab, bb, cb] = [a, b, c0].map((v) => {
      const buf = cpu.alloc(v.length);
      cpu.write(buf, Float32Array.from(v));
      return buf;
    });
    for (let t = 0; t < count; t++) {
      cpu.gemm({
        ...rm,
        aOffset: aOffset + t * batch.strideA,
        bOffset: bOffset + t * batch.strideB,
        cOffset: cOffset + t * batch.strideC,
        alpha,
        beta,
        a: ab,
        b: bb,
        c: cb,
      });
    }
    // float32 OpenBLAS against a float64 reference: a few ulps of 3 terms.
    assertClose(cpu.read(cb), viaCublas, `transA ${transA} transB ${transB}`);
    for (const buf of [ab, bb, cb]) cpu.free(buf);
  }
});

Deno.test({
  name:
    "without a GPU, handle creation fails with NVIDIA's own status and message",
  ignore: ignore || hasDriver(),
  fn() {
    let caught: unknown;
    try {
      new CublasHandle(null);
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof CudaError);
    assert.equal(caught.call, "cublasCreate_v2");
    assert.match(
      caught.message,
      /^cuBLAS: cublasCreate_v2 failed with CUBLAS_STATUS_NOT_INITIALIZED/,
    );

    assertThrows(
      () => new dnn.CudnnHandle(null),
      /^cuDNN: cudnnCreate failed with CUDNN_STATUS_NOT_INITIALIZED: .*cudaGetDeviceCount/,
    );

    const id = uniqueId();
    assert.equal(id.length, 128);
    assert.ok(id.some((v) => v !== 0), "ncclGetUniqueId filled the id");
    assertThrows(
      () => NcclComm.initRank(1, id, 0),
      /^NCCL: ncclCommInitRank failed with .*unhandled cuda error/i,
    );
  },
});
