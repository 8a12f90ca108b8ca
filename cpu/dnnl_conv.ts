/**
 * Convolutions on oneDNN: per shape, the forward-training, backward-data and
 * backward-weights primitives, built once and cached.
 *
 * oneDNN's fast kernels work on blocked layouts of its own choosing (format
 * "any"), so each operand whose chosen layout differs from our plain NCHW /
 * OIHW one is reordered into a blocked copy before the primitive and, for
 * outputs, back afterwards. The blocked copies and every primitive's
 * scratchpad live in one workspace array from the backend's scratch memory;
 * memory objects are created once per shape and only their data pointers are
 * set on each call, so a call allocates nothing.
 *
 * @module
 */

import type { ConvDesc } from "../nn/backend.ts";
import type { Scratch } from "./conv.ts";
import {
  ARG,
  type Dnnl,
  FORMAT_ANY,
  type Handle,
  PLAIN_4D,
  PROP,
  QUERY,
} from "./dnnl.ts";

/** The three convolution ops. */
export type ConvOp = "forward" | "backwardData" | "backwardFilter";

/** Workspace offsets are multiples of this (a cache line, AVX-512's width). */
const ALIGN = 64;

/** One operand of a primitive, in the order the caller passes arrays. */
interface Operand {
  /** The caller's plain buffer. */
  user: Handle;
  /** The blocked copy the primitive uses, or null if it takes `user`. */
  inner: Handle | null;
  /** Byte offset of the blocked copy in the workspace. */
  offset: number;
  /** Reorder between `user` and `inner` (direction from `input`). */
  reorder: Handle | null;
  reorderArgs: BigUint64Array;
  input: boolean;
}

/** An op on one shape, ready to run. */
interface Plan {
  primitive: Handle;
  args: BigUint64Array;
  operands: Operand[];
  /** Scratchpad memory objects, all pointing at one shared region. */
  scratchpads: Handle[];
  scratchpadOffset: number;
  /** Workspace size in float32 elements, alignment slack included. */
  workspace: number;
  implementation: string;
}

/** A shape's plain descriptors, forward primitive descriptor and plans. */
interface Shape {
  x: Uint8Array;
  w: Uint8Array;
  y: Uint8Array;
  strides: number[];
  padL: number[];
  padR: number[];
  forwardPd: Handle;
  plans: Partial<Record<ConvOp, Plan>>;
}

/** Encodes (argument id, memory handle) pairs as `dnnl_exec_arg_t[]`. */
function execArgs(pairs: [number, Handle][]): BigUint64Array {
  const a = new BigUint64Array(2 * pairs.length);
  pairs.forEach(([id, memory], i) => {
    a[2 * i] = BigInt(id);
    a[2 * i + 1] = BigInt(Deno.UnsafePointer.value(memory));
  });
  return a;
}

/** A string naming a convolution shape (the output size follows). */
export function convKey(d: ConvDesc): string {
  return `${d.n},${d.c},${d.h},${d.w},${d.k},${d.r},${d.s},` +
    `${d.strideH},${d.strideW},${d.padH},${d.padW}`;
}

const roundUp = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;

/** Cached oneDNN convolutions of one backend. */
export class DnnlConvolutions {
  readonly #dnnl: Dnnl;
  readonly #scratch: Scratch;
  readonly #shapes = new Map<string, Shape>();

  /** `scratch` supplies the workspace (reordered operands, scratchpads). */
  constructor(dnnl: Dnnl, scratch: Scratch) {
    this.#dnnl = dnnl;
    this.#scratch = scratch;
  }

  forward(x: Float32Array, w: Float32Array, y: Float32Array, d: ConvDesc) {
    this.#run(this.#plan("forward", d), [x, w, y]);
  }

  backwardData(
    dy: Float32Array,
    w: Float32Array,
    dx: Float32Array,
    d: ConvDesc,
  ): void {
    this.#run(this.#plan("backwardData", d), [dy, w, dx]);
  }

  backwardFilter(
    x: Float32Array,
    dy: Float32Array,
    dw: Float32Array,
    d: ConvDesc,
  ): void {
    this.#run(this.#plan("backwardFilter", d), [x, dy, dw]);
  }

  /** The oneDNN implementation that runs `op` on `d` ("jit:avx2", ...). */
  implementation(op: ConvOp, d: ConvDesc): string {
    return this.#plan(op, d).implementation;
  }

