/**
 * oneDNN (libdnnl.so.2, the 2.x C API) through Deno FFI: the few calls that
 * convolutions, reorders, batch normalisation and sums need. oneDNN is an
 * optional accelerator of the CPU backend; without it convolutions run on
 * im2col and OpenBLAS and the rest on TypeScript kernels.
 *
 * `MEC_DNNL` names the library file to load (a path or a soname); otherwise
 * `libdnnl.so.2` is tried. Its OpenMP thread count follows `MEC_THREADS`
 * when that is set (see threads.ts).
 *
 * oneDNN's structs are opaque handles except the memory descriptor (696
 * bytes in 2.x) and the operation descriptor (5976 bytes), which oneDNN fills
 * in; they live in Uint8Arrays passed as "buffer" arguments. Handles come
 * back through 8-byte out-parameters.
 *
 * @module
 */

import type { SgemmArgs } from "./blas.ts";
import { configureOpenMp } from "./threads.ts";

const symbols = {
  dnnl_version: { parameters: [], result: "pointer" },
  dnnl_status2str: { parameters: ["i32"], result: "pointer" },
  dnnl_sgemm: {
    parameters: [
      "u8", // transa ('N' or 'T')
      "u8", // transb
      "i64", // M
      "i64", // N
      "i64", // K
      "f32", // alpha
      "buffer", // A
      "i64", // lda
      "buffer", // B
      "i64", // ldb
      "f32", // beta
      "buffer", // C
      "i64", // ldc
    ],
    result: "i32",
  },
  dnnl_engine_create: { parameters: ["buffer", "i32", "usize"], result: "i32" },
  dnnl_stream_create: {
    parameters: ["buffer", "pointer", "u32"],
    result: "i32",
  },
  dnnl_stream_wait: { parameters: ["pointer"], result: "i32" },
  dnnl_memory_desc_init_by_tag: {
    parameters: ["buffer", "i32", "buffer", "i32", "i32"],
    result: "i32",
  },
  dnnl_memory_desc_equal: { parameters: ["buffer", "buffer"], result: "i32" },
  dnnl_memory_desc_get_size: { parameters: ["buffer"], result: "usize" },
  dnnl_convolution_forward_desc_init: {
    parameters: [
      "buffer", // conv_desc (out)
      "i32", // prop_kind
      "i32", // alg_kind
      "buffer", // src_desc
      "buffer", // weights_desc
      "pointer", // bias_desc (none)
      "buffer", // dst_desc
      "buffer", // strides
      "buffer", // padding_l
      "buffer", // padding_r
    ],
    result: "i32",
  },
  dnnl_convolution_backward_data_desc_init: {
    parameters: [
      "buffer", // conv_desc (out)
      "i32", // alg_kind
      "buffer", // diff_src_desc
      "buffer", // weights_desc
      "buffer", // diff_dst_desc
      "buffer", // strides
      "buffer", // padding_l
      "buffer", // padding_r
    ],
    result: "i32",
  },
  dnnl_convolution_backward_weights_desc_init: {
    parameters: [
      "buffer", // conv_desc (out)
      "i32", // alg_kind
      "buffer", // src_desc
      "buffer", // diff_weights_desc
      "pointer", // diff_bias_desc (none)
      "buffer", // diff_dst_desc
      "buffer", // strides
      "buffer", // padding_l
      "buffer", // padding_r
    ],
    result: "i32",
  },
  dnnl_batch_normalization_forward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "f32", "u32"],
    result: "i32",
  },
  dnnl_batch_normalization_backward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "f32", "u32"],
    result: "i32",
  },
  dnnl_binary_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  dnnl_eltwise_forward_desc_init: {
    parameters: ["buffer", "i32", "i32", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_eltwise_backward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_reduction_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_pooling_forward_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_pooling_backward_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_primitive_attr_create: { parameters: ["buffer"], result: "i32" },
  dnnl_primitive_attr_set_scratchpad_mode: {
    parameters: ["pointer", "i32"],
    result: "i32",
  },
  dnnl_post_ops_create: { parameters: ["buffer"], result: "i32" },
  dnnl_post_ops_append_eltwise: {
    parameters: ["pointer", "f32", "i32", "f32", "f32"],
    result: "i32",
  },
  dnnl_post_ops_append_sum: { parameters: ["pointer", "f32"], result: "i32" },
  dnnl_post_ops_append_binary: {
    parameters: ["pointer", "i32", "buffer"],
    result: "i32",
  },
  dnnl_primitive_attr_set_post_ops: {
    parameters: ["pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_desc_create: {
    parameters: ["buffer", "buffer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_reorder_primitive_desc_create: {
    parameters: ["buffer", "buffer", "pointer", "buffer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_desc_query: {
    parameters: ["pointer", "i32", "i32", "buffer"],
    result: "i32",
  },
  dnnl_primitive_desc_query_md: {
    parameters: ["pointer", "i32", "i32"],
    result: "pointer",
  },
  dnnl_primitive_create: { parameters: ["buffer", "pointer"], result: "i32" },
  dnnl_primitive_execute: {
    parameters: ["pointer", "pointer", "i32", "buffer"],
    result: "i32",
  },
  dnnl_memory_create: {
    parameters: ["buffer", "buffer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_memory_set_data_handle: {
    parameters: ["pointer", "pointer"],
    result: "i32",
  },
} as const;

type Symbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** Sizes of the 2.x structs, checked against the loaded library's version. */
const MEMORY_DESC_BYTES = 696;
const OP_DESC_BYTES = 5976;

/** Enum values of the 2.x headers (dnnl_types.h). */
export const F32 = 3;
export const FORMAT_ANY = 1;
/** `nchw` and `oihw` share a value: both are the plain a-b-c-d order. */
export const PLAIN_4D = 5;
export const PROP = {
  forwardTraining: 64,
  forwardInference: 96,
  backward: 128,
  backwardData: 160,
  backwardWeights: 192,
} as const;
/** Plain row-major order for 1 to 4 dimensions (dnnl_a .. dnnl_abcd). */
export const plainTag = (ndims: number): number => ndims + 1;
/** Algorithm kinds (dnnl_alg_kind_t). */
export const ALG = {
  eltwiseRelu: 0x1f,
  eltwiseReluUseDst: 0x100,
  binaryAdd: 0x1fff0,
  binaryMul: 0x1fff1,
  poolingMax: 0x1ff,
  reductionSum: 0x2fff4,
  reductionMean: 0x2fff6,
} as const;
/** Batch normalisation flags (dnnl_normalization_flags_t). */
export const BNORM = {
  globalStats: 0x1,
  fuseRelu: 0x4,
  scale: 0x8,
  shift: 0x10,
} as const;
export const CONVOLUTION_DIRECT = 1;
export const ARG = {
  src: 1,
  src1: 2,
  weights: 33,
  dst: 17,
  diffSrc: 129,
  diffWeights: 161,
  diffDst: 145,
  scratchpad: 80,
  mean: 49,
  variance: 50,
  scale: 51,
  shift: 52,
  workspace: 64,
  diffScale: 255,
  diffShift: 256,
} as const;

/**
 * The argument id of a binary post-op's second operand, the post-op at
 * `index` in the chain (DNNL_ARG_ATTR_MULTIPLE_POST_OP(index) | SRC_1).
 */
export const postOpSrc1 = (index: number): number =>
  16384 * (index + 1) | ARG.src1;
/**
 * A post-op: a sum (the result plus `sum` times what dst held) or a binary
 * op `binary` with a second operand of descriptor `md`.
 */
export type PostOp = { sum: number } | { binary: number; md: Uint8Array };

export const QUERY = {
  srcMd: 129,
  diffSrcMd: 130,
  weightsMd: 131,
  diffWeightsMd: 132,
  dstMd: 133,
  diffDstMd: 134,
  workspaceMd: 135,
  scratchpadMd: 136,
  implInfoStr: 8,
} as const;
const ENGINE_CPU = 1;
const STREAM_IN_ORDER = 1;
const SCRATCHPAD_USER = 1;

/** A handle that oneDNN created (engine, primitive, memory, ...). */
export type Handle = Deno.PointerObject;

/** The calls the convolution code makes, each checked. */
export class Dnnl {
  readonly path: string;
  readonly engine: Handle;
  readonly stream: Handle;
  /** Primitive attributes selecting user-provided scratchpad memory. */
  readonly userScratchpad: Handle;
  /** The same, and a ReLU applied to the result (a post-op). */
  readonly userScratchpadRelu: Handle;
  readonly #s: Symbols;
  readonly #out = new BigUint64Array(1);

  constructor(lib: Deno.DynamicLibrary<typeof symbols>, path: string) {
    this.path = path;
    this.#s = lib.symbols;
    this.engine = this.#handle(
      (o) => this.#s.dnnl_engine_create(o, ENGINE_CPU, 0n),
      "dnnl_engine_create",
    );
    this.stream = this.#handle(
      (o) => this.#s.dnnl_stream_create(o, this.engine, STREAM_IN_ORDER),
      "dnnl_stream_create",
    );
    this.userScratchpad = this.#attr();
    this.userScratchpadRelu = this.#attr();
    const postOps = this.#handle(
      (o) => this.#s.dnnl_post_ops_create(o),
      "dnnl_post_ops_create",
    );
    this.check(
      this.#s.dnnl_post_ops_append_eltwise(postOps, 1, ALG.eltwiseRelu, 0, 0),
      "dnnl_post_ops_append_eltwise",
    );
    this.check(
      this.#s.dnnl_primitive_attr_set_post_ops(
        this.userScratchpadRelu,
        postOps,
      ),
      "dnnl_primitive_attr_set_post_ops",
    );
  }

  /**
   * Attributes selecting user-provided scratchpad memory and applying
   * `postOps` to a primitive's result, in order: a sum (the result plus
   * `sum` times what dst held) or a binary op with a second operand of
   * descriptor `md` (given at execution as `postOpSrc1(its index)`).
   */
  postOpsAttr(postOps: PostOp[]): Handle {
    const attr = this.#attr();
    const chain = this.#handle(
      (o) => this.#s.dnnl_post_ops_create(o),
      "dnnl_post_ops_create",
    );
    for (const op of postOps) {
      if ("sum" in op) {
        this.check(
          this.#s.dnnl_post_ops_append_sum(chain, op.sum),
          "dnnl_post_ops_append_sum",
        );
      } else {
        this.check(
          this.#s.dnnl_post_ops_append_binary(chain, op.binary, op.md),
          "dnnl_post_ops_append_binary",
        );
      }
    }
    this.check(
      this.#s.dnnl_primitive_attr_set_post_ops(attr, chain),
      "dnnl_primitive_attr_set_post_ops",
    );
    return attr;
  }

  /** Primitive attributes selecting user-provided scratchpad memory. */
  #attr(): Handle {
    const attr = this.#handle(
      (o) => this.#s.dnnl_primitive_attr_create(o),
      "dnnl_primitive_attr_create",
    );
    this.check(
      this.#s.dnnl_primitive_attr_set_scratchpad_mode(attr, SCRATCHPAD_USER),
      "dnnl_primitive_attr_set_scratchpad_mode",
    );
    return attr;
  }

  /**
   * C = alpha op(A) op(B) + beta C, row-major, on oneDNN's own sgemm (its
   * OpenMP threads); beta 0 overwrites C without reading it.
   */
  sgemm(...args: SgemmArgs): void {
    const [transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc] = args;
    const t = (trans: boolean) => trans ? 84 : 78; // 'T', 'N'
    this.check(
      this.#s.dnnl_sgemm(
        t(transA),
        t(transB),
        BigInt(m),
        BigInt(n),
        BigInt(k),
        alpha,
        a,
        BigInt(lda),
        b,
        BigInt(ldb),
        beta,
        c,
        BigInt(ldc),
      ),
      "dnnl_sgemm",
    );
  }

  /** Throws an Error naming the call and oneDNN's status unless success. */
  check(status: number, call: string): void {
    if (status === 0) return;
    const name = this.#s.dnnl_status2str(status);
    const text = name === null
      ? `status ${status}`
      : Deno.UnsafePointerView.getCString(name);
    throw new Error(`oneDNN: ${call} failed: ${text}`);
  }

  /** Runs a call whose first argument is a handle out-parameter. */
  #handle(call: (out: BigUint64Array) => number, name: string): Handle {
    this.check(call(this.#out), name);
    const p = Deno.UnsafePointer.create(this.#out[0]);
    if (p === null) throw new Error(`oneDNN: ${name} returned no handle`);
    return p;
  }

  /** An f32 memory descriptor in plain order, or "any" for oneDNN to pick. */
  memoryDesc(dims: readonly number[], tag: number): Uint8Array {
    const md = new Uint8Array(MEMORY_DESC_BYTES);
    this.check(
      this.#s.dnnl_memory_desc_init_by_tag(
        md,
        dims.length,
        BigInt64Array.from(dims, BigInt),
        F32,
        tag,
      ),
      "dnnl_memory_desc_init_by_tag",
    );
    return md;
  }

  /** A copy of the memory descriptor that a primitive descriptor chose. */
  queryMd(pd: Handle, what: number): Uint8Array {
    const p = this.#s.dnnl_primitive_desc_query_md(pd, what, 0);
    const md = new Uint8Array(MEMORY_DESC_BYTES);
    if (p !== null) Deno.UnsafePointerView.copyInto(p, md);
    return md;
  }

  /** The implementation's name ("jit:avx2", "x64:gemm:jit", ...). */
  implementation(pd: Handle): string {
    const out = new BigUint64Array(1);
    this.check(
      this.#s.dnnl_primitive_desc_query(pd, QUERY.implInfoStr, 0, out),
      "dnnl_primitive_desc_query(impl_info_str)",
    );
    const p = Deno.UnsafePointer.create(out[0]);
    return p === null ? "" : Deno.UnsafePointerView.getCString(p);
  }

  mdEqual(a: Uint8Array, b: Uint8Array): boolean {
    return this.#s.dnnl_memory_desc_equal(a, b) !== 0;
  }

  /** Bytes of memory a descriptor describes (0 for an empty one). */
  mdBytes(md: Uint8Array): number {
    return Number(this.#s.dnnl_memory_desc_get_size(md));
  }

  /**
   * A convolution operation descriptor. `mds` are, in the C API's order:
   * forward (src, weights, dst), backward-data (diff_src, weights, diff_dst),
   * backward-weights (src, diff_weights, diff_dst).
   */
  convolutionDesc(
    prop: number,
    mds: [Uint8Array, Uint8Array, Uint8Array],
    strides: readonly number[],
    padL: readonly number[],
    padR: readonly number[],
  ): Uint8Array {
    const desc = new Uint8Array(OP_DESC_BYTES);
    const [a, b, c] = mds;
    const st = BigInt64Array.from(strides, BigInt);
    const pl = BigInt64Array.from(padL, BigInt);
    const pr = BigInt64Array.from(padR, BigInt);
    const s = this.#s;
    const alg = CONVOLUTION_DIRECT;
    if (prop === PROP.forwardTraining) {
      this.check(
        s.dnnl_convolution_forward_desc_init(
          desc,
          prop,
          alg,
          a,
          b,
          null,
          c,
          st,
          pl,
          pr,
        ),
        "dnnl_convolution_forward_desc_init",
      );
    } else if (prop === PROP.backwardData) {
      this.check(
        s.dnnl_convolution_backward_data_desc_init(
          desc,
          alg,
          a,
          b,
          c,
          st,
          pl,
          pr,
        ),
        "dnnl_convolution_backward_data_desc_init",
      );
    } else {
      this.check(
        s.dnnl_convolution_backward_weights_desc_init(
          desc,
          alg,
          a,
          b,
          null,
          c,
          st,
          pl,
          pr,
        ),
        "dnnl_convolution_backward_weights_desc_init",
      );
    }
    return desc;
  }

  /**
   * A batch normalisation descriptor: forward (training or inference) on
   * `data`, or backward (`prop` backward or backwardData) with `diff` the
   * layout of the gradients.
   */
  batchNormDesc(
    prop: number,
    data: Uint8Array,
    eps: number,
    flags: number,
    diff?: Uint8Array,
  ): Uint8Array {
    const desc = new Uint8Array(OP_DESC_BYTES);
    const s = this.#s;
    if (diff === undefined) {
      this.check(
        s.dnnl_batch_normalization_forward_desc_init(
          desc,
          prop,
          data,
          eps,
          flags,
        ),
        "dnnl_batch_normalization_forward_desc_init",
      );
    } else {
      this.check(
        s.dnnl_batch_normalization_backward_desc_init(
          desc,
          prop,
          diff,
          data,
          eps,
          flags,
        ),
        "dnnl_batch_normalization_backward_desc_init",
      );
    }
    return desc;
  }

  /** A binary descriptor: dst = alg(src0, src1). */
  binaryDesc(
    alg: number,
    src0: Uint8Array,
    src1: Uint8Array,
    dst: Uint8Array,
  ): Uint8Array {
    const desc = new Uint8Array(OP_DESC_BYTES);
    this.check(
      this.#s.dnnl_binary_desc_init(desc, alg, src0, src1, dst),
      "dnnl_binary_desc_init",
    );
    return desc;
  }

  /**
   * An elementwise descriptor: forward (`prop` forward training or
   * inference) on `data`, or with `diff` (the gradients' layout) backward.
   */
  eltwiseDesc(
    prop: number,
    alg: number,
    data: Uint8Array,
    alpha: number,
    beta: number,
    diff?: Uint8Array,
  ): Uint8Array {
    const desc = new Uint8Array(OP_DESC_BYTES);
    const s = this.#s;
    if (diff === undefined) {
      this.check(
        s.dnnl_eltwise_forward_desc_init(desc, prop, alg, data, alpha, beta),
        "dnnl_eltwise_forward_desc_init",
      );
    } else {
      this.check(
        s.dnnl_eltwise_backward_desc_init(desc, alg, diff, data, alpha, beta),
        "dnnl_eltwise_backward_desc_init",
      );
    }
    return desc;
  }

  /** A reduction descriptor: dst = alg over the dims where dst's are 1. */
  reductionDesc(alg: number, src: Uint8Array, dst: Uint8Array): Uint8Array {
    const desc = new Uint8Array(OP_DESC_BYTES);
    this.check(
      this.#s.dnnl_reduction_desc_init(desc, alg, src, dst, 0, 0),
      "dnnl_reduction_desc_init",
    );
    return desc;
  }

  /**
   * A pooling operation descriptor over 2-D windows: forward (`prop`
   * forward training or inference; mds src, dst) or, with `prop` backward,
   * backward (mds diff_src, diff_dst).
   */
  poolingDesc(
    prop: number,
    alg: number,
    [a, b]: [Uint8Array, Uint8Array],
    strides: readonly number[],
    kernel: readonly number[],
    padL: readonly number[],
    padR: readonly number[],
  ): Uint8Array {
    const desc = new Uint8Array(OP_DESC_BYTES);
    const dims = (d: readonly number[]) => BigInt64Array.from(d, BigInt);
    const [st, k, pl, pr] = [strides, kernel, padL, padR].map(dims);
    if (prop === PROP.backward) {
      this.check(
        this.#s.dnnl_pooling_backward_desc_init(desc, alg, a, b, st, k, pl, pr),
        "dnnl_pooling_backward_desc_init",
      );
    } else {
      this.check(
        this.#s.dnnl_pooling_forward_desc_init(
          desc,
          prop,
          alg,
          a,
          b,
          st,
          k,
          pl,
          pr,
        ),
        "dnnl_pooling_forward_desc_init",
      );
    }
    return desc;
  }

  /**
   * A primitive descriptor with `attr` (user scratchpad by default);
   * `hint` is a forward pd.
   */
  primitiveDesc(
    opDesc: Uint8Array,
    hint: Handle | null,
    what: string,
    attr: Handle = this.userScratchpad,
  ): Handle {
    return this.#handle(
      (o) =>
        this.#s.dnnl_primitive_desc_create(
          o,
          opDesc,
          attr,
          this.engine,
          hint,
        ),
      `dnnl_primitive_desc_create(${what})`,
    );
  }

  reorderDesc(from: Uint8Array, to: Uint8Array): Handle {
    return this.#handle(
      (o) =>
        this.#s.dnnl_reorder_primitive_desc_create(
          o,
          from,
          this.engine,
          to,
          this.engine,
          this.userScratchpad,
        ),
      "dnnl_reorder_primitive_desc_create",
    );
  }

  primitive(pd: Handle): Handle {
    return this.#handle(
      (o) => this.#s.dnnl_primitive_create(o, pd),
      "dnnl_primitive_create",
    );
  }

  /** A memory object without data; its data handle is set before each use. */
  memory(md: Uint8Array): Handle {
    return this.#handle(
      (o) => this.#s.dnnl_memory_create(o, md, this.engine, null),
      "dnnl_memory_create",
    );
  }

  setData(memory: Handle, data: Deno.PointerValue): void {
    this.check(
      this.#s.dnnl_memory_set_data_handle(memory, data),
      "dnnl_memory_set_data_handle",
    );
  }

  /**
   * Runs a primitive to completion. `args` holds (argument id, memory
   * handle) pairs, the layout of `dnnl_exec_arg_t`.
   */
  execute(primitive: Handle, args: BigUint64Array): void {
    this.check(
      this.#s.dnnl_primitive_execute(
        primitive,
        this.stream,
        args.length >> 1,
        args,
      ),
      "dnnl_primitive_execute",
    );
    this.check(this.#s.dnnl_stream_wait(this.stream), "dnnl_stream_wait");
  }
}

