/**
 * GaussianBlur, Solarize, ToTensor and Normalize fused: the same six
 * extended-box passes as {@link gaussianBlur}, with the same sums in the same
 * order and every intermediate rounded to float32 where gaussianBlur stores
 * it, and the same per-value formula as {@link toTensor}, so the result is
 * bit-identical to `toTensor(gaussianBlur(image, sigma), ...)`.
 *
 * What makes it faster: the three passes along a line (a row of one
 * channel, or a column) run together in registers, each pass a few samples
 * behind the one before, so a line is read once and written once instead of
 * three loads and a store per sample per pass; and the last vertical pass
 * writes the normalised CHW tensor directly. Radii above 1 (sigma above
 * about 2.2, beyond MEC's range) take the unfused path.
 *
 * @module
 */

import {
  type BlurScratch,
  boxRadiusForSigma,
  type FloatImage,
  gaussianBlur,
  type NormalizeOptions,
  toTensor,
} from "./transforms.ts";

/**
 * Blurs `image` in place as `gaussianBlur(image, sigma)` does (horizontal
 * passes) and writes the vertically blurred result as
 * `toTensor(blurred, out, offset, normalize, solarizeThreshold)` would,
 * without writing it back into the image; returns `out`. `scratch` serves
 * radii above 1, which go through gaussianBlur.
 */
export function blurToTensor(
  image: FloatImage,
  sigma: number,
  out: Float32Array,
  offset: number,
  normalize?: NormalizeOptions,
  solarizeThreshold?: number,
  scratch?: BlurScratch,
): Float32Array {
  const { width, height, data } = image;
  const plane = width * height;
  if (offset + 3 * plane > out.length) {
    throw new RangeError(
      `blurToTensor: ${
        3 * plane
      } values do not fit at offset ${offset} of ${out.length}`,
    );
  }
  const radius = boxRadiusForSigma(sigma);
  const r = Math.floor(radius);
  if (r > 1) {
    gaussianBlur(image, sigma, scratch);
    return toTensor(image, out, offset, normalize, solarizeThreshold);
  }
  const inner = 1 / (2 * radius + 1);
  const edge = (radius - r) * inner;
  const passes = r === 0 ? threePassesR0 : threePassesR1;
  const rowLen = width * 3;
  // Rows: in place, each channel a line of stride 3.
  for (let y = 0; y < height; y++) {
    for (let c = 0; c < 3; c++) {
      const at = y * rowLen + c;
      passes(data, at, 3, width, data, at, 3, inner, edge, 1, 0, Infinity);
    }
  }
  // Columns: into the tensor's planes, scaled and shifted as toTensor does.
  const threshold = solarizeThreshold ?? Infinity;
  for (let c = 0; c < 3; c++) {
    const std = normalize ? normalize.std[c] : 1;
    const mean = normalize ? normalize.mean[c] : 0;
    const scale = 1 / (255 * std);
    const shift = -mean / std;
    const base = offset + c * plane;
    for (let x = 0; x < width; x++) {
      passes(
        data,
        3 * x + c,
        rowLen,
        height,
        out,
        base + x,
        width,
        inner,
        edge,
        scale,
        shift,
        threshold,
      );
    }
  }
  return out;
}

const fr = Math.fround;

/** Sample j of a line, its index clamped to 0..last. */
function sample(
  src: Float32Array,
  from: number,
  stride: number,
  last: number,
  j: number,
): number {
  return src[from + stride * (j < 0 ? 0 : j > last ? last : j)];
}

/**
 * Three passes of the box of radius `a` (r = 0: `inner * c + edge * (l +
 * r)`) along `n` samples of `src` from `from`, `stride` apart, indices
 * clamped to the line; each result `v` is stored as `(v >= threshold ?
 * 255 - v : v) * scale + shift` at `to`, `dstStride` apart. The store
 * trails the loads, so `dst` may be `src`.
 *
 * Pass 1 runs two samples ahead of pass 3 and pass 2 one ahead; the
 * windows are named by their offset from the output sample x. (No closure
 * here: a captured variable would live on the heap, and every access in
 * the loop would load it from there.)
 */
