/**
 * Image transforms with torchvision's semantics (on PIL images), written on
 * typed arrays with no per-pixel allocation.
 *
 * Decoded images are 8-bit RGB ({@link RgbImage}); the first geometric step
 * (a crop and resize) turns them into a {@link FloatImage}, interleaved RGB
 * floats on PIL's 0..255 scale, on which the colour operations work in place.
 * {@link toTensor} ends a pipeline: CHW floats in [0, 1], optionally
 * normalised. PIL rounds to 8 bits after every step; we keep floats between
 * steps, which differs from PIL by at most a level or two per step and makes
 * the operations exactly testable against their formulas.
 *
 * Geometry is fused: {@link resizedCrop} crops, resamples and optionally
 * mirrors in one separable pass, which is exactly what `crop`, `resize` and
 * `hflip` in a row compute.
 *
 * @module
 */

import type { Generator } from "../nn/random.ts";
import type { RgbImage } from "./decode.ts";

/** Interleaved RGB floats (HWC) on the 0..255 scale. */
export interface FloatImage {
  width: number;
  height: number;
  /** `width * height * 3` values. */
  data: Float32Array;
}

/** A rectangle of pixels: rows `top..top+height`, columns `left..left+width`. */
export interface CropBox {
  top: number;
  left: number;
  height: number;
  width: number;
}

/** Python's `round`: halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The scale and aspect-ratio ranges of RandomResizedCrop. */
export interface RandomResizedCropOptions {
  /** Range of the crop's area as a fraction of the image's (default [0.08, 1]). */
  scale?: readonly [number, number];
  /** Range of the crop's width / height, drawn log-uniformly (default [3/4, 4/3]). */
  ratio?: readonly [number, number];
}

/**
 * The box of torchvision's `RandomResizedCrop.get_params`: up to ten draws of
 * an area fraction (uniform in `scale`) and an aspect ratio (log-uniform in
 * `ratio`) until the box fits, then the central crop clamped to the ratio
 * range.
 */
export function randomResizedCropBox(
  gen: Generator,
  width: number,
  height: number,
  { scale = [0.08, 1], ratio = [3 / 4, 4 / 3] }: RandomResizedCropOptions = {},
): CropBox {
  const area = width * height;
  const logLow = Math.log(ratio[0]);
  const logHigh = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const target = area * gen.uniform(scale[0], scale[1]);
    const aspect = Math.exp(gen.uniform(logLow, logHigh));
    const w = roundHalfEven(Math.sqrt(target * aspect));
    const h = roundHalfEven(Math.sqrt(target / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = gen.integer(0, height - h + 1);
      const left = gen.integer(0, width - w + 1);
      return { top, left, height: h, width: w };
    }
  }
  const inRatio = width / height;
  let w = width;
  let h = height;
  if (inRatio < Math.min(ratio[0], ratio[1])) {
    h = roundHalfEven(w / Math.min(ratio[0], ratio[1]));
  } else if (inRatio > Math.max(ratio[0], ratio[1])) {
    w = roundHalfEven(h * Math.max(ratio[0], ratio[1]));
  }
  return {
    top: Math.floor((height - h) / 2),
    left: Math.floor((width - w) / 2),
    height: h,
    width: w,
  };
}

/**
 * The size torchvision's `Resize(size)` gives an image: the shorter side
 * becomes `size`, the longer keeps the aspect ratio (truncated).
 */
export function resizeShorterSize(
  width: number,
  height: number,
  size: number,
): { width: number; height: number } {
  if (width <= height) {
    return { width: size, height: Math.floor((size * height) / width) };
  }
  return { width: Math.floor((size * width) / height), height: size };
}

/** The box of torchvision's `CenterCrop(size)` (rounding as Python does). */
export function centerCropBox(
  width: number,
  height: number,
  size: number,
): CropBox {
  if (size > width || size > height) {
    throw new RangeError(
      `centerCropBox: a ${size}-pixel crop does not fit a ${width}x${height} image`,
    );
  }
  return {
    top: roundHalfEven((height - size) / 2),
    left: roundHalfEven((width - size) / 2),
    height: size,
    width: size,
  };
}

