/**
 * Activations kept in oneDNN's blocked layouts between the ops that read
 * them so, instead of being reordered to plain NCHW after every
 * convolution and back before the next.
 *
 * oneDNN's convolutions run on layouts of their own choosing (nChw16c on
 * AVX-512: sixteen channels side by side). A convolution whose output
 * would be reordered to NCHW writes it in that layout instead and tags the
 * buffer with it; batch norm (on oneDNN), ReLU, sums and the next
 * convolutions read and write the tagged data as it is (an elementwise op
 * does not care how elements are ordered, only that its operands agree).
 * Every other op, and every read of the data from outside the backend,
 * goes through `CpuBuffer.data`, which first rewrites a tagged buffer to
 * NCHW in place: plain unless proven otherwise, so an op that does not
 * know about layouts cannot misread one. In ResNet-50's MEC step the
 * reorders took 0.85 s of 4 s of convolutions.
 *
 * @module
 */

import { Scratch } from "./allocator.ts";
import {
  ARG,
  type Dnnl,
  execArgs,
  type Handle,
  PLAIN_4D,
  QUERY,
} from "./dnnl.ts";

/** One blocked layout of one shape, shared by every buffer that holds it. */
export interface BlockedLayout {
  /** oneDNN's memory descriptor of the data. */
  readonly md: Uint8Array;
  /** The NCHW dimensions. */
  readonly dims: readonly number[];
  /** Rewrites `data`, in this layout, as plain NCHW in place. */
  toPlain(data: Float32Array): void;
  /** Rewrites `data`, plain NCHW, in this layout in place. */
  fromPlain(data: Float32Array): void;
}

/**
 * The blocked layouts met so far, one object per memory descriptor, so
 * that two buffers in the same layout are told apart from others by
 * identity alone.
 */
export class Layouts {
  readonly #dnnl: Dnnl;
  readonly #byKey = new Map<string, BlockedLayout>();
  /** Where `toPlain` reorders to before copying back. */
  readonly #temp = new Scratch();

  constructor(dnnl: Dnnl) {
    this.#dnnl = dnnl;
  }

  /** The layout `md` describes, of an NCHW tensor of `dims`. */
  of(md: Uint8Array, dims: readonly number[]): BlockedLayout {
    const key = Array.from(md, (b) => b.toString(16)).join(",");
    let layout = this.#byKey.get(key);
    if (layout === undefined) {
      layout = this.#create(md, [...dims]);
      this.#byKey.set(key, layout);
    }
    return layout;
  }

  /** Bytes held for the reorders back to NCHW. */
  get bytes(): number {
    return this.#temp.bytes;
  }

  release(): void {
    this.#temp.release();
  }

  #create(md: Uint8Array, dims: number[]): BlockedLayout {
    const plain = this.#dnnl.memoryDesc(dims, PLAIN_4D);
    const length = dims.reduce((a, b) => a * b, 1);
    const toPlain = this.#reorder(md, plain, length);
    // Built on first use: most layouts are only ever read back.
    let fromPlain: ((data: Float32Array) => void) | null = null;
    return {
      md,
      dims,
      toPlain,
      fromPlain: (data) => {
        fromPlain ??= this.#reorder(plain, md, length);
        fromPlain(data);
      },
    };
  }

  /** A reorder of `length` elements from `fromMd` to `toMd`, in place. */
  #reorder(
    fromMd: Uint8Array,
    toMd: Uint8Array,
    length: number,
  ): (data: Float32Array) => void {
    const dn = this.#dnnl;
    const pd = dn.reorderDesc(fromMd, toMd);
    const primitive = dn.primitive(pd);
    const src = dn.memory(fromMd);
    const dst = dn.memory(toMd);
    const pairs: [number, Handle][] = [[ARG.src, src], [ARG.dst, dst]];
    const spMd = dn.queryMd(pd, QUERY.scratchpadMd);
    const spBytes = dn.mdBytes(spMd);
    let scratchpad: Float32Array | null = null;
    if (spBytes > 0) {
      const memory = dn.memory(spMd);
      scratchpad = new Float32Array(Math.ceil(spBytes / 4));
      dn.setData(memory, Deno.UnsafePointer.of(scratchpad));
      pairs.push([ARG.scratchpad, memory]);
    }
    const args = execArgs(pairs);
    const temp = this.#temp;
    return (data: Float32Array): void => {
      const out = temp.get(length);
      dn.setData(src, Deno.UnsafePointer.of(data));
      dn.setData(dst, Deno.UnsafePointer.of(out));
      dn.execute(primitive, args);
      data.set(out.subarray(0, length));
      // Keeps the scratchpad referenced as long as the primitive is.
      void scratchpad;
    };
  }
}
