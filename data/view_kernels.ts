/**
 * A view's heavy passes in WebAssembly SIMD (data/wasm/view_kernels.wat):
 * the crop's resampling, the Gaussian blur's six box passes and the final
 * ToTensor + Normalize + Solarize, each bit-identical to its TypeScript
 * counterpart in data/transforms.ts (float64 arithmetic on float32 values,
 * rounded where the TypeScript stores), two lanes at a time and without
 * the bounds checks that make V8's typed-array loops several times slower;
 * and brightness and contrast, the same formulas as in transforms.ts.
 * Saturation, hue and grayscale run in TypeScript on the same memory.
 *
 * One instance per thread, made on first use; its memory grows to the
 * largest image seen and stays. {@link viewKernels} is null where
 * WebAssembly SIMD is missing, and the views then take the TypeScript path.
 *
 * @module
 */

import type { RgbImage } from "./decode.ts";
import {
  adjustHue,
  adjustSaturation,
  type BlurScratch,
  boxRadiusForSigma,
  type FloatImage,
  gaussianBlur,
  grayscale,
  type NormalizeOptions,
  planResize,
} from "./transforms.ts";
import type { ViewDraw } from "./pipelines.ts";
import { decodeBase64 } from "./wasm/base64.ts";
import { VIEW_KERNELS_WASM } from "./wasm/view_kernels_wasm.ts";

interface Exports {
  memory: WebAssembly.Memory;
  resizeRows(
    src: number,
    srcStride: number,
    rows: number,
    outW: number,
    offsets: number,
    counts: number,
    weights: number,
    taps: number,
    tmp: number,
    flip: number,
  ): void;
  resizeColumns(
    tmp: number,
    rowLen: number,
    outH: number,
    starts: number,
    counts: number,
    weights: number,
    taps: number,
    out: number,
  ): void;
  blurRows(
    img: number,
    width: number,
    height: number,
    r: number,
    inner: number,
    edge: number,
    bufA: number,
    bufB: number,
  ): void;
  blurColumns(
    src: number,
    dst: number,
    width: number,
    height: number,
    r: number,
    inner: number,
    edge: number,
  ): void;
  brightness(img: number, n: number, factor: number): void;
  contrast(img: number, n: number, offset: number, factor: number): void;
  meanLuma(img: number, pixels: number): number;
  toTensor(
    src: number,
    plane: number,
    out: number,
    s0: number,
    s1: number,
    s2: number,
    h0: number,
    h1: number,
    h2: number,
    threshold: number,
  ): void;
}

/** Lays buffers out in the module's memory, each 16-byte aligned. */
class Layout {
  end = 0;
  /** The address of a new buffer of `bytes` bytes (plus 16 of slack). */
  take(bytes: number): number {
    const at = this.end;
    this.end += Math.ceil((bytes + 16) / 16) * 16;
    return at;
  }
}

/**
 * Memory kept between views: a module whose memory grew past this for a
 * huge photograph is replaced by a fresh one afterwards (WebAssembly memory
 * cannot shrink), so that one 48-megapixel image does not pin hundreds of
 * megabytes in every worker.
 */
const KEEP_BYTES = 64 * 1024 * 1024;

/** The kernels of this thread. */
export class ViewKernels {
  #module: WebAssembly.Module;
  #e: Exports;

  constructor() {
    this.#module = new WebAssembly.Module(decodeBase64(VIEW_KERNELS_WASM));
    this.#e = this.#instance();
  }

  /** The bytes of memory the module holds now. */
  get memoryBytes(): number {
    return this.#e.memory.buffer.byteLength;
  }

  #instance(): Exports {
    return new WebAssembly.Instance(this.#module).exports as unknown as Exports;
  }