/**
 * PIL's resampling weights along one axis for bilinear ("triangle")
 * interpolation, including its antialiasing: when shrinking by a factor s
 * the triangle is stretched by s, so every input pixel contributes.
 * Output pixel `o` reads `count[o]` inputs from `start[o]` with weights
 * `weights[o * taps ...]`.
 */
export interface ResampleTable {
  start: Int32Array;
  count: Int32Array;
  taps: number;
  weights: Float32Array;
}

/**
 * Builds the table that maps `inSize` pixels onto `outSize` (PIL's
 * `precompute_coeffs` with the bilinear filter, support 1). `first` and
 * `length` select a window of the output (CenterCrop after Resize) without
 * computing the rest.
 */
export function resampleTable(
  inSize: number,
  outSize: number,
  first = 0,
  length = outSize - first,
): ResampleTable {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(length);
  const count = new Int32Array(length);
  const weights = new Float32Array(length * taps);
  const inverse = 1 / filterScale;
  for (let o = 0; o < length; o++) {
    const center = (first + o + 0.5) * scale;
    // C's (int) truncates toward zero; the clamp makes the sign moot.
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    let total = 0;
    for (let k = 0; k < hi - lo; k++) {
      const w = Math.max(0, 1 - Math.abs((k + lo - center + 0.5) * inverse));
      weights[o * taps + k] = w;
      total += w;
    }
    for (let k = 0; k < hi - lo; k++) weights[o * taps + k] /= total;
    start[o] = lo;
    count[o] = hi - lo;
  }
  return { start, count, taps, weights };
}

/** Where {@link resizedCrop} draws its output from. */
export interface ResizedCropSpec {
  /** The region of the source that is resized. */
  box: CropBox;
  /** The size the region is resized to. */
  resizeWidth: number;
  resizeHeight: number;
  /**
   * The window of the resized region that is kept (default: all of it);
   * Resize followed by CenterCrop keeps a centred window.
   */
  window?: CropBox;
  /** Mirror left-right (RandomHorizontalFlip), folded into the resampling. */
  flip?: boolean;
}

/** Reusable work memory for {@link resizedCrop}; grows as needed. */
export class ResizeScratch {
  #rows = new Float32Array(0);
  #offsets = new Int32Array(0);