function threePassesR0(
  src: Float32Array,
  from: number,
  stride: number,
  n: number,
  dst: Float32Array,
  to: number,
  dstStride: number,
  inner: number,
  edge: number,
  scale: number,
  shift: number,
  threshold: number,
): void {
  const last = n - 1;
  // Windows for x = 0: s(1), s(2); P1(0), P1(1); P2(-1) = P2(0).
  let s1 = sample(src, from, stride, last, 1);
  let s2 = sample(src, from, stride, last, 2);
  let q0 = pass1R0(src, from, stride, last, 0, inner, edge);
  let q1 = pass1R0(src, from, stride, last, 1, inner, edge);
  let t0 = fr(inner * q0 + edge * (q0 + q1));
  let tm = t0;
  // Steady state: while x + 3 <= last nothing is clamped. The loop has a
  // plain copy for the horizontal passes, which store values as they are.
  const steady = Math.max(0, n - 3);
  let load = from + 3 * stride;
  let store = to;
  const end = load + steady * stride;
  if (scale === 1 && shift === 0 && threshold === Infinity) {
    for (; load < end; load += stride, store += dstStride) {
      const s3 = src[load];
      const q2 = fr(inner * s2 + edge * (s1 + s3));
      const t1 = fr(inner * q1 + edge * (q0 + q2));
      dst[store] = inner * t0 + edge * (tm + t1);
      s1 = s2, s2 = s3, q0 = q1, q1 = q2, tm = t0, t0 = t1;
    }
  } else {
    for (; load < end; load += stride, store += dstStride) {
      const s3 = src[load];
      const q2 = fr(inner * s2 + edge * (s1 + s3));
      const t1 = fr(inner * q1 + edge * (q0 + q2));
      const v = fr(inner * t0 + edge * (tm + t1));
      dst[store] = (v >= threshold ? 255 - v : v) * scale + shift;
      s1 = s2, s2 = s3, q0 = q1, q1 = q2, tm = t0, t0 = t1;
    }
  }
  let x = steady;
  // The end: loads clamp to the last sample, and a pass whose sample is
  // past the end repeats its last value, as clamping its index would.
  for (; x <= last; x++, store += dstStride) {
    const s3 = sample(src, from, stride, last, x + 3);
    const q2 = x + 2 <= last ? fr(inner * s2 + edge * (s1 + s3)) : q1;
    const t1 = x + 1 <= last ? fr(inner * q1 + edge * (q0 + q2)) : t0;
    const v = fr(inner * t0 + edge * (tm + t1));
    dst[store] = (v >= threshold ? 255 - v : v) * scale + shift;
    s1 = s2, s2 = s3, q0 = q1, q1 = q2, tm = t0, t0 = t1;
  }
}

/** Pass 1 (r = 0) at sample j, its index clamped. */
function pass1R0(
  src: Float32Array,
  from: number,
  stride: number,
  last: number,
  j: number,
  inner: number,
  edge: number,
): number {
  const k = j < 0 ? 0 : j > last ? last : j;
  return fr(
    inner * sample(src, from, stride, last, k) +
      edge * (sample(src, from, stride, last, k - 1) +
          sample(src, from, stride, last, k + 1)),
  );
}

/**
 * {@link threePassesR0} for the box of radius 1 + a: `inner * (c + (l1 +
 * r1)) + edge * (l2 + r2)`. Pass 1 runs four samples ahead of pass 3,
 * pass 2 two.
 */