  /** The module's memory, at least `bytes` long. */
  #memory(bytes: number): ArrayBufferLike {
    const memory = this.#e.memory;
    const have = memory.buffer.byteLength;
    if (have < bytes) memory.grow(Math.ceil((bytes - have) / 65536));
    return memory.buffer;
  }

  /**
   * What renderView computes (data/pipelines.ts): crop, resize and flip;
   * the draw's jitter and grayscale; the blur; Solarize, scaling,
   * Normalize and the transpose to CHW, written into `out` at `offset`.
   */
  render(
    image: RgbImage,
    draw: ViewDraw,
    size: number,
    normalize: NormalizeOptions | undefined,
    out: Float32Array,
    offset: number,
    blurScratch: BlurScratch,
  ): void {
    const plan = planResize(image, draw.crop, { width: size, height: size });
    const { box, cols, rows, outW, outH, firstRow, lastRow } = plan;
    const plane = outW * outH;
    if (offset + 3 * plane > out.length) {
      throw new RangeError(
        `renderView: ${
          3 * plane
        } values do not fit at offset ${offset} of ${out.length}`,
      );
    }
    const srcStride = image.width * 3;
    const rowLen = outW * 3;
    const rowCount = lastRow - firstRow;
    const layout = new Layout();
    const src = layout.take(rowCount * srcStride);
    const offsets = layout.take(4 * outW);
    const colCounts = layout.take(4 * outW);
    const colWeights = layout.take(4 * cols.weights.length);
    const rowStarts = layout.take(4 * outH);
    const rowCounts = layout.take(4 * outH);
    const rowWeights = layout.take(4 * rows.weights.length);
    const tmp = layout.take(4 * rowCount * rowLen);
    const work = layout.take(4 * 3 * plane);
    const other = layout.take(4 * 3 * plane);
    // Row buffers with room for the padding of radius-1 boxes (2 pixels).
    const bufA = layout.take(4 * (rowLen + 16)) + 32;
    const bufB = layout.take(4 * (rowLen + 16)) + 32;
    const tensor = layout.take(4 * 3 * plane);
    const memory = this.#memory(layout.end);

    const bytes = new Uint8Array(memory);
    const first = (box.top + firstRow) * srcStride;
    bytes.set(image.data.subarray(first, first + rowCount * srcStride), src);
    const ints = new Int32Array(memory);
    const floats = new Float32Array(memory);
    for (let x = 0; x < outW; x++) {
      ints[offsets / 4 + x] = (box.left + cols.start[x]) * 3;
    }
    ints.set(cols.count, colCounts / 4);
    floats.set(cols.weights, colWeights / 4);
    for (let y = 0; y < outH; y++) {
      ints[rowStarts / 4 + y] = rows.start[y] - firstRow;
    }
    ints.set(rows.count, rowCounts / 4);
    floats.set(rows.weights, rowWeights / 4);

    const e = this.#e;
    e.resizeRows(
      src,
      srcStride,
      rowCount,
      outW,
      offsets,
      colCounts,
      colWeights,
      cols.taps,
      tmp,
      plan.flip ? 1 : 0,
    );
    e.resizeColumns(
      tmp,
      rowLen,
      outH,
      rowStarts,
      rowCounts,
      rowWeights,
      rows.taps,
      work,
    );
    // colorJitter's steps in its order, skipping those it skips. Saturation,
    // hue and grayscale mix a pixel's three channels, which SIMD lanes do
    // no faster than V8: they run in TypeScript on the same memory.
    const image32: FloatImage = {
      width: outW,
      height: outH,
      data: floats.subarray(work / 4, work / 4 + 3 * plane),
    };
    const jitter = draw.jitter;
    for (const op of jitter?.order ?? []) {
      if (op === 0 && jitter!.brightness !== 1) {
        e.brightness(work, 3 * plane, jitter!.brightness);
      } else if (op === 1 && jitter!.contrast !== 1) {
        const mean = e.meanLuma(work, plane);
        e.contrast(
          work,
          3 * plane,
          mean * (1 - jitter!.contrast),
          jitter!.contrast,
        );
      } else if (op === 2 && jitter!.saturation !== 1) {
        adjustSaturation(image32, jitter!.saturation);
      } else if (op === 3 && jitter!.hue !== 0) {
        adjustHue(image32, jitter!.hue);
      }
    }
    if (draw.grey) grayscale(image32);
    let result = work;
    if (draw.sigma !== null) {
      const radius = boxRadiusForSigma(draw.sigma);
      const r = Math.floor(radius);
      if (r > 1) {
        gaussianBlur(image32, draw.sigma, blurScratch);
      } else {
        const inner = 1 / (2 * radius + 1);
        const edge = (radius - r) * inner;
        e.blurRows(work, outW, outH, r, inner, edge, bufA, bufB);
        e.blurColumns(work, other, outW, outH, r, inner, edge);
        e.blurColumns(other, work, outW, outH, r, inner, edge);
        e.blurColumns(work, other, outW, outH, r, inner, edge);
        result = other;
      }
    }
    const scale = [1, 1, 1];
    const shift = [0, 0, 0];
    for (let c = 0; c < 3; c++) {
      const std = normalize ? normalize.std[c] : 1;
      const mean = normalize ? normalize.mean[c] : 0;
      scale[c] = 1 / (255 * std);
      shift[c] = -mean / std;
    }
    e.toTensor(
      result,
      plane,
      tensor,
      scale[0],
      scale[1],
      scale[2],
      shift[0],
      shift[1],
      shift[2],
      draw.solarize ? 128 : Infinity,
    );
    out.set(floats.subarray(tensor / 4, tensor / 4 + 3 * plane), offset);
    if (memory.byteLength > KEEP_BYTES) this.#e = this.#instance();
  }
}

let kernels: ViewKernels | null | undefined;

/** This thread's kernels, made on first use; null without WebAssembly SIMD. */
export function viewKernels(): ViewKernels | null {
  if (kernels === undefined) {
    try {
      kernels = new ViewKernels();
    } catch {
      kernels = null;
    }
  }
  return kernels;
}