  /** A buffer of at least `n` floats. */
  rows(n: number): Float32Array {
    if (this.#rows.length < n) this.#rows = new Float32Array(n);
    return this.#rows;
  }

  /** A buffer of at least `n` integers. */
  offsets(n: number): Int32Array {
    if (this.#offsets.length < n) this.#offsets = new Int32Array(n);
    return this.#offsets;
  }
}

/** What {@link resizedCrop} computes from, checked against the image. */
export interface ResizePlan {
  box: CropBox;
  /** The horizontal and vertical weights, windowed. */
  cols: ResampleTable;
  rows: ResampleTable;
  outW: number;
  outH: number;
  /** The box's rows that the vertical pass reads: firstRow..lastRow-1. */
  firstRow: number;
  lastRow: number;
  flip: boolean;
}

/**
 * The resampling tables of `spec` for `src`, after checking that the box
 * lies inside the image and that `out` has the window's size.
 */
export function planResize(
  src: { width: number; height: number },
  spec: ResizedCropSpec,
  out: { width: number; height: number },
): ResizePlan {
  const { box, resizeWidth, resizeHeight, flip = false } = spec;
  const window = spec.window ??
    { top: 0, left: 0, width: resizeWidth, height: resizeHeight };
  if (
    box.left < 0 || box.top < 0 || box.width < 1 || box.height < 1 ||
    box.left + box.width > src.width || box.top + box.height > src.height
  ) {
    throw new RangeError(
      `resizedCrop: box ${
        JSON.stringify(box)
      } is outside a ${src.width}x${src.height} image`,
    );
  }
  if (out.width !== window.width || out.height !== window.height) {
    throw new RangeError(
      `resizedCrop: output is ${out.width}x${out.height}, window is ${window.width}x${window.height}`,
    );
  }
  const cols = resampleTable(box.width, resizeWidth, window.left, window.width);
  const rows = resampleTable(
    box.height,
    resizeHeight,
    window.top,
    window.height,
  );
  const outH = window.height;
  return {
    box,
    cols,
    rows,
    outW: window.width,
    outH,
    firstRow: rows.start[0],
    lastRow: rows.start[outH - 1] + rows.count[outH - 1],
    flip,
  };
}

/**
 * Crop, bilinear resize (antialiased like PIL) and optional mirror in one
 * pass, horizontal then vertical as PIL does. Writes `out` (its
 * width/height must be the window's) and returns it.
 */
export function resizedCrop(
  src: RgbImage,
  spec: ResizedCropSpec,
  out: FloatImage,
  scratch: ResizeScratch = new ResizeScratch(),
): FloatImage {
  const { box, cols, rows, outW, outH, firstRow, lastRow, flip } = planResize(
    src,
    spec,
    out,
  );
  const rowLen = outW * 3;
  const tmp = scratch.rows((lastRow - firstRow) * rowLen);
  const s = src.data;
  const srcStride = src.width * 3;

  // Horizontal pass: each needed source row to outW columns, one output
  // column at a time down all the rows, so that its weights stay in
  // registers and the tap count is branched on once per column (V8 runs
  // this about twice as fast as the plain loop over taps per pixel). The
  // sums are the plain loop's, in the same order. Mirroring writes output
  // column x at outW - 1 - x.
  const cw = cols.weights;
  const ct = cols.taps;
  const rowCount = lastRow - firstRow;
  const firstBase = (box.top + firstRow) * srcStride;
  for (let x = 0; x < outW; x++) {
    const n = cols.count[x];
    const wb = x * ct;
    let p = firstBase + (box.left + cols.start[x]) * 3;
    let q = (flip ? outW - 1 - x : x) * 3;
    // A table has at least three taps; the fourth exists when n > 3.
    const w0 = cw[wb], w1 = cw[wb + 1], w2 = cw[wb + 2];
    const w3 = n > 3 ? cw[wb + 3] : 0;
    if (n === 3) {
      for (let r = 0; r < rowCount; r++, p += srcStride, q += rowLen) {
        tmp[q] = w0 * s[p] + w1 * s[p + 3] + w2 * s[p + 6];
        tmp[q + 1] = w0 * s[p + 1] + w1 * s[p + 4] + w2 * s[p + 7];
        tmp[q + 2] = w0 * s[p + 2] + w1 * s[p + 5] + w2 * s[p + 8];
      }
    } else if (n === 4) {
      for (let r = 0; r < rowCount; r++, p += srcStride, q += rowLen) {
        tmp[q] = w0 * s[p] + w1 * s[p + 3] + w2 * s[p + 6] + w3 * s[p + 9];
        tmp[q + 1] = w0 * s[p + 1] + w1 * s[p + 4] + w2 * s[p + 7] +
          w3 * s[p + 10];
        tmp[q + 2] = w0 * s[p + 2] + w1 * s[p + 5] + w2 * s[p + 8] +
          w3 * s[p + 11];
      }
    } else if (n === 5) {
      const w4 = cw[wb + 4];
      for (let r = 0; r < rowCount; r++, p += srcStride, q += rowLen) {
        tmp[q] = w0 * s[p] + w1 * s[p + 3] + w2 * s[p + 6] + w3 * s[p + 9] +
          w4 * s[p + 12];
        tmp[q + 1] = w0 * s[p + 1] + w1 * s[p + 4] + w2 * s[p + 7] +
          w3 * s[p + 10] + w4 * s[p + 13];
        tmp[q + 2] = w0 * s[p + 2] + w1 * s[p + 5] + w2 * s[p + 8] +
          w3 * s[p + 11] + w4 * s[p + 14];
      }
    } else {
      for (let r = 0; r < rowCount; r++, p += srcStride, q += rowLen) {
        let red = 0, green = 0, blue = 0;
        for (let k = 0, i = p; k < n; k++, i += 3) {
          const w = cw[wb + k];
          red += w * s[i], green += w * s[i + 1], blue += w * s[i + 2];
        }
        tmp[q] = red, tmp[q + 1] = green, tmp[q + 2] = blue;
      }
    }
  }

  // Vertical pass: a weighted sum of whole rows, contiguous in memory. Up
  // to three rows are summed in one sweep, each partial sum rounded to
  // float32 as storing it between rows would (so the result is the same as
  // one row at a time), and further rows are added a row at a time.
  const d = out.data;
  const rw = rows.weights;
  const rt = rows.taps;
  const fr = Math.fround;
  for (let y = 0; y < outH; y++) {
    const o = y * rowLen;
    const n = rows.count[y];
    const a = (rows.start[y] - firstRow) * rowLen;
    const w0 = rw[y * rt];
    if (n === 1) {
      for (let i = 0; i < rowLen; i++) d[o + i] = w0 * tmp[a + i];
      continue;
    }
    const b = a + rowLen;
    const w1 = rw[y * rt + 1];
    if (n === 2) {
      for (let i = 0; i < rowLen; i++) {
        d[o + i] = fr(w0 * tmp[a + i]) + w1 * tmp[b + i];
      }
      continue;
    }
    const c = b + rowLen;
    const w2 = rw[y * rt + 2];
    for (let i = 0; i < rowLen; i++) {
      d[o + i] = fr(fr(w0 * tmp[a + i]) + w1 * tmp[b + i]) + w2 * tmp[c + i];
    }
    for (let k = 3; k < n; k++) {
      const w = rw[y * rt + k];
      const t = a + k * rowLen;
      for (let i = 0; i < rowLen; i++) d[o + i] += w * tmp[t + i];
    }
  }
  return out;
}

/** Mirrors an image left-right in place (RandomHorizontalFlip). */
export function hflip(image: FloatImage): FloatImage {
  const { width, height, data } = image;
  for (let y = 0; y < height; y++) {
    let a = y * width * 3;
    let b = a + (width - 1) * 3;
    for (; a < b; a += 3, b -= 3) {
      for (let c = 0; c < 3; c++) {
        const t = data[a + c];
        data[a + c] = data[b + c];
        data[b + c] = t;
      }
    }
  }
  return image;
}

/** ITU-R 601-2 luma weights, as PIL's `convert("L")`. */
const LUMA_R = 0.299;
const LUMA_G = 0.587;
const LUMA_B = 0.114;

function clamp255(x: number): number {
  return x < 0 ? 0 : x > 255 ? 255 : x;
}

/** ColorJitter's strengths, as torchvision's constructor takes them. */
export interface ColorJitterOptions {
  brightness?: number;
  contrast?: number;
  saturation?: number;
  hue?: number;
}

/** One draw of ColorJitter: the factors and the order they apply in. */
export interface ColorJitterParams {
  /** Indices into [brightness, contrast, saturation, hue]. */
  order: number[];
  brightness: number;
  contrast: number;
  saturation: number;
  /** A rotation of the hue, in turns (-0.5..0.5). */
  hue: number;
}

/**
 * Draws ColorJitter's parameters as torchvision's `get_params`: a random
 * order of the four adjustments, factors uniform in [max(0, 1-s), 1+s] and a
 * hue shift uniform in [-h, h].
 */
export function colorJitterParams(
  gen: Generator,
  { brightness = 0, contrast = 0, saturation = 0, hue = 0 }: ColorJitterOptions,
): ColorJitterParams {
  const order = Array.from(gen.permutation(4));
  const factor = (s: number) => gen.uniform(Math.max(0, 1 - s), 1 + s);
  return {
    order,
    brightness: factor(brightness),
    contrast: factor(contrast),
    saturation: factor(saturation),
    hue: gen.uniform(-hue, hue),
  };
}

/** Scales every value by `factor` (PIL's ImageEnhance.Brightness). */
export function adjustBrightness(
  image: FloatImage,
  factor: number,
): FloatImage {
  const d = image.data;
  for (let i = 0; i < d.length; i++) d[i] = clamp255(d[i] * factor);
  return image;
}

/** The mean luma, rounded to an integer as PIL's ImageEnhance.Contrast does. */
export function meanLuma(image: FloatImage): number {
  const d = image.data;
  let sum = 0;
  for (let i = 0; i < d.length; i += 3) {
    sum += LUMA_R * d[i] + LUMA_G * d[i + 1] + LUMA_B * d[i + 2];
  }
  return Math.floor(sum / (d.length / 3) + 0.5);
}

/** Blends with the image's mean grey level (PIL's ImageEnhance.Contrast). */
export function adjustContrast(image: FloatImage, factor: number): FloatImage {
  const mean = meanLuma(image);
  const d = image.data;
  const offset = mean * (1 - factor);
  for (let i = 0; i < d.length; i++) d[i] = clamp255(offset + factor * d[i]);
  return image;
}

/** Blends each pixel with its grey level (PIL's ImageEnhance.Color). */
export function adjustSaturation(
  image: FloatImage,
  factor: number,
): FloatImage {
  const d = image.data;
  const keep = 1 - factor;
  for (let i = 0; i < d.length; i += 3) {
    const l = keep * (LUMA_R * d[i] + LUMA_G * d[i + 1] + LUMA_B * d[i + 2]);
    d[i] = clamp255(l + factor * d[i]);
    d[i + 1] = clamp255(l + factor * d[i + 1]);
    d[i + 2] = clamp255(l + factor * d[i + 2]);
  }
  return image;
}

/**
 * Rotates the hue by `shift` turns: each pixel to HSV, the hue moved round
 * the circle, back to RGB (torchvision's `adjust_hue`).
 */
export function adjustHue(image: FloatImage, shift: number): FloatImage {
  const d = image.data;
  for (let i = 0; i < d.length; i += 3) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    const max = Math.max(r, g, b);
    const min = Math.min(r, g, b);
    const chroma = max - min;
    if (chroma === 0) continue; // grey: no hue to rotate
    let h: number;
    if (max === r) h = (g - b) / chroma;
    else if (max === g) h = 2 + (b - r) / chroma;
    else h = 4 + (r - g) / chroma;
    h = h / 6 + shift;
    h -= Math.floor(h);
    // Back from (h, chroma, max): the sector and the position in it.
    const h6 = h * 6;
    const sector = Math.floor(h6);
    const f = h6 - sector;
    const p = min;
    const q = max - chroma * f;
    const t = min + chroma * f;
    switch (sector) {
      case 0:
        d[i] = max, d[i + 1] = t, d[i + 2] = p;
        break;
      case 1:
        d[i] = q, d[i + 1] = max, d[i + 2] = p;
        break;
      case 2:
        d[i] = p, d[i + 1] = max, d[i + 2] = t;
        break;
      case 3:
        d[i] = p, d[i + 1] = q, d[i + 2] = max;
        break;
      case 4:
        d[i] = t, d[i + 1] = p, d[i + 2] = max;
        break;
      default:
        d[i] = max, d[i + 1] = p, d[i + 2] = q;
    }
  }
  return image;
}

/** Applies one ColorJitter draw in its drawn order. */
export function colorJitter(
  image: FloatImage,
  params: ColorJitterParams,
): FloatImage {
  for (const op of params.order) {
    if (op === 0 && params.brightness !== 1) {
      adjustBrightness(image, params.brightness);
    } else if (op === 1 && params.contrast !== 1) {
      adjustContrast(image, params.contrast);
    } else if (op === 2 && params.saturation !== 1) {
      adjustSaturation(image, params.saturation);
    } else if (op === 3 && params.hue !== 0) {
      adjustHue(image, params.hue);
    }
  }
  return image;
}

/** Replaces each pixel by its ITU-R 601-2 luma in all three channels. */
export function grayscale(image: FloatImage): FloatImage {
  const d = image.data;
  for (let i = 0; i < d.length; i += 3) {
    const l = LUMA_R * d[i] + LUMA_G * d[i + 1] + LUMA_B * d[i + 2];
    d[i] = l;
    d[i + 1] = l;
    d[i + 2] = l;
  }
  return image;
}

/** Inverts values at or above `threshold` (PIL's ImageOps.solarize). */
export function solarize(image: FloatImage, threshold = 128): FloatImage {
  const d = image.data;
  for (let i = 0; i < d.length; i++) {
    if (d[i] >= threshold) d[i] = 255 - d[i];
  }
  return image;
}

/**
 * The box radius of PIL's Gaussian blur: three passes of an "extended box"
 * (a box with fractional ends) have variance sigma^2 (Gwosdek et al. 2011,
 * as PIL's `_gaussian_blur_radius`).
 */
export function boxRadiusForSigma(sigma: number, passes = 3): number {
  const sigma2 = (sigma * sigma) / passes;
  const length = Math.sqrt(12 * sigma2 + 1);
  const l = Math.floor((length - 1) / 2);
  const a = ((2 * l + 1) * (l * (l + 1) - 3 * sigma2)) /
    (6 * (sigma2 - (l + 1) * (l + 1)));
  return l + a;
}

/** Reusable work memory for {@link gaussianBlur}; grows as needed. */
export class BlurScratch {
  #buffer = new Float32Array(0);

