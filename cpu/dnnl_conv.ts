/**
 * Convolutions on oneDNN: per shape, the forward-training, backward-data and
 * backward-weights primitives, built once and cached.
 *
 * oneDNN's fast kernels work on blocked layouts of its own choosing (format
 * "any"). An input already in the chosen layout (the output of an earlier
 * convolution, through batch norm and ReLU: layout.ts) is read as it is;
 * any other whose layout differs from the chosen one is reordered into a
 * blocked copy first. The activations a convolution writes (the forward's
 * output, the backward's gradient of the input) stay in the chosen layout
 * and the buffer is tagged with it; the weights' gradient is reordered
 * back to OIHW. The blocked copies and every primitive's scratchpad live in
 * one workspace array from the backend's scratch memory; memory objects are
 * created once per shape and only their data pointers are set on each
 * call, so a call allocates nothing.
 *
 * @module
 */

import type { ConvDesc } from "../nn/backend.ts";
import type { CpuBuffer } from "./backend.ts";
import type { Scratch } from "./conv.ts";
import type { BlockedLayout, Layouts } from "./layout.ts";
import {
  ARG,
  type Dnnl,
  execArgs,
  FORMAT_ANY,
  type Handle,
  PLAIN_4D,
  PROP,
  QUERY,
} from "./dnnl.ts";
import { keyForThreads } from "./threads.ts";

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
  /** The chosen layout, or null where it is the plain one. */
  layout: BlockedLayout | null;
  /** An output left in the chosen layout (an activation, not weights). */
  keepsLayout: boolean;
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
  readonly #layouts: Layouts;
  readonly #shapes = new Map<string, Shape>();

  /**
   * `scratch` supplies the workspace (reordered operands, scratchpads);
   * `layouts` names the blocked layouts outputs are left in.
   */
  constructor(dnnl: Dnnl, scratch: Scratch, layouts: Layouts) {
    this.#dnnl = dnnl;
    this.#scratch = scratch;
    this.#layouts = layouts;
  }

  forward(x: CpuBuffer, w: CpuBuffer, y: CpuBuffer, d: ConvDesc): void {
    this.#run(this.#plan("forward", d), [x, w, y]);
  }

  backwardData(dy: CpuBuffer, w: CpuBuffer, dx: CpuBuffer, d: ConvDesc) {
    this.#run(this.#plan("backwardData", d), [dy, w, dx]);
  }

  backwardFilter(x: CpuBuffer, dy: CpuBuffer, dw: CpuBuffer, d: ConvDesc) {
    this.#run(this.#plan("backwardFilter", d), [x, dy, dw]);
  }

  /** The oneDNN implementation that runs `op` on `d` ("jit:avx2", ...). */
  implementation(op: ConvOp, d: ConvDesc): string {
    return this.#plan(op, d).implementation;
  }

  /** A shape's descriptors and plans, for the thread count in force. */
  #shape(d: ConvDesc): Shape {
    const key = keyForThreads(convKey(d));
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
    const xDims = [d.n, d.c, d.h, d.w];
    const yDims = [d.n, d.k, d.oh, d.ow];
    const wDims = [d.k, d.c, d.r, d.s];
    // Argument, query, plain descriptor, dims, input?, activation?
    let operands: [number, number, Uint8Array, number[], boolean, boolean][];
    if (op === "forward") {
      pd = shape.forwardPd;
      operands = [
        [ARG.src, QUERY.srcMd, shape.x, xDims, true, true],
        [ARG.weights, QUERY.weightsMd, shape.w, wDims, true, false],
        [ARG.dst, QUERY.dstMd, shape.y, yDims, false, true],
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
          [ARG.diffDst, QUERY.diffDstMd, shape.y, yDims, true, true],
          [ARG.weights, QUERY.weightsMd, shape.w, wDims, true, false],
          [ARG.diffSrc, QUERY.diffSrcMd, shape.x, xDims, false, true],
        ]
        : [
          [ARG.src, QUERY.srcMd, shape.x, xDims, true, true],
          [ARG.diffDst, QUERY.diffDstMd, shape.y, yDims, true, true],
          [ARG.diffWeights, QUERY.diffWeightsMd, shape.w, wDims, false, false],
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
    const planned: Operand[] = operands.map((
      [arg, query, plain, dims, input, activation],
    ) => {
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
          layout: null,
          keepsLayout: false,
        };
      }
      const layout = this.#layouts.of(chosen, dims);
      // A layout with padding (channels not a multiple of its block) would
      // not fit in the tensor's buffer.
      const keepsLayout = activation && !input &&
        dn.mdBytes(chosen) === dn.mdBytes(plain);
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
      return {
        user,
        inner,
        offset,
        reorder,
        reorderArgs,
        input,
        layout,
        keepsLayout,
      };
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
   * Runs a plan on the caller's buffers (in operand order). The buffers and
   * the workspace stay referenced here until every primitive has finished.
   */
  #run(plan: Plan, buffers: CpuBuffer[]): void {
    const dn = this.#dnnl;
    // An operand used as it is: an input already in the chosen layout, an
    // output left in it. Every other input is made plain first (before the
    // workspace is taken: that may reorder), then reordered as planned.
    const direct = plan.operands.map((o, i) => {
      const b = buffers[i];
      if (!o.input) return o.keepsLayout;
      if (o.layout !== null && b.layout === o.layout) return true;
      void b.readPlain;
      return false;
    });
    const workspace = this.#scratch(plan.workspace);
    const base = Deno.UnsafePointer.of(workspace)!;
    const skew = Number(Deno.UnsafePointer.value(base)) % ALIGN;
    const start = skew === 0 ? 0 : ALIGN - skew;
    const at = (offset: number) =>
      Deno.UnsafePointer.offset(base, start + offset);
    plan.operands.forEach((o, i) => {
      // Inputs are only read: what is known of their values still holds.
      const b = buffers[i];
      const data = Deno.UnsafePointer.of(o.input ? b.read : b.raw);
      dn.setData(o.user, data);
      if (o.inner !== null) {
        dn.setData(o.inner, direct[i] ? data : at(o.offset));
      }
    });
    if (plan.scratchpads.length > 0) {
      const scratchpad = at(plan.scratchpadOffset);
      for (const m of plan.scratchpads) dn.setData(m, scratchpad);
    }
    plan.operands.forEach((o, i) => {
      if (o.input && o.reorder !== null && !direct[i]) {
        dn.execute(o.reorder, o.reorderArgs);
      }
    });
    dn.execute(plan.primitive, plan.args);
    plan.operands.forEach((o, i) => {
      if (o.input) return;
      if (o.reorder !== null && !direct[i]) {
        dn.execute(o.reorder, o.reorderArgs);
      }
      buffers[i].layout = direct[i] ? o.layout : null;
    });
  }
}