/** Encodes (argument id, memory handle) pairs as `dnnl_exec_arg_t[]`. */
export function execArgs(pairs: [number, Handle][]): BigUint64Array {
  const a = new BigUint64Array(2 * pairs.length);
  pairs.forEach(([id, memory], i) => {
    a[2 * i] = BigInt(id);
    a[2 * i + 1] = BigInt(Deno.UnsafePointer.value(memory));
  });
  return a;
}

const DEFAULT_NAME = "libdnnl.so.2";

let loaded: Dnnl | null | undefined;
let loadError: Error | null = null;

/**
 * oneDNN, loaded once per process on first use, or null when `MEC_DNNL` is
 * not set and the default library is not installed (it is optional). Throws
 * when `MEC_DNNL` names a file that cannot be loaded, or when the library
 * is not a 2.x release, whose struct layouts this binding assumes.
 */
export function tryDnnl(): Dnnl | null {
  if (loaded === undefined) {
    try {
      loaded = openDnnl();
    } catch (e) {
      loaded = null;
      loadError = e as Error;
    }
  }
  if (loaded === null && loadError !== null && Deno.env.get("MEC_DNNL")) {
    throw loadError;
  }
  return loaded;
}

/** oneDNN, or an Error saying how to install it. */
export function dnnl(): Dnnl {
  const d = tryDnnl();
  if (d === null) throw loadError!;
  return d;
}

function openDnnl(): Dnnl {
  const env = Deno.env.get("MEC_DNNL");
  const name = env || DEFAULT_NAME;
  configureOpenMp();
  let lib: Deno.DynamicLibrary<typeof symbols>;
  try {
    lib = Deno.dlopen(name, symbols);
  } catch (e) {
    const hint = env
      ? `MEC_DNNL names "${env}", which could not be loaded`
      : `oneDNN (${DEFAULT_NAME}) was not found`;
    throw new Error(
      `${hint}; install oneDNN 2.x (Debian/Ubuntu package libdnnl2: ` +
        `apt-get install libdnnl2) or set MEC_DNNL to the path of ` +
        `libdnnl.so.2. Loader said: ${(e as Error).message}`,
    );
  }
  const version = lib.symbols.dnnl_version();
  const major = version === null
    ? 0
    : new Deno.UnsafePointerView(version).getInt32(0);
  if (major !== 2) {
    lib.close();
    throw new Error(
      `${name} is oneDNN ${major}.x; the CPU backend needs oneDNN 2.x ` +
        `(Debian/Ubuntu package libdnnl2: apt-get install libdnnl2)`,
    );
  }
  return new Dnnl(lib, name);
}