  /** A buffer of at least `n` floats. */
  buffer(n: number): Float32Array {
    if (this.#buffer.length < n) this.#buffer = new Float32Array(n);
    return this.#buffer;
  }
}

/**
 * Gaussian blur of standard deviation `sigma` pixels as PIL's
 * `ImageFilter.GaussianBlur(radius=sigma)` computes it (which MEC's
 * augmentation uses): three extended-box passes per axis, edges extended by
 * repeating the border pixels.
 *
 * A box of radius r + a (0 <= a < 1) averages 2r + 1 pixels with weight
 * 1 / (2(r + a) + 1) and the two next ones with weight a / (2(r + a) + 1).
 * For sigma up to 2, r is 0 or 1, so each pass sums at most five
 * neighbours directly; the six passes alternate between the image and one
 * scratch buffer, ending in the image. Every pixel, at the edges too, is
 * summed in one order (the centre, then each pair of neighbours, then the
 * two fractional ends), which data/view_kernels.ts repeats bit for bit.
 */
export function gaussianBlur(
  image: FloatImage,
  sigma: number,
  scratch: BlurScratch = new BlurScratch(),
): FloatImage {
  const radius = boxRadiusForSigma(sigma);
  const whole = Math.floor(radius);
  const inner = 1 / (2 * radius + 1);
  const edge = (radius - whole) * inner;
  const { width, height, data } = image;
  const other = scratch.buffer(data.length).subarray(0, data.length);
  boxRows(data, other, width, height, whole, inner, edge);
  boxRows(other, data, width, height, whole, inner, edge);
  boxRows(data, other, width, height, whole, inner, edge);
  boxColumns(other, data, width, height, whole, inner, edge);
  boxColumns(data, other, width, height, whole, inner, edge);
  boxColumns(other, data, width, height, whole, inner, edge);
  return image;
}

function clampIndex(k: number, size: number): number {
  return k < 0 ? 0 : k >= size ? size - 1 : k;
}

/**
 * One horizontal extended-box pass from `src` to `dst` (interleaved RGB),
 * row by row.
 */
function boxRows(
  src: Float32Array,
  dst: Float32Array,
  width: number,
  height: number,
  r: number,
  inner: number,
  edge: number,
): void {
  for (let y = 0; y < height; y++) {
    const row = y * width * 3;
    boxRow(src, row, dst, row, width, r, inner, edge);
  }
}

/**
 * One horizontal extended-box pass over one row of `width` RGB pixels, from
 * `src` at `from` to `dst` at `to`: pixels whose window lies inside the row
 * are summed without bounds checks, the few near the ends with the index
 * clamped to the row.
 */
function boxRow(
  src: Float32Array,
  from: number,
  dst: Float32Array,
  to: number,
  width: number,
  r: number,
  inner: number,
  edge: number,
): void {
  const reach = r + 1;
  const far = 3 * reach;
  const shift = to - from;
  const interiorEnd = from + (width - reach) * 3;
  for (let x = 0; x < width; x++) {
    if (x === reach && reach < width - reach) {
      // Interior: every channel the same way, no clamping; the usual radii
      // have loops of their own, which V8 compiles far better than the
      // general one.
      const first = from + far;
      if (r === 0) {
        for (let e = first; e < interiorEnd; e++) {
          dst[e + shift] = inner * src[e] + edge * (src[e - 3] + src[e + 3]);
        }
      } else if (r === 1) {
        for (let e = first; e < interiorEnd; e++) {
          dst[e + shift] = inner * (src[e] + (src[e - 3] + src[e + 3])) +
            edge * (src[e - 6] + src[e + 6]);
        }
      } else {
        for (let e = first; e < interiorEnd; e++) {
          let sum = src[e];
          for (let k = 3; k <= 3 * r; k += 3) sum += src[e - k] + src[e + k];
          dst[e + shift] = inner * sum + edge * (src[e - far] + src[e + far]);
        }
      }
      x = width - reach - 1;
      continue;
    }
    for (let c = 0; c < 3; c++) {
      const base = from + c;
      let sum = src[base + 3 * clampIndex(x, width)];
      for (let k = 1; k <= r; k++) {
        sum += src[base + 3 * clampIndex(x - k, width)] +
          src[base + 3 * clampIndex(x + k, width)];
      }
      dst[base + shift + 3 * x] = inner * sum +
        edge * (src[base + 3 * clampIndex(x - reach, width)] +
            src[base + 3 * clampIndex(x + reach, width)]);
    }
  }
}

/**
 * One vertical extended-box pass from `src` to `dst`, a whole row at a
 * time so every access is contiguous; row indices are clamped to the image.
 */
function boxColumns(
  src: Float32Array,
  dst: Float32Array,
  width: number,
  height: number,
  r: number,
  inner: number,
  edge: number,
): void {
  const rowLen = width * 3;
  const rowAt = (y: number) =>
    (y < 0 ? 0 : y >= height ? height - 1 : y) * rowLen;
  for (let y = 0; y < height; y++) {
    boxColumnRow(src, rowAt, y, dst, y * rowLen, rowLen, r, inner, edge);
  }
}

/**
 * Row `y` of one vertical extended-box pass: `rowAt(j)` is where source
 * row j (clamped to the image by the caller) starts in `src`, and the row
 * of `rowLen` values is written to `dst` at `to`.
 */
function boxColumnRow(
  src: Float32Array,
  rowAt: (j: number) => number,
  y: number,
  dst: Float32Array,
  to: number,
  rowLen: number,
  r: number,
  inner: number,
  edge: number,
): void {
  const above = rowAt(y - r - 1);
  const below = rowAt(y + r + 1);
  const centre = rowAt(y);
  if (r === 1) {
    const up = rowAt(y - 1);
    const down = rowAt(y + 1);
    for (let i = 0; i < rowLen; i++) {
      dst[to + i] = inner * (src[centre + i] + (src[up + i] + src[down + i])) +
        edge * (src[above + i] + src[below + i]);
    }
    return;
  }
  for (let i = 0; i < rowLen; i++) {
    dst[to + i] = inner * src[centre + i] +
      edge * (src[above + i] + src[below + i]);
  }
  for (let k = 1; k <= r; k++) {
    const up = rowAt(y - k);
    const down = rowAt(y + k);
    for (let i = 0; i < rowLen; i++) {
      dst[to + i] += inner * (src[up + i] + src[down + i]);
    }
  }
}

/** Per-channel mean and standard deviation for {@link toTensor}. */
export interface NormalizeOptions {
  mean: readonly [number, number, number];
  std: readonly [number, number, number];
}

/** ImageNet's channel statistics, as torchvision's examples use them. */
export const IMAGENET_NORMALIZE: NormalizeOptions = {
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

/**
 * ToTensor (HWC 0..255 to CHW 0..1) and, given `normalize`, Normalize
 * ((x - mean) / std per channel) in one pass; with `solarizeThreshold`, also
 * Solarize before the scaling. Writes `width * height * 3` floats into `out`
 * at `offset` and returns `out`.
 */
export function toTensor(
  image: FloatImage,
  out: Float32Array = new Float32Array(image.data.length),
  offset = 0,
  normalize?: NormalizeOptions,
  solarizeThreshold?: number,
): Float32Array {
  const { width, height, data } = image;
  const plane = width * height;
  if (offset + 3 * plane > out.length) {
    throw new RangeError(
      `toTensor: ${
        3 * plane
      } values do not fit at offset ${offset} of ${out.length}`,
    );
  }
  for (let c = 0; c < 3; c++) {
    const std = normalize ? normalize.std[c] : 1;
    const mean = normalize ? normalize.mean[c] : 0;
    const scale = 1 / (255 * std);
    const shift = -mean / std;
    const base = offset + c * plane;
    if (solarizeThreshold === undefined) {
      for (let p = 0, i = c; p < plane; p++, i += 3) {
        out[base + p] = data[i] * scale + shift;
      }
    } else {
      const t = solarizeThreshold;
      for (let p = 0, i = c; p < plane; p++, i += 3) {
        const v = data[i];
        out[base + p] = (v >= t ? 255 - v : v) * scale + shift;
      }
    }
  }
  return out;
}