  #shape(d: ConvDesc): Shape {
    const key = convKey(d);
    let shape = this.#shapes.get(key);
    if (shape !== undefined) return shape;
    const dn = this.#dnnl;
    const xDims = [d.n, d.c, d.h, d.w];
    const wDims = [d.k, d.c, d.r, d.s];
    const yDims = [d.n, d.k, d.oh, d.ow];
    // Our output size is PyTorch's (rounded down); oneDNN wants the right
    // padding that makes its size formula exact, which may be smaller than
    // the left padding, even negative (never below 1 - stride).
    const padR = [
      (d.oh - 1) * d.strideH + d.r - d.h - d.padH,
      (d.ow - 1) * d.strideW + d.s - d.w - d.padW,
    ];
    const strides = [d.strideH, d.strideW];
    const padL = [d.padH, d.padW];
    const forward = dn.convolutionDesc(
      PROP.forwardTraining,
      [
        dn.memoryDesc(xDims, FORMAT_ANY),
        dn.memoryDesc(wDims, FORMAT_ANY),
        dn.memoryDesc(yDims, FORMAT_ANY),
      ],
      strides,
      padL,
      padR,
    );
    shape = {
      x: dn.memoryDesc(xDims, PLAIN_4D),
      w: dn.memoryDesc(wDims, PLAIN_4D),
      y: dn.memoryDesc(yDims, PLAIN_4D),
      strides,
      padL,
      padR,
      forwardPd: dn.primitiveDesc(forward, null, "convolution forward"),
      plans: {},
    };
    this.#shapes.set(key, shape);
    return shape;
  }

  #plan(op: ConvOp, d: ConvDesc): Plan {
    const shape = this.#shape(d);
    const have = shape.plans[op];
    if (have !== undefined) return have;
    const dn = this.#dnnl;
    let pd: Handle;
    let operands: [number, number, Uint8Array, boolean][];
    if (op === "forward") {
      pd = shape.forwardPd;
      operands = [
        [ARG.src, QUERY.srcMd, shape.x, true],
        [ARG.weights, QUERY.weightsMd, shape.w, true],
        [ARG.dst, QUERY.dstMd, shape.y, false],
      ];
    } else {
      const backwardData = op === "backwardData";
      const xMd = dn.memoryDesc([d.n, d.c, d.h, d.w], FORMAT_ANY);
      const wMd = dn.memoryDesc([d.k, d.c, d.r, d.s], FORMAT_ANY);
      const yMd = dn.memoryDesc([d.n, d.k, d.oh, d.ow], FORMAT_ANY);
      const desc = dn.convolutionDesc(
        backwardData ? PROP.backwardData : PROP.backwardWeights,
        [xMd, wMd, yMd],
        shape.strides,
        shape.padL,
        shape.padR,
      );
      pd = dn.primitiveDesc(
        desc,
        shape.forwardPd,
        backwardData
          ? "convolution backward data"
          : "convolution backward weights",
      );
      operands = backwardData
        ? [
          [ARG.diffDst, QUERY.diffDstMd, shape.y, true],
          [ARG.weights, QUERY.weightsMd, shape.w, true],
          [ARG.diffSrc, QUERY.diffSrcMd, shape.x, false],
        ]
        : [
          [ARG.src, QUERY.srcMd, shape.x, true],
          [ARG.diffDst, QUERY.diffDstMd, shape.y, true],
          [ARG.diffWeights, QUERY.diffWeightsMd, shape.w, false],
        ];
    }

    let workspace = 0;
    let scratchpadBytes = 0;
    const scratchpads: Handle[] = [];
    /** Adds a scratchpad argument if the primitive wants one. */
    const withScratchpad = (p: Handle, pairs: [number, Handle][]) => {
      const md = dn.queryMd(p, QUERY.scratchpadMd);
      const bytes = dn.mdBytes(md);
      if (bytes > 0) {
        const memory = dn.memory(md);
        scratchpads.push(memory);
        pairs.push([ARG.scratchpad, memory]);
        scratchpadBytes = Math.max(scratchpadBytes, bytes);
      }
      return execArgs(pairs);
    };

    const mainPairs: [number, Handle][] = [];
    const planned: Operand[] = operands.map(([arg, query, plain, input]) => {
      const chosen = dn.queryMd(pd, query);
      const user = dn.memory(plain);
      if (dn.mdEqual(chosen, plain)) {
        mainPairs.push([arg, user]);
        return {
          user,
          inner: null,
          offset: 0,
          reorder: null,
          reorderArgs: new BigUint64Array(0),
          input,
        };
      }
      const inner = dn.memory(chosen);
      mainPairs.push([arg, inner]);
      const offset = workspace;
      workspace += roundUp(dn.mdBytes(chosen));
      const reorderPd = input
        ? dn.reorderDesc(plain, chosen)
        : dn.reorderDesc(chosen, plain);
      const reorder = dn.primitive(reorderPd);
      const reorderArgs = withScratchpad(reorderPd, [
        [ARG.src, input ? user : inner],
        [ARG.dst, input ? inner : user],
      ]);
      return { user, inner, offset, reorder, reorderArgs, input };
    });
    const args = withScratchpad(pd, mainPairs);
    const plan: Plan = {
      primitive: dn.primitive(pd),
      args,
      operands: planned,
      scratchpads,
      scratchpadOffset: workspace,
      workspace: Math.ceil((workspace + scratchpadBytes + ALIGN) / 4),
      implementation: dn.implementation(pd),
    };
    shape.plans[op] = plan;
    return plan;
  }

  /**
   * Runs a plan on the caller's arrays (in operand order). The arrays and
   * the workspace stay referenced here until every primitive has finished.
   */
  #run(plan: Plan, arrays: Float32Array[]): void {
    const dn = this.#dnnl;
    const workspace = this.#scratch(plan.workspace);
    const base = Deno.UnsafePointer.of(workspace)!;
    const skew = Number(Deno.UnsafePointer.value(base)) % ALIGN;
    const start = skew === 0 ? 0 : ALIGN - skew;
    const at = (offset: number) =>
      Deno.UnsafePointer.offset(base, start + offset);
    plan.operands.forEach((o, i) => {
      dn.setData(o.user, Deno.UnsafePointer.of(arrays[i]));
      if (o.inner !== null) dn.setData(o.inner, at(o.offset));
    });
    if (plan.scratchpads.length > 0) {
      const scratchpad = at(plan.scratchpadOffset);
      for (const m of plan.scratchpads) dn.setData(m, scratchpad);
    }
    for (const o of plan.operands) {
      if (o.input && o.reorder !== null) dn.execute(o.reorder, o.reorderArgs);
    }
    dn.execute(plan.primitive, plan.args);
    for (const o of plan.operands) {
      if (!o.input && o.reorder !== null) dn.execute(o.reorder, o.reorderArgs);
    }
  }
}