function threePassesR1(
  src: Float32Array,
  from: number,
  stride: number,
  n: number,
  dst: Float32Array,
  to: number,
  dstStride: number,
  inner: number,
  edge: number,
  scale: number,
  shift: number,
  threshold: number,
): void {
  const last = n - 1;
  // Windows for x = 0: s(2..5); P1(0..3); P2(-2..1).
  let s2 = sample(src, from, stride, last, 2);
  let s3 = sample(src, from, stride, last, 3);
  let s4 = sample(src, from, stride, last, 4);
  let s5 = sample(src, from, stride, last, 5);
  let q0 = pass1R1(src, from, stride, last, 0, inner, edge);
  let q1 = pass1R1(src, from, stride, last, 1, inner, edge);
  let q2 = pass1R1(src, from, stride, last, 2, inner, edge);
  let q3 = pass1R1(src, from, stride, last, 3, inner, edge);
  let t0 = pass2R1(src, from, stride, last, 0, inner, edge);
  let t1 = pass2R1(src, from, stride, last, 1, inner, edge);
  let tm1 = t0;
  let tm2 = t0;
  // New in each step: s(x + 6), P1(x + 4), P2(x + 2); out at x.
  const steady = Math.max(0, n - 6);
  let load = from + 6 * stride;
  let store = to;
  const end = load + steady * stride;
  if (scale === 1 && shift === 0 && threshold === Infinity) {
    for (; load < end; load += stride, store += dstStride) {
      const s6 = src[load];
      const q4 = fr(inner * (s4 + (s3 + s5)) + edge * (s2 + s6));
      const t2 = fr(inner * (q2 + (q1 + q3)) + edge * (q0 + q4));
      dst[store] = inner * (t0 + (tm1 + t1)) + edge * (tm2 + t2);
      s2 = s3, s3 = s4, s4 = s5, s5 = s6;
      q0 = q1, q1 = q2, q2 = q3, q3 = q4;
      tm2 = tm1, tm1 = t0, t0 = t1, t1 = t2;
    }
  } else {
    for (; load < end; load += stride, store += dstStride) {
      const s6 = src[load];
      const q4 = fr(inner * (s4 + (s3 + s5)) + edge * (s2 + s6));
      const t2 = fr(inner * (q2 + (q1 + q3)) + edge * (q0 + q4));
      const v = fr(inner * (t0 + (tm1 + t1)) + edge * (tm2 + t2));
      dst[store] = (v >= threshold ? 255 - v : v) * scale + shift;
      s2 = s3, s3 = s4, s4 = s5, s5 = s6;
      q0 = q1, q1 = q2, q2 = q3, q3 = q4;
      tm2 = tm1, tm1 = t0, t0 = t1, t1 = t2;
    }
  }
  let x = steady;
  for (; x <= last; x++, store += dstStride) {
    const s6 = sample(src, from, stride, last, x + 6);
    const q4 = x + 4 <= last
      ? fr(inner * (s4 + (s3 + s5)) + edge * (s2 + s6))
      : q3;
    const t2 = x + 2 <= last
      ? fr(inner * (q2 + (q1 + q3)) + edge * (q0 + q4))
      : t1;
    const v = fr(inner * (t0 + (tm1 + t1)) + edge * (tm2 + t2));
    dst[store] = (v >= threshold ? 255 - v : v) * scale + shift;
    s2 = s3, s3 = s4, s4 = s5, s5 = s6;
    q0 = q1, q1 = q2, q2 = q3, q3 = q4;
    tm2 = tm1, tm1 = t0, t0 = t1, t1 = t2;
  }
}

/** Pass 1 (r = 1) at sample j, its index clamped. */
function pass1R1(
  src: Float32Array,
  from: number,
  stride: number,
  last: number,
  j: number,
  inner: number,
  edge: number,
): number {
  const k = j < 0 ? 0 : j > last ? last : j;
  const at = (i: number) => sample(src, from, stride, last, i);
  return fr(
    inner * (at(k) + (at(k - 1) + at(k + 1))) + edge * (at(k - 2) + at(k + 2)),
  );
}

/** Pass 2 (r = 1) at sample j, its index clamped. */
function pass2R1(
  src: Float32Array,
  from: number,
  stride: number,
  last: number,
  j: number,
  inner: number,
  edge: number,
): number {
  const k = j < 0 ? 0 : j > last ? last : j;
  const at = (i: number) => pass1R1(src, from, stride, last, i, inner, edge);
  return fr(
    inner * (at(k) + (at(k - 1) + at(k + 1))) + edge * (at(k - 2) + at(k + 2)),
  );
}
