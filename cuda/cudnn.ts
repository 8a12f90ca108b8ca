/**
 * cuDNN 9 (`libcudnn.so.9`) through its legacy ("v7-style") API: tensor,
 * filter, convolution, pooling, activation, op-tensor and reduce
 * descriptors; convolution forward, backward-data and backward-filter with
 * algorithm search and workspace sizes; batch norm for training, inference
 * and backward (with the `...Ex` forms that fuse an activation); pooling,
 * activation, op-tensor, add-tensor and reduce.
 *
 * Everything is bound from the shim `libcudnn.so.9`, which re-exports the
 * legacy API of its sub-libraries and opens them (graph, ops, cnn, ...) from
 * its own folder through its RPATH on first use. Most of these calls are
 * marked deprecated in cuDNN 9's headers in favour of the graph API; they
 * are still exported and supported throughout cuDNN 9.
 *
 * Scaling factors (alpha, beta) are host floats for float tensors; batch
 * norm's epsilon and averaging factor are doubles by value.
 *
 * @module
 */

import { lazyLibrary, type Opened } from "./find.ts";
import {
  bufferString,
  checker,
  out,
  pointer,
  pointerOut,
  readCString,
} from "./ffi.ts";

const P = "pointer";
const B = "buffer";

export const CUDNN_SYMBOLS = {
  // --- cudnn_graph.h: versions, errors, handle
  cudnnGetVersion: { parameters: [], result: "usize" },
  cudnnGetMaxDeviceVersion: { parameters: [], result: "usize" },
  cudnnGetCudartVersion: { parameters: [], result: "usize" },
  cudnnGetProperty: { parameters: ["i32", B], result: "i32" },
  cudnnGetErrorString: { parameters: ["i32"], result: P },
  cudnnGetLastErrorString: { parameters: [B, "usize"], result: "void" },
  cudnnCreate: { parameters: [B], result: "i32" },
  cudnnDestroy: { parameters: [P], result: "i32" },
  cudnnSetStream: { parameters: [P, P], result: "i32" },
  cudnnGetStream: { parameters: [P, B], result: "i32" },

  // --- cudnn_ops.h: tensor descriptors
  cudnnCreateTensorDescriptor: { parameters: [B], result: "i32" },
  cudnnSetTensor4dDescriptor: {
    parameters: [P, "i32", "i32", "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  cudnnSetTensor4dDescriptorEx: {
    parameters: [
      P,
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
    ],
    result: "i32",
  },
  cudnnGetTensor4dDescriptor: {
    parameters: [P, B, B, B, B, B, B, B, B, B],
    result: "i32",
  },
  cudnnSetTensorNdDescriptor: {
    parameters: [P, "i32", "i32", B, B],
    result: "i32",
  },
  cudnnGetTensorNdDescriptor: {
    parameters: [P, "i32", B, B, B, B],
    result: "i32",
  },
  cudnnGetTensorSizeInBytes: { parameters: [P, B], result: "i32" },
  cudnnDestroyTensorDescriptor: { parameters: [P], result: "i32" },

  // --- filter descriptors
  cudnnCreateFilterDescriptor: { parameters: [B], result: "i32" },
  cudnnSetFilter4dDescriptor: {
    parameters: [P, "i32", "i32", "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  cudnnGetFilter4dDescriptor: {
    parameters: [P, B, B, B, B, B, B],
    result: "i32",
  },
  cudnnGetFilterSizeInBytes: { parameters: [P, B], result: "i32" },
  cudnnDestroyFilterDescriptor: { parameters: [P], result: "i32" },

  // --- elementwise: op-tensor, add, set, scale
  cudnnCreateOpTensorDescriptor: { parameters: [B], result: "i32" },
  cudnnSetOpTensorDescriptor: {
    parameters: [P, "i32", "i32", "i32"],
    result: "i32",
  },
  cudnnGetOpTensorDescriptor: { parameters: [P, B, B, B], result: "i32" },
  cudnnDestroyOpTensorDescriptor: { parameters: [P], result: "i32" },
  cudnnOpTensor: {
    parameters: [P, P, B, P, P, B, P, P, B, P, P],
    result: "i32",
  },
  cudnnAddTensor: { parameters: [P, B, P, P, B, P, P], result: "i32" },
  cudnnSetTensor: { parameters: [P, P, P, B], result: "i32" },
  cudnnScaleTensor: { parameters: [P, P, P, B], result: "i32" },

  // --- reductions
  cudnnCreateReduceTensorDescriptor: { parameters: [B], result: "i32" },
  cudnnSetReduceTensorDescriptor: {
    parameters: [P, "i32", "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  cudnnGetReduceTensorDescriptor: {
    parameters: [P, B, B, B, B, B],
    result: "i32",
  },
  cudnnDestroyReduceTensorDescriptor: { parameters: [P], result: "i32" },
  cudnnGetReductionIndicesSize: { parameters: [P, P, P, P, B], result: "i32" },
  cudnnGetReductionWorkspaceSize: {
    parameters: [P, P, P, P, B],
    result: "i32",
  },
  cudnnReduceTensor: {
    parameters: [P, P, P, "usize", P, "usize", B, P, P, B, P, P],
    result: "i32",
  },

  // --- pooling
  cudnnCreatePoolingDescriptor: { parameters: [B], result: "i32" },
  cudnnSetPooling2dDescriptor: {
    parameters: [P, "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  cudnnGetPooling2dDescriptor: {
    parameters: [P, B, B, B, B, B, B, B, B],
    result: "i32",
  },
  cudnnGetPooling2dForwardOutputDim: {
    parameters: [P, P, B, B, B, B],
    result: "i32",
  },
  cudnnDestroyPoolingDescriptor: { parameters: [P], result: "i32" },
  cudnnPoolingForward: { parameters: [P, P, B, P, P, B, P, P], result: "i32" },
  cudnnPoolingBackward: {
    parameters: [P, P, B, P, P, P, P, P, P, B, P, P],
    result: "i32",
  },

  // --- activation
  cudnnCreateActivationDescriptor: { parameters: [B], result: "i32" },
  cudnnSetActivationDescriptor: {
    parameters: [P, "i32", "i32", "f64"],
    result: "i32",
  },
  cudnnGetActivationDescriptor: { parameters: [P, B, B, B], result: "i32" },
  cudnnDestroyActivationDescriptor: { parameters: [P], result: "i32" },
  cudnnActivationForward: {
    parameters: [P, P, B, P, P, B, P, P],
    result: "i32",
  },
  cudnnActivationBackward: {
    parameters: [P, P, B, P, P, P, P, P, P, B, P, P],
    result: "i32",
  },

  // --- batch norm
  cudnnDeriveBNTensorDescriptor: { parameters: [P, P, "i32"], result: "i32" },
  cudnnBatchNormalizationForwardInference: {
    parameters: [P, "i32", B, B, P, P, P, P, P, P, P, P, P, "f64"],
    result: "i32",
  },
  cudnnBatchNormalizationForwardTraining: {
    parameters: [P, "i32", B, B, P, P, P, P, P, P, P, "f64", P, P, "f64", P, P],
    result: "i32",
  },
  cudnnBatchNormalizationForwardTrainingEx: {
    parameters: [
      P, // handle
      "i32", // mode
      "i32", // bnOps
      B, // alpha
      B, // beta
      P, // xDesc
      P, // xData
      P, // zDesc
      P, // zData
      P, // yDesc
      P, // yData
      P, // bnScaleBiasMeanVarDesc
      P, // bnScale
      P, // bnBias
      "f64", // exponentialAverageFactor
      P, // resultRunningMean
      P, // resultRunningVariance
      "f64", // epsilon
      P, // resultSaveMean
      P, // resultSaveInvVariance
      P, // activationDesc
      P, // workspace
      "usize", // workSpaceSizeInBytes
      P, // reserveSpace
      "usize", // reserveSpaceSizeInBytes
    ],
    result: "i32",
  },
  cudnnBatchNormalizationBackward: {
    parameters: [
      P,
      "i32",
      B,
      B,
      B,
      B,
      P,
      P,
      P,
      P,
      P,
      P,
      P,
      P,
      P,
      P,
      "f64",
      P,
      P,
    ],
    result: "i32",
  },
  cudnnBatchNormalizationBackwardEx: {
    parameters: [
      P, // handle
      "i32", // mode
      "i32", // bnOps
      B, // alphaDataDiff
      B, // betaDataDiff
      B, // alphaParamDiff
      B, // betaParamDiff
      P, // xDesc
      P, // xData
      P, // yDesc
      P, // yData
      P, // dyDesc
      P, // dyData
      P, // dzDesc
      P, // dzData
      P, // dxDesc
      P, // dxData
      P, // dBnScaleBiasDesc
      P, // bnScaleData
      P, // bnBiasData
      P, // dBnScaleData
      P, // dBnBiasData
      "f64", // epsilon
      P, // savedMean
      P, // savedInvVariance
      P, // activationDesc
      P, // workSpace
      "usize", // workSpaceSizeInBytes
      P, // reserveSpace
      "usize", // reserveSpaceSizeInBytes
    ],
    result: "i32",
  },
  cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize: {
    parameters: [P, "i32", "i32", P, P, P, P, P, B],
    result: "i32",
  },
  cudnnGetBatchNormalizationBackwardExWorkspaceSize: {
    parameters: [P, "i32", "i32", P, P, P, P, P, P, P, B],
    result: "i32",
  },
  cudnnGetBatchNormalizationTrainingExReserveSpaceSize: {
    parameters: [P, "i32", "i32", P, P, B],
    result: "i32",
  },

  // --- cudnn_cnn.h: convolution
  cudnnCreateConvolutionDescriptor: { parameters: [B], result: "i32" },
  cudnnDestroyConvolutionDescriptor: { parameters: [P], result: "i32" },
  cudnnSetConvolution2dDescriptor: {
    parameters: [P, "i32", "i32", "i32", "i32", "i32", "i32", "i32", "i32"],
    result: "i32",
  },
  cudnnGetConvolution2dDescriptor: {
    parameters: [P, B, B, B, B, B, B, B, B],
    result: "i32",
  },
  cudnnSetConvolutionMathType: { parameters: [P, "i32"], result: "i32" },
  cudnnGetConvolutionMathType: { parameters: [P, B], result: "i32" },
  cudnnSetConvolutionGroupCount: { parameters: [P, "i32"], result: "i32" },
  cudnnGetConvolutionGroupCount: { parameters: [P, B], result: "i32" },
  cudnnGetConvolution2dForwardOutputDim: {
    parameters: [P, P, P, B, B, B, B],
    result: "i32",
  },
  cudnnGetConvolutionForwardAlgorithmMaxCount: {
    parameters: [P, B],
    result: "i32",
  },
  cudnnGetConvolutionForwardAlgorithm_v7: {
    parameters: [P, P, P, P, P, "i32", B, B],
    result: "i32",
  },
  cudnnFindConvolutionForwardAlgorithmEx: {
    parameters: [P, P, P, P, P, P, P, P, "i32", B, B, P, "usize"],
    result: "i32",
  },
  cudnnGetConvolutionForwardWorkspaceSize: {
    parameters: [P, P, P, P, P, "i32", B],
    result: "i32",
  },
  cudnnConvolutionForward: {
    parameters: [P, B, P, P, P, P, P, "i32", P, "usize", B, P, P],
    result: "i32",
  },
  cudnnGetConvolutionBackwardDataAlgorithmMaxCount: {
    parameters: [P, B],
    result: "i32",
  },
  cudnnGetConvolutionBackwardDataAlgorithm_v7: {
    parameters: [P, P, P, P, P, "i32", B, B],
    result: "i32",
  },
  cudnnFindConvolutionBackwardDataAlgorithmEx: {
    parameters: [P, P, P, P, P, P, P, P, "i32", B, B, P, "usize"],
    result: "i32",
  },
  cudnnGetConvolutionBackwardDataWorkspaceSize: {
    parameters: [P, P, P, P, P, "i32", B],
    result: "i32",
  },
  cudnnConvolutionBackwardData: {
    parameters: [P, B, P, P, P, P, P, "i32", P, "usize", B, P, P],
    result: "i32",
  },
  cudnnGetConvolutionBackwardFilterAlgorithmMaxCount: {
    parameters: [P, B],
    result: "i32",
  },
  cudnnGetConvolutionBackwardFilterAlgorithm_v7: {
    parameters: [P, P, P, P, P, "i32", B, B],
    result: "i32",
  },
  cudnnFindConvolutionBackwardFilterAlgorithmEx: {
    parameters: [P, P, P, P, P, P, P, P, "i32", B, B, P, "usize"],
    result: "i32",
  },
  cudnnGetConvolutionBackwardFilterWorkspaceSize: {
    parameters: [P, P, P, P, P, "i32", B],
    result: "i32",
  },
  cudnnConvolutionBackwardFilter: {
    parameters: [P, B, P, P, P, P, P, "i32", P, "usize", B, P, P],
    result: "i32",
  },
  cudnnConvolutionBackwardBias: {
    parameters: [P, B, P, P, B, P, P],
    result: "i32",
  },
} as const;

/** cuDNN enum values (cudnn_graph.h, cudnn_ops.h, cudnn_cnn.h). */
export const DATA_FLOAT = 0;
export const TENSOR_NCHW = 0;
export const CROSS_CORRELATION = 1;
export const DEFAULT_MATH = 0;
export const TENSOR_OP_MATH = 1;
export const FMA_MATH = 3;
export const NOT_PROPAGATE_NAN = 0;
export const PROPAGATE_NAN = 1;
export const POOLING_MAX = 0;
/** Max pooling whose backward routes each gradient to one (the first) max. */
export const POOLING_MAX_DETERMINISTIC = 3;
export const ACTIVATION_RELU = 1;
export const BATCHNORM_PER_ACTIVATION = 0;
export const BATCHNORM_SPATIAL = 1;
export const BATCHNORM_OPS_BN = 0;
export const BATCHNORM_OPS_BN_ACTIVATION = 1;
export const BATCHNORM_OPS_BN_ADD_ACTIVATION = 2;
export const OP_TENSOR = { add: 0, mul: 1, min: 2, max: 3, sqrt: 4 } as const;
export const REDUCE_ADD = 0;
export const REDUCE_NO_INDICES = 0;
export const INDICES_32BIT = 0;
export const DETERMINISTIC = 1;

/** cuDNN, opened on first use; throws one sentence if it is missing. */
export const cudnnLibrary: () => Opened<typeof CUDNN_SYMBOLS> = lazyLibrary(
  "cudnn",
  CUDNN_SYMBOLS,
);

const sym = () => cudnnLibrary().symbols;

/**
 * `CUDNN_STATUS_X`, and cuDNN's last error message, which names the check
 * that failed (`(n <= 0) || ...`, `cudaGetDeviceCount(&count) != ...`).
 */
export function cudnnStatusString(status: number): string {
  const s = sym();
  const name = readCString(s.cudnnGetErrorString(status));
  const msg = new Uint8Array(1024);
  s.cudnnGetLastErrorString(msg, BigInt(msg.length));
  const last = bufferString(msg).trim();
  return last ? `${name}: ${last}` : name;
}

const check = checker("cuDNN", cudnnStatusString);

/** The library's version, e.g. "9.24.0" (needs no GPU). */
export function cudnnVersion(): string {
  return [0, 1, 2].map((p) => {
    const v = out.i32();
    check(sym().cudnnGetProperty(p, v), "cudnnGetProperty");
    return v[0];
  }).join(".");
}

/** The CUDA runtime version cuDNN was built with (13030 for 13.3). */
export function cudnnCudartVersion(): number {
  return Number(sym().cudnnGetCudartVersion());
}

/** The newest compute capability this cuDNN has kernels for, times 100. */
export function cudnnMaxDeviceVersion(): number {
  return Number(sym().cudnnGetMaxDeviceVersion());
}

function create(
  fn: (o: BigUint64Array<ArrayBuffer>) => number,
  call: string,
): Deno.PointerValue {
  const o = out.u64();
  check(fn(o), call);
  return pointerOut(o);
}

function ints(n: number): Int32Array<ArrayBuffer>[] {
  return Array.from({ length: n }, () => out.i32());
}

/** The kinds of descriptor, as their create and destroy calls name them. */
type DescriptorKind =
  | "Tensor"
  | "Filter"
  | "Convolution"
  | "Pooling"
  | "Activation"
  | "OpTensor"
  | "ReduceTensor";

/** A cuDNN descriptor: created with the object, freed by dispose or `using`. */
class Descriptor {
  readonly handle: Deno.PointerValue;
  readonly #kind: DescriptorKind;

  constructor(kind: DescriptorKind) {
    this.#kind = kind;
    this.handle = create(
      (o) => sym()[`cudnnCreate${kind}Descriptor`](o),
      `cudnnCreate${kind}Descriptor`,
    );
  }

  dispose(): void {
    const destroy = `cudnnDestroy${this.#kind}Descriptor` as const;
    check(sym()[destroy](this.handle), destroy);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** A float32 tensor descriptor. */
export class TensorDescriptor extends Descriptor {
  constructor() {
    super("Tensor");
  }

  /** A contiguous NCHW tensor. */
  static nchw(n: number, c: number, h: number, w: number): TensorDescriptor {
    const d = new TensorDescriptor();
    d.set4d(n, c, h, w);
    return d;
  }

  set4d(n: number, c: number, h: number, w: number): void {
    check(
      sym().cudnnSetTensor4dDescriptor(
        this.handle,
        TENSOR_NCHW,
        DATA_FLOAT,
        n,
        c,
        h,
        w,
      ),
      "cudnnSetTensor4dDescriptor",
    );
  }

  /** A tensor of 3 to 8 dimensions with explicit element strides. */
  setNd(dims: readonly number[], strides: readonly number[]): void {
    check(
      sym().cudnnSetTensorNdDescriptor(
        this.handle,
        DATA_FLOAT,
        dims.length,
        new Int32Array(dims),
        new Int32Array(strides),
      ),
      "cudnnSetTensorNdDescriptor",
    );
  }

  /** Sizes and element strides of a 4-D descriptor, as cuDNN holds them. */
  get4d(): { dataType: number; dims: number[]; strides: number[] } {
    const v = ints(9);
    check(
      sym().cudnnGetTensor4dDescriptor(
        this.handle,
        ...(v as [
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
          Int32Array<ArrayBuffer>,
        ]),
      ),
      "cudnnGetTensor4dDescriptor",
    );
    const x = v.map((a) => a[0]);
    return { dataType: x[0], dims: x.slice(1, 5), strides: x.slice(5, 9) };
  }

  /** Sizes and strides of a descriptor of any rank. */
  getNd(): { dataType: number; dims: number[]; strides: number[] } {
    const dataType = out.i32();
    const rank = out.i32();
    const dims = new Int32Array(8);
    const strides = new Int32Array(8);
    check(
      sym().cudnnGetTensorNdDescriptor(
        this.handle,
        8,
        dataType,
        rank,
        dims,
        strides,
      ),
      "cudnnGetTensorNdDescriptor",
    );
    return {
      dataType: dataType[0],
      dims: [...dims.subarray(0, rank[0])],
      strides: [...strides.subarray(0, rank[0])],
    };
  }

  sizeInBytes(): number {
    const v = out.u64();
    check(
      sym().cudnnGetTensorSizeInBytes(this.handle, v),
      "cudnnGetTensorSizeInBytes",
    );
    return Number(v[0]);
  }
}

/** A float32 KCRS filter descriptor. */
export class FilterDescriptor extends Descriptor {
  constructor(k: number, c: number, r: number, s: number) {
    super("Filter");
    check(
      // The filter setter takes dataType before format; the tensor one after.
      sym().cudnnSetFilter4dDescriptor(
        this.handle,
        DATA_FLOAT,
        TENSOR_NCHW,
        k,
        c,
        r,
        s,
      ),
      "cudnnSetFilter4dDescriptor",
    );
  }

  get(): { dataType: number; format: number; dims: number[] } {
    const v = ints(6);
    check(
      sym().cudnnGetFilter4dDescriptor(
        this.handle,
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[5],
      ),
      "cudnnGetFilter4dDescriptor",
    );
    const x = v.map((a) => a[0]);
    return { dataType: x[0], format: x[1], dims: x.slice(2) };
  }

  sizeInBytes(): number {
    const v = out.u64();
    check(
      sym().cudnnGetFilterSizeInBytes(this.handle, v),
      "cudnnGetFilterSizeInBytes",
    );
    return Number(v[0]);
  }
}

/** A 2-D cross-correlation (dilation 1), float32 accumulation. */
export class ConvolutionDescriptor extends Descriptor {
  constructor(padH: number, padW: number, strideH: number, strideW: number) {
    super("Convolution");
    check(
      sym().cudnnSetConvolution2dDescriptor(
        this.handle,
        padH,
        padW,
        strideH,
        strideW,
        1,
        1,
        CROSS_CORRELATION,
        DATA_FLOAT,
      ),
      "cudnnSetConvolution2dDescriptor",
    );
  }

  /** FMA_MATH for exact float32; TENSOR_OP_MATH lets cuDNN use TF32. */
  setMathType(mathType: number): void {
    check(
      sym().cudnnSetConvolutionMathType(this.handle, mathType),
      "cudnnSetConvolutionMathType",
    );
  }

  mathType(): number {
    const v = out.i32();
    check(
      sym().cudnnGetConvolutionMathType(this.handle, v),
      "cudnnGetConvolutionMathType",
    );
    return v[0];
  }

  get(): {
    padH: number;
    padW: number;
    strideH: number;
    strideW: number;
    dilationH: number;
    dilationW: number;
    mode: number;
    computeType: number;
  } {
    const v = ints(8);
    check(
      sym().cudnnGetConvolution2dDescriptor(
        this.handle,
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[5],
        v[6],
        v[7],
      ),
      "cudnnGetConvolution2dDescriptor",
    );
    const [
      padH,
      padW,
      strideH,
      strideW,
      dilationH,
      dilationW,
      mode,
      computeType,
    ] = v.map((a) => a[0]);
    return {
      padH,
      padW,
      strideH,
      strideW,
      dilationH,
      dilationW,
      mode,
      computeType,
    };
  }

  /** The output shape cuDNN computes for input x and filter w. */
  outputDim(x: TensorDescriptor, w: FilterDescriptor): number[] {
    const v = ints(4);
    check(
      sym().cudnnGetConvolution2dForwardOutputDim(
        this.handle,
        x.handle,
        w.handle,
        v[0],
        v[1],
        v[2],
        v[3],
      ),
      "cudnnGetConvolution2dForwardOutputDim",
    );
    return v.map((a) => a[0]);
  }
}

/** A 2-D max pooling window (padding counts as -infinity). */
export class PoolingDescriptor extends Descriptor {
  constructor(
    kh: number,
    kw: number,
    padH: number,
    padW: number,
    strideH: number,
    strideW: number,
    mode = POOLING_MAX,
  ) {
    super("Pooling");
    check(
      sym().cudnnSetPooling2dDescriptor(
        this.handle,
        mode,
        PROPAGATE_NAN,
        kh,
        kw,
        padH,
        padW,
        strideH,
        strideW,
      ),
      "cudnnSetPooling2dDescriptor",
    );
  }

  get(): {
    mode: number;
    nanPropagation: number;
    kh: number;
    kw: number;
    padH: number;
    padW: number;
    strideH: number;
    strideW: number;
  } {
    const v = ints(8);
    check(
      sym().cudnnGetPooling2dDescriptor(
        this.handle,
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[5],
        v[6],
        v[7],
      ),
      "cudnnGetPooling2dDescriptor",
    );
    const [mode, nanPropagation, kh, kw, padH, padW, strideH, strideW] = v.map((
      a,
    ) => a[0]);
    return { mode, nanPropagation, kh, kw, padH, padW, strideH, strideW };
  }

  outputDim(x: TensorDescriptor): number[] {
    const v = ints(4);
    check(
      sym().cudnnGetPooling2dForwardOutputDim(
        this.handle,
        x.handle,
        v[0],
        v[1],
        v[2],
        v[3],
      ),
      "cudnnGetPooling2dForwardOutputDim",
    );
    return v.map((a) => a[0]);
  }
}

/** An activation function (ReLU unless told otherwise). */
export class ActivationDescriptor extends Descriptor {
  constructor(mode = ACTIVATION_RELU, coef = 0) {
    super("Activation");
    check(
      sym().cudnnSetActivationDescriptor(
        this.handle,
        mode,
        PROPAGATE_NAN,
        coef,
      ),
      "cudnnSetActivationDescriptor",
    );
  }

  get(): { mode: number; nanPropagation: number; coef: number } {
    const mode = out.i32();
    const nan = out.i32();
    const coef = new Float64Array(1);
    check(
      sym().cudnnGetActivationDescriptor(this.handle, mode, nan, coef),
      "cudnnGetActivationDescriptor",
    );
    return { mode: mode[0], nanPropagation: nan[0], coef: coef[0] };
  }
}

/** A binary elementwise operation of cudnnOpTensor, float32 compute. */
export class OpTensorDescriptor extends Descriptor {
  constructor(op: number) {
    super("OpTensor");
    check(
      sym().cudnnSetOpTensorDescriptor(
        this.handle,
        op,
        DATA_FLOAT,
        PROPAGATE_NAN,
      ),
      "cudnnSetOpTensorDescriptor",
    );
  }

  get(): { op: number; computeType: number; nanPropagation: number } {
    const v = ints(3);
    check(
      sym().cudnnGetOpTensorDescriptor(this.handle, v[0], v[1], v[2]),
      "cudnnGetOpTensorDescriptor",
    );
    const [op, computeType, nanPropagation] = v.map((a) => a[0]);
    return { op, computeType, nanPropagation };
  }
}

/** A reduction (sum unless told otherwise), float32, no indices. */
export class ReduceTensorDescriptor extends Descriptor {
  constructor(op = REDUCE_ADD) {
    super("ReduceTensor");
    check(
      sym().cudnnSetReduceTensorDescriptor(
        this.handle,
        op,
        DATA_FLOAT,
        PROPAGATE_NAN,
        REDUCE_NO_INDICES,
        INDICES_32BIT,
      ),
      "cudnnSetReduceTensorDescriptor",
    );
  }

  get(): {
    op: number;
    computeType: number;
    nanPropagation: number;
    indices: number;
    indicesType: number;
  } {
    const v = ints(5);
    check(
      sym().cudnnGetReduceTensorDescriptor(
        this.handle,
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
      ),
      "cudnnGetReduceTensorDescriptor",
    );
    const [op, computeType, nanPropagation, indices, indicesType] = v.map((a) =>
      a[0]
    );
    return { op, computeType, nanPropagation, indices, indicesType };
  }
}

/**
 * The descriptor of batch norm's per-channel tensors (scale, bias, means,
 * variances) for input x: 1xCx1x1 in spatial mode, 1xCxHxW per activation.
 */
export function deriveBatchNormDescriptor(
  x: TensorDescriptor,
  mode: number,
): TensorDescriptor {
  const d = new TensorDescriptor();
  check(
    sym().cudnnDeriveBNTensorDescriptor(d.handle, x.handle, mode),
    "cudnnDeriveBNTensorDescriptor",
  );
  return d;
}

/** One algorithm's entry in cuDNN's performance results. */
export interface AlgoPerf {
  algo: number;
  status: number;
  /** Milliseconds measured (Find) or estimated (Get). */
  time: number;
  /** Workspace bytes it needs. */
  memory: number;
  determinism: number;
  mathType: number;
}

/** `cudnnConvolution*AlgoPerf_t` is 48 bytes: algo, status, time, memory, ... */
const PERF_BYTES = 48;

function readPerfs(buf: Uint8Array, count: number): AlgoPerf[] {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const perfs: AlgoPerf[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * PERF_BYTES;
    perfs.push({
      algo: dv.getInt32(o, true),
      status: dv.getInt32(o + 4, true),
      time: dv.getFloat32(o + 8, true),
      memory: Number(dv.getBigUint64(o + 16, true)),
      determinism: dv.getInt32(o + 24, true),
      mathType: dv.getInt32(o + 28, true),
    });
  }
  return perfs;
}

/** The three directions of a convolution. */
export type ConvDirection = "forward" | "backwardData" | "backwardFilter";

/** The descriptors of one convolution: input, filter, conv, output. */
export interface ConvDescriptors {
  x: TensorDescriptor;
  w: FilterDescriptor;
  conv: ConvolutionDescriptor;
  y: TensorDescriptor;
}

/** A cuDNN handle bound to one stream, with the ops the toolkit calls. */
export class CudnnHandle {
  readonly handle: Deno.PointerValue;
  readonly #alpha = new Float32Array(1);
  readonly #beta = new Float32Array(1);
  readonly #alpha2 = new Float32Array(1);
  readonly #beta2 = new Float32Array(1);

  constructor(stream: Deno.PointerValue) {
    this.handle = create((o) => sym().cudnnCreate(o), "cudnnCreate");
    check(sym().cudnnSetStream(this.handle, stream), "cudnnSetStream");
  }

  #scale(
    alpha: number,
    beta: number,
  ): [Float32Array<ArrayBuffer>, Float32Array<ArrayBuffer>] {
    this.#alpha[0] = alpha;
    this.#beta[0] = beta;
    return [this.#alpha, this.#beta];
  }

  /** Heuristic ranking of algorithms (no GPU work), best first. */
  algorithms(dir: ConvDirection, d: ConvDescriptors): AlgoPerf[] {
    const s = sym();
    const max = out.i32();
    const got = out.i32();
    const h = this.handle;
    if (dir === "forward") {
      check(
        s.cudnnGetConvolutionForwardAlgorithmMaxCount(h, max),
        "cudnnGetConvolutionForwardAlgorithmMaxCount",
      );
      const buf = new Uint8Array(PERF_BYTES * max[0]);
      check(
        s.cudnnGetConvolutionForwardAlgorithm_v7(
          h,
          d.x.handle,
          d.w.handle,
          d.conv.handle,
          d.y.handle,
          max[0],
          got,
          buf,
        ),
        "cudnnGetConvolutionForwardAlgorithm_v7",
      );
      return readPerfs(buf, got[0]);
    }
    if (dir === "backwardData") {
      check(
        s.cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, max),
        "cudnnGetConvolutionBackwardDataAlgorithmMaxCount",
      );
      const buf = new Uint8Array(PERF_BYTES * max[0]);
      check(
        s.cudnnGetConvolutionBackwardDataAlgorithm_v7(
          h,
          d.w.handle,
          d.y.handle,
          d.conv.handle,
          d.x.handle,
          max[0],
          got,
          buf,
        ),
        "cudnnGetConvolutionBackwardDataAlgorithm_v7",
      );
      return readPerfs(buf, got[0]);
    }
    check(
      s.cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, max),
      "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount",
    );
    const buf = new Uint8Array(PERF_BYTES * max[0]);
    check(
      s.cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        h,
        d.x.handle,
        d.y.handle,
        d.conv.handle,
        d.w.handle,
        max[0],
        got,
        buf,
      ),
      "cudnnGetConvolutionBackwardFilterAlgorithm_v7",
    );
    return readPerfs(buf, got[0]);
  }

  /**
   * Times every algorithm on real buffers (as `cudnn.benchmark` does),
   * fastest first; `workspace` bounds what an algorithm may use.
   */
  findAlgorithms(
    dir: ConvDirection,
    d: ConvDescriptors,
    x: bigint,
    w: bigint,
    y: bigint,
    workspace: bigint,
    workspaceBytes: number,
  ): AlgoPerf[] {
    const s = sym();
    const h = this.handle;
    const max = out.i32();
    const got = out.i32();
    const ws = pointer(workspace);
    const bytes = BigInt(workspaceBytes);
    if (dir === "forward") {
      check(
        s.cudnnGetConvolutionForwardAlgorithmMaxCount(h, max),
        "cudnnGetConvolutionForwardAlgorithmMaxCount",
      );
      const buf = new Uint8Array(PERF_BYTES * max[0]);
      check(
        s.cudnnFindConvolutionForwardAlgorithmEx(
          h,
          d.x.handle,
          pointer(x),
          d.w.handle,
          pointer(w),
          d.conv.handle,
          d.y.handle,
          pointer(y),
          max[0],
          got,
          buf,
          ws,
          bytes,
        ),
        "cudnnFindConvolutionForwardAlgorithmEx",
      );
      return readPerfs(buf, got[0]);
    }
    if (dir === "backwardData") {
      check(
        s.cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, max),
        "cudnnGetConvolutionBackwardDataAlgorithmMaxCount",
      );
      const buf = new Uint8Array(PERF_BYTES * max[0]);
      check(
        s.cudnnFindConvolutionBackwardDataAlgorithmEx(
          h,
          d.w.handle,
          pointer(w),
          d.y.handle,
          pointer(y),
          d.conv.handle,
          d.x.handle,
          pointer(x),
          max[0],
          got,
          buf,
          ws,
          bytes,
        ),
        "cudnnFindConvolutionBackwardDataAlgorithmEx",
      );
      return readPerfs(buf, got[0]);
    }
    check(
      s.cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, max),
      "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount",
    );
    const buf = new Uint8Array(PERF_BYTES * max[0]);
    check(
      s.cudnnFindConvolutionBackwardFilterAlgorithmEx(
        h,
        d.x.handle,
        pointer(x),
        d.y.handle,
        pointer(y),
        d.conv.handle,
        d.w.handle,
        pointer(w),
        max[0],
        got,
        buf,
        ws,
        bytes,
      ),
      "cudnnFindConvolutionBackwardFilterAlgorithmEx",
    );
    return readPerfs(buf, got[0]);
  }

  /** Workspace bytes an algorithm needs in one direction. */
  workspaceSize(dir: ConvDirection, d: ConvDescriptors, algo: number): number {
    const s = sym();
    const h = this.handle;
    const v = out.u64();
    if (dir === "forward") {
      check(
        s.cudnnGetConvolutionForwardWorkspaceSize(
          h,
          d.x.handle,
          d.w.handle,
          d.conv.handle,
          d.y.handle,
          algo,
          v,
        ),
        "cudnnGetConvolutionForwardWorkspaceSize",
      );
    } else if (dir === "backwardData") {
      check(
        s.cudnnGetConvolutionBackwardDataWorkspaceSize(
          h,
          d.w.handle,
          d.y.handle,
          d.conv.handle,
          d.x.handle,
          algo,
          v,
        ),
        "cudnnGetConvolutionBackwardDataWorkspaceSize",
      );
    } else {
      check(
        s.cudnnGetConvolutionBackwardFilterWorkspaceSize(
          h,
          d.x.handle,
          d.y.handle,
          d.conv.handle,
          d.w.handle,
          algo,
          v,
        ),
        "cudnnGetConvolutionBackwardFilterWorkspaceSize",
      );
    }
    return Number(v[0]);
  }

  /**
   * One direction of a convolution with buffers by role (x input, w filter,
   * y output, or their gradients), overwriting the direction's result.
   */
  convolution(
    dir: ConvDirection,
    d: ConvDescriptors,
    algo: number,
    b: { x: bigint; w: bigint; y: bigint },
    workspace: bigint,
    workspaceBytes: number,
  ): void {
    switch (dir) {
      case "forward":
        return this.convolutionForward(
          d,
          algo,
          b.x,
          b.w,
          b.y,
          workspace,
          workspaceBytes,
        );
      case "backwardData":
        return this.convolutionBackwardData(
          d,
          algo,
          b.w,
          b.y,
          b.x,
          workspace,
          workspaceBytes,
        );
      case "backwardFilter":
        return this.convolutionBackwardFilter(
          d,
          algo,
          b.x,
          b.y,
          b.w,
          workspace,
          workspaceBytes,
        );
    }
  }

  /** `y = alpha conv(x, w) + beta y`. */
  convolutionForward(
    d: ConvDescriptors,
    algo: number,
    x: bigint,
    w: bigint,
    y: bigint,
    workspace: bigint,
    workspaceBytes: number,
    alpha = 1,
    beta = 0,
  ): void {
    const [a, b] = this.#scale(alpha, beta);
    check(
      sym().cudnnConvolutionForward(
        this.handle,
        a,
        d.x.handle,
        pointer(x),
        d.w.handle,
        pointer(w),
        d.conv.handle,
        algo,
        pointer(workspace),
        BigInt(workspaceBytes),
        b,
        d.y.handle,
        pointer(y),
      ),
      "cudnnConvolutionForward",
    );
  }

  /** `dx = alpha dconv/dx(dy, w) + beta dx`. */
  convolutionBackwardData(
    d: ConvDescriptors,
    algo: number,
    w: bigint,
    dy: bigint,
    dx: bigint,
    workspace: bigint,
    workspaceBytes: number,
    alpha = 1,
    beta = 0,
  ): void {
    const [a, b] = this.#scale(alpha, beta);
    check(
      sym().cudnnConvolutionBackwardData(
        this.handle,
        a,
        d.w.handle,
        pointer(w),
        d.y.handle,
        pointer(dy),
        d.conv.handle,
        algo,
        pointer(workspace),
        BigInt(workspaceBytes),
        b,
        d.x.handle,
        pointer(dx),
      ),
      "cudnnConvolutionBackwardData",
    );
  }

  /** `dw = alpha dconv/dw(x, dy) + beta dw`. */
  convolutionBackwardFilter(
    d: ConvDescriptors,
    algo: number,
    x: bigint,
    dy: bigint,
    dw: bigint,
    workspace: bigint,
    workspaceBytes: number,
    alpha = 1,
    beta = 0,
  ): void {
    const [a, b] = this.#scale(alpha, beta);
    check(
      sym().cudnnConvolutionBackwardFilter(
        this.handle,
        a,
        d.x.handle,
        pointer(x),
        d.y.handle,
        pointer(dy),
        d.conv.handle,
        algo,
        pointer(workspace),
        BigInt(workspaceBytes),
        b,
        d.w.handle,
        pointer(dw),
      ),
      "cudnnConvolutionBackwardFilter",
    );
  }

  /** `db = alpha sum of dy over n, h, w + beta db`. */
  convolutionBackwardBias(
    dyDesc: TensorDescriptor,
    dy: bigint,
    dbDesc: TensorDescriptor,
    db: bigint,
    alpha = 1,
    beta = 0,
  ): void {
    const [a, b] = this.#scale(alpha, beta);
    check(
      sym().cudnnConvolutionBackwardBias(
        this.handle,
        a,
        dyDesc.handle,
        pointer(dy),
        b,
        dbDesc.handle,
        pointer(db),
      ),
      "cudnnConvolutionBackwardBias",
    );
  }

  /**
   * Training-mode batch norm. The running averages become
   * `factor * batch + (1 - factor) * running` (cudnn_ops.h), so PyTorch's
   * momentum is the factor; saveInvStd receives 1 / sqrt(var + eps).
   */
  batchNormForwardTraining(
    mode: number,
    xDesc: TensorDescriptor,
    x: bigint,
    y: bigint,
    bnDesc: TensorDescriptor,
    scale: bigint,
    bias: bigint,
    factor: number,
    runningMean: bigint,
    runningVar: bigint,
    eps: number,
    saveMean: bigint,
    saveInvStd: bigint,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnBatchNormalizationForwardTraining(
        this.handle,
        mode,
        a,
        b,
        xDesc.handle,
        pointer(x),
        xDesc.handle,
        pointer(y),
        bnDesc.handle,
        pointer(scale),
        pointer(bias),
        factor,
        pointer(runningMean),
        pointer(runningVar),
        eps,
        pointer(saveMean),
        pointer(saveInvStd),
      ),
      "cudnnBatchNormalizationForwardTraining",
    );
  }

  /**
   * The fused form: `y = act(bn(x) + z)` for `BATCHNORM_OPS_BN_ADD_ACTIVATION`
   * (z may be 0n otherwise), with the workspace and reserve space sizes from
   * `batchNormTrainingExSizes`.
   */
  batchNormForwardTrainingEx(
    mode: number,
    ops: number,
    xDesc: TensorDescriptor,
    x: bigint,
    z: bigint,
    y: bigint,
    bnDesc: TensorDescriptor,
    scale: bigint,
    bias: bigint,
    factor: number,
    runningMean: bigint,
    runningVar: bigint,
    eps: number,
    saveMean: bigint,
    saveInvStd: bigint,
    activation: ActivationDescriptor | null,
    workspace: bigint,
    workspaceBytes: number,
    reserve: bigint,
    reserveBytes: number,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnBatchNormalizationForwardTrainingEx(
        this.handle,
        mode,
        ops,
        a,
        b,
        xDesc.handle,
        pointer(x),
        z ? xDesc.handle : null,
        pointer(z),
        xDesc.handle,
        pointer(y),
        bnDesc.handle,
        pointer(scale),
        pointer(bias),
        factor,
        pointer(runningMean),
        pointer(runningVar),
        eps,
        pointer(saveMean),
        pointer(saveInvStd),
        activation?.handle ?? null,
        pointer(workspace),
        BigInt(workspaceBytes),
        pointer(reserve),
        BigInt(reserveBytes),
      ),
      "cudnnBatchNormalizationForwardTrainingEx",
    );
  }

  /** Workspace and reserve-space bytes of the fused forms. */
  batchNormTrainingExSizes(
    mode: number,
    ops: number,
    xDesc: TensorDescriptor,
    bnDesc: TensorDescriptor,
    activation: ActivationDescriptor | null,
  ): { forwardWorkspace: number; backwardWorkspace: number; reserve: number } {
    const s = sym();
    const h = this.handle;
    const z = ops === BATCHNORM_OPS_BN_ADD_ACTIVATION ? xDesc.handle : null;
    const act = activation?.handle ?? null;
    const fw = out.u64();
    const bw = out.u64();
    const rs = out.u64();
    check(
      s.cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(
        h,
        mode,
        ops,
        xDesc.handle,
        z,
        xDesc.handle,
        bnDesc.handle,
        act,
        fw,
      ),
      "cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize",
    );
    check(
      s.cudnnGetBatchNormalizationBackwardExWorkspaceSize(
        h,
        mode,
        ops,
        xDesc.handle,
        xDesc.handle,
        xDesc.handle,
        z,
        xDesc.handle,
        bnDesc.handle,
        act,
        bw,
      ),
      "cudnnGetBatchNormalizationBackwardExWorkspaceSize",
    );
    check(
      s.cudnnGetBatchNormalizationTrainingExReserveSpaceSize(
        h,
        mode,
        ops,
        act,
        xDesc.handle,
        rs,
      ),
      "cudnnGetBatchNormalizationTrainingExReserveSpaceSize",
    );
    return {
      forwardWorkspace: Number(fw[0]),
      backwardWorkspace: Number(bw[0]),
      reserve: Number(rs[0]),
    };
  }

  /** Inference-mode batch norm with the given statistics. */
  batchNormForwardInference(
    mode: number,
    xDesc: TensorDescriptor,
    x: bigint,
    y: bigint,
    bnDesc: TensorDescriptor,
    scale: bigint,
    bias: bigint,
    mean: bigint,
    variance: bigint,
    eps: number,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnBatchNormalizationForwardInference(
        this.handle,
        mode,
        a,
        b,
        xDesc.handle,
        pointer(x),
        xDesc.handle,
        pointer(y),
        bnDesc.handle,
        pointer(scale),
        pointer(bias),
        pointer(mean),
        pointer(variance),
        eps,
      ),
      "cudnnBatchNormalizationForwardInference",
    );
  }

  /** Gradients of training-mode batch norm from the saved statistics. */
  batchNormBackward(
    mode: number,
    xDesc: TensorDescriptor,
    x: bigint,
    dy: bigint,
    dx: bigint,
    bnDesc: TensorDescriptor,
    scale: bigint,
    dScale: bigint,
    dBias: bigint,
    eps: number,
    saveMean: bigint,
    saveInvStd: bigint,
  ): void {
    const [a, b] = this.#scale(1, 0);
    this.#alpha2[0] = 1;
    this.#beta2[0] = 0;
    check(
      sym().cudnnBatchNormalizationBackward(
        this.handle,
        mode,
        a,
        b,
        this.#alpha2,
        this.#beta2,
        xDesc.handle,
        pointer(x),
        xDesc.handle,
        pointer(dy),
        xDesc.handle,
        pointer(dx),
        bnDesc.handle,
        pointer(scale),
        pointer(dScale),
        pointer(dBias),
        eps,
        pointer(saveMean),
        pointer(saveInvStd),
      ),
      "cudnnBatchNormalizationBackward",
    );
  }

  /** The fused backward (activation and residual input) of the Ex forward. */
  batchNormBackwardEx(
    mode: number,
    ops: number,
    xDesc: TensorDescriptor,
    x: bigint,
    y: bigint,
    dy: bigint,
    dz: bigint,
    dx: bigint,
    bnDesc: TensorDescriptor,
    scale: bigint,
    bias: bigint,
    dScale: bigint,
    dBias: bigint,
    eps: number,
    saveMean: bigint,
    saveInvStd: bigint,
    activation: ActivationDescriptor | null,
    workspace: bigint,
    workspaceBytes: number,
    reserve: bigint,
    reserveBytes: number,
  ): void {
    const [a, b] = this.#scale(1, 0);
    this.#alpha2[0] = 1;
    this.#beta2[0] = 0;
    const zDesc = dz ? xDesc.handle : null;
    check(
      sym().cudnnBatchNormalizationBackwardEx(
        this.handle,
        mode,
        ops,
        a,
        b,
        this.#alpha2,
        this.#beta2,
        xDesc.handle,
        pointer(x),
        xDesc.handle,
        pointer(y),
        xDesc.handle,
        pointer(dy),
        zDesc,
        pointer(dz),
        xDesc.handle,
        pointer(dx),
        bnDesc.handle,
        pointer(scale),
        pointer(bias),
        pointer(dScale),
        pointer(dBias),
        eps,
        pointer(saveMean),
        pointer(saveInvStd),
        activation?.handle ?? null,
        pointer(workspace),
        BigInt(workspaceBytes),
        pointer(reserve),
        BigInt(reserveBytes),
      ),
      "cudnnBatchNormalizationBackwardEx",
    );
  }

  poolingForward(
    p: PoolingDescriptor,
    xDesc: TensorDescriptor,
    x: bigint,
    yDesc: TensorDescriptor,
    y: bigint,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnPoolingForward(
        this.handle,
        p.handle,
        a,
        xDesc.handle,
        pointer(x),
        b,
        yDesc.handle,
        pointer(y),
      ),
      "cudnnPoolingForward",
    );
  }

  poolingBackward(
    p: PoolingDescriptor,
    yDesc: TensorDescriptor,
    y: bigint,
    dy: bigint,
    xDesc: TensorDescriptor,
    x: bigint,
    dx: bigint,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnPoolingBackward(
        this.handle,
        p.handle,
        a,
        yDesc.handle,
        pointer(y),
        yDesc.handle,
        pointer(dy),
        xDesc.handle,
        pointer(x),
        b,
        xDesc.handle,
        pointer(dx),
      ),
      "cudnnPoolingBackward",
    );
  }

  activationForward(
    act: ActivationDescriptor,
    desc: TensorDescriptor,
    x: bigint,
    y: bigint,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnActivationForward(
        this.handle,
        act.handle,
        a,
        desc.handle,
        pointer(x),
        b,
        desc.handle,
        pointer(y),
      ),
      "cudnnActivationForward",
    );
  }

  activationBackward(
    act: ActivationDescriptor,
    desc: TensorDescriptor,
    y: bigint,
    dy: bigint,
    x: bigint,
    dx: bigint,
  ): void {
    const [a, b] = this.#scale(1, 0);
    check(
      sym().cudnnActivationBackward(
        this.handle,
        act.handle,
        a,
        desc.handle,
        pointer(y),
        desc.handle,
        pointer(dy),
        desc.handle,
        pointer(x),
        b,
        desc.handle,
        pointer(dx),
      ),
      "cudnnActivationBackward",
    );
  }

  /** `c = op(alpha1 a, alpha2 b) + beta c`, b broadcast over size-1 dims. */
  opTensor(
    op: OpTensorDescriptor,
    alpha1: number,
    aDesc: TensorDescriptor,
    a: bigint,
    alpha2: number,
    bDesc: TensorDescriptor,
    b: bigint,
    beta: number,
    cDesc: TensorDescriptor,
    c: bigint,
  ): void {
    const [s1, sb] = this.#scale(alpha1, beta);
    this.#alpha2[0] = alpha2;
    check(
      sym().cudnnOpTensor(
        this.handle,
        op.handle,
        s1,
        aDesc.handle,
        pointer(a),
        this.#alpha2,
        bDesc.handle,
        pointer(b),
        sb,
        cDesc.handle,
        pointer(c),
      ),
      "cudnnOpTensor",
    );
  }

  /** `c = alpha a + beta c`, a broadcast over c's size-1 dims. */
  addTensor(
    alpha: number,
    aDesc: TensorDescriptor,
    a: bigint,
    beta: number,
    cDesc: TensorDescriptor,
    c: bigint,
  ): void {
    const [sa, sb] = this.#scale(alpha, beta);
    check(
      sym().cudnnAddTensor(
        this.handle,
        sa,
        aDesc.handle,
        pointer(a),
        sb,
        cDesc.handle,
        pointer(c),
      ),
      "cudnnAddTensor",
    );
  }

  /** Workspace bytes of a reduction from aDesc to cDesc. */
  reductionWorkspaceSize(
    r: ReduceTensorDescriptor,
    aDesc: TensorDescriptor,
    cDesc: TensorDescriptor,
  ): number {
    const v = out.u64();
    check(
      sym().cudnnGetReductionWorkspaceSize(
        this.handle,
        r.handle,
        aDesc.handle,
        cDesc.handle,
        v,
      ),
      "cudnnGetReductionWorkspaceSize",
    );
    return Number(v[0]);
  }

  /** `c = alpha reduce(a over c's size-1 dims) + beta c`. */
  reduceTensor(
    r: ReduceTensorDescriptor,
    workspace: bigint,
    workspaceBytes: number,
    alpha: number,
    aDesc: TensorDescriptor,
    a: bigint,
    beta: number,
    cDesc: TensorDescriptor,
    c: bigint,
  ): void {
    const [sa, sb] = this.#scale(alpha, beta);
    check(
      sym().cudnnReduceTensor(
        this.handle,
        r.handle,
        null,
        0n,
        pointer(workspace),
        BigInt(workspaceBytes),
        sa,
        aDesc.handle,
        pointer(a),
        sb,
        cDesc.handle,
        pointer(c),
      ),
      "cudnnReduceTensor",
    );
  }

  /** Sets every element of y to `value`. */
  setTensor(desc: TensorDescriptor, y: bigint, value: number): void {
    this.#alpha[0] = value;
    check(
      sym().cudnnSetTensor(this.handle, desc.handle, pointer(y), this.#alpha),
      "cudnnSetTensor",
    );
  }

  /** `y *= alpha`. */
  scaleTensor(desc: TensorDescriptor, y: bigint, alpha: number): void {
    this.#alpha[0] = alpha;
    check(
      sym().cudnnScaleTensor(this.handle, desc.handle, pointer(y), this.#alpha),
      "cudnnScaleTensor",
    );
  }

  dispose(): void {
    check(sym().cudnnDestroy(this.handle), "cudnnDestroy");
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
