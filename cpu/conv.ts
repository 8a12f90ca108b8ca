/**
 * 2-D convolution kernels on host memory: forward, backward-data and
 * backward-filter, each a few OpenBLAS GEMMs around TypeScript copies.
 *
 * The column matrix (im2col) is built a row at a time with memcpy
 * (`Float32Array.set`): with the output laid out `ow` to a row, the row of
 * kernel tap (r, s) is the input channel shifted by a constant, except where
 * the shift wraps a few elements per output row in from the neighbouring
 * input row; those are patched afterwards. Strided convolutions first split
 * each input channel into zero-padded stride phases ("planes"), in which every
 * tap is again a shift. An element-by-element im2col costs about as much time
 * as the GEMM that follows it on two threads; this costs a fraction of it.
 * Large stride-1 images need only the column matrix of one kernel row, a few
 * rows taller (see `rowTaps`), which cuts the copying by the kernel height.
 *
 * Backward-data is computed as forward convolutions of the output gradient:
 * for stride 1 with the transposed, flipped kernel; for stride s, split into
 * s×s phases of the input gradient, each a stride-1 convolution with a
 * sub-kernel. That keeps every step a memcpy or a GEMM, where col2im would add
 * every column-matrix element back one by one in TypeScript. The kernel is
 * flipped and transposed by a GEMM with a 0/1 selection matrix, which runs
 * several times faster than a TypeScript loop.
 *
 * Small images are batched: several images share one column matrix, so that
 * the GEMM is wide enough for OpenBLAS to run near its peak.
 *
 * @module
 */

import type { ConvDesc } from "../nn/backend.ts";
import type { Blas } from "./blas.ts";

/**
 * Reusable scratch memory: returns a Float32Array of at least `length`
 * elements; contents undefined; the same memory may be returned by the next
 * call, so never hold it across calls.
 */
export type Scratch = (length: number) => Float32Array;

/**
 * GEMM columns wanted per call: below about this width OpenBLAS on two threads
 * falls well short of its peak, so small images are grouped until reached.
 * Where the images themselves are the column matrix (1×1 kernels), grouping
 * costs a copy that a GEMM that narrow does not repay above about 192.
 */
const TARGET_COLUMNS = 1024;
const TARGET_COLUMNS_IN_PLACE = 192;
/** Cap on the column matrix of one group (elements, 64 MiB). */
const MAX_COLUMN_ELEMENTS = 16 << 20;
/**
 * Runs shorter than this are copied by a loop: `subarray` + `set` costs about
 * as much as copying this many elements one by one.
 */
const MEMCPY_MIN = 128;

/**
 * A stride-`sh`×`sw` correlation of `cin`×`hin`×`win` images with a `kr`×`ks`
 * kernel, computing an `oh`×`ow` output whose element (i, j) reads the input
 * window whose top-left corner is (i*sh + offH, j*sw + offW). Out-of-range
 * input reads as zero.
 */
interface Correlation {
  n: number;
  cin: number;
  hin: number;
  win: number;
  kr: number;
  ks: number;
  sh: number;
  sw: number;
  offH: number;
  offW: number;
  oh: number;
  ow: number;
  /** Column-matrix rows ordered (tap, channel) rather than (channel, tap). */
  tapMajor: boolean;
  /** Whether 1×1 images may be copied together to widen the GEMM. */
  groupInPlace: boolean;
  /** Most images per GEMM. */
  maxGroup: number;
}

/**
 * How a correlation is computed.
 *
 * Kernel row r = sh*r' + pi reads input rows sh*(i + r') + pi + offH: row
 * i + r' of the stride phase pi. A plane holds one channel's phase (pi, pj)
 * with row pitch `ow`, plane element (u, v) being phase element
 * (u + f0, v + e0); the column-matrix row of tap (r, s) is then the plane
 * shifted by (r' - f0)*ow + (s' - e0), except where j + s' - e0 falls outside
 * [0, ow) and the shift wraps into a neighbouring plane row.
 */
interface Geometry extends Correlation {
  /** Columns per image: oh * ow. */
  l: number;
  /** Column-matrix rows: cin * kr * ks. */
  rows: number;
  /** Stride phases that the kernel touches, per axis. */
  ph: number;
  pw: number;
  /**
   * The input channels serve as planes as they are (stride 1, ow === win:
   * f0 = -offH, e0 = -offW, rows outside the image read as zero); otherwise
   * planes are built with f0 = e0 = 0 and `hq` rows, padding included.
   */
  inputPlanes: boolean;
  hq: number;
  /** The column matrix of one image is the image itself (1×1, unpadded). */
  inputColumns: boolean;
  /** Images per GEMM. */
  group: number;
}

function geometry(c: Correlation): Geometry {
  const l = c.oh * c.ow;
  const rows = c.cin * c.kr * c.ks;
  const inputPlanes = c.sh === 1 && c.sw === 1 && c.ow === c.win;
  const inputColumns = inputPlanes && c.kr === 1 && c.ks === 1 &&
    c.offH === 0 && c.offW === 0 && c.oh === c.hin;
  const target = !inputColumns
    ? TARGET_COLUMNS
    : c.groupInPlace
    ? TARGET_COLUMNS_IN_PLACE
    : 1;
  let group = Math.min(c.n, c.maxGroup, Math.ceil(target / l));
  group = Math.max(
    1,
    Math.min(group, Math.floor(MAX_COLUMN_ELEMENTS / (rows * l))),
  );
  // Even out the groups: 8 images in groups of 3 become 3 + 3 + 2.
  group = Math.ceil(c.n / Math.ceil(c.n / group));
  return {
    ...c,
    l,
    rows,
    ph: Math.min(c.sh, c.kr),
    pw: Math.min(c.sw, c.ks),
    inputPlanes,
    hq: c.oh + Math.floor((c.kr - 1) / c.sh),
    inputColumns,
    group,
  };
}

function planeElements(g: Geometry): number {
  return g.inputPlanes ? 0 : g.group * g.cin * g.ph * g.pw * g.hq * g.ow;
}

function columnElements(g: Geometry): number {
  return g.inputColumns && g.group === 1 ? 0 : g.rows * g.group * g.l;
}

/*
 * The loops below call a small function per row or run: V8 optimises a
 * function called thousands of times as a whole, where a long loop inside a
 * function called once per convolution runs as on-stack-replaced code, which
 * V8 deoptimised on every inner-loop exit in our measurements.
 */

/** `dst[dstOff + i] = src[srcOff + i]` for i < length. */
function copy(
  dst: Float32Array,
  dstOff: number,
  src: Float32Array,
  srcOff: number,
  length: number,
): void {
  if (length >= MEMCPY_MIN) {
    dst.set(src.subarray(srcOff, srcOff + length), dstOff);
    return;
  }
  const end = dstOff + length;
  while (dstOff < end) dst[dstOff++] = src[srcOff++];
}

/** `dst[from .. to) = 0`, by a loop where a `fill` call costs more. */
function zero(dst: Float32Array, from: number, to: number): void {
  if (to - from >= MEMCPY_MIN) {
    dst.fill(0, from, to);
    return;
  }
  while (from < to) dst[from++] = 0;
}

/** `dst[o + i] = src[s + i*stride]` for i < length. */
function gather(
  dst: Float32Array,
  o: number,
  src: Float32Array,
  s: number,
  length: number,
  stride: number,
): void {
  if (stride === 1) {
    copy(dst, o, src, s, length);
    return;
  }
  const end = o + length;
  while (o < end) {
    dst[o++] = src[s];
    s += stride;
  }
}

/** `dst[o + j*stride] = src[s + j]` for j < length. */
function scatter(
  dst: Float32Array,
  o: number,
  stride: number,
  src: Float32Array,
  s: number,
  length: number,
): void {
  if (stride === 1) {
    copy(dst, o, src, s, length);
    return;
  }
  const end = s + length;
  while (s < end) {
    dst[o] = src[s++];
    o += stride;
  }
}

/**
 * Copies the phases of images `n0 .. n0+count` of `src` into zero-padded
 * planes laid out [image][channel][phase row][phase col][hq][ow].
 */
function fillPlanes(
  src: Float32Array,
  n0: number,
  count: number,
  g: Geometry,
  planes: Float32Array,
): void {
  const { cin, hin, win, sh, sw, offH, offW, ph, pw, hq, ow } = g;
  for (let img = 0; img < count; img++) {
    for (let c = 0; c < cin; c++) {
      const inBase = ((n0 + img) * cin + c) * hin * win;
      for (let pi = 0; pi < ph; pi++) {
        for (let pj = 0; pj < pw; pj++) {
          const base = (((img * cin + c) * ph + pi) * pw + pj) * hq * ow;
          // Plane columns j0 <= j < j1 read input columns j*sw + first.
          const first = pj + offW;
          const j0 = Math.min(ow, Math.max(0, Math.ceil(-first / sw)));
          const j1 = Math.max(
            j0,
            Math.min(ow, Math.floor((win - 1 - first) / sw) + 1),
          );
          for (let i = 0; i < hq; i++) {
            const y = i * sh + pi + offH;
            const o = base + i * ow;
            if (y < 0 || y >= hin) {
              zero(planes, o, o + ow);
              continue;
            }
            const s = inBase + y * win + j0 * sw + first;
            zero(planes, o, o + j0);
            gather(planes, o + j0, src, s, j1 - j0, sw);
            zero(planes, o + j1, o + ow);
          }
        }
      }
    }
  }
}

/**
 * Builds the column matrix [rows][count * l] of a group: the row of channel c
 * and tap (r, s), image i, is what that tap sees at each output position of
 * that image.
 */
function fillColumns(
  planes: Float32Array,
  src: Float32Array,
  n0: number,
  count: number,
  g: Geometry,
  col: Float32Array,
): void {
  const { cin, hin, win, kr, ks, sh, sw, offH, offW, ow, l, ph, pw } = g;
  const from = g.inputPlanes ? src : planes;
  const f0 = g.inputPlanes ? -offH : 0;
  const e0 = g.inputPlanes ? -offW : 0;
  const planeLength = g.inputPlanes ? hin * win : g.hq * ow;
  const width = count * l;
  const taps = kr * ks;
  for (let r = 0; r < kr; r++) {
    const pi = r % sh;
    const rr = (r - pi) / sh;
    for (let s = 0; s < ks; s++) {
      const pj = s % sw;
      const ss = (s - pj) / sw;
      const tap = r * ks + s;
      const shift = (rr - f0) * ow + ss - e0;
      // Output positions t0 <= t < t1 lie inside the plane.
      const t0 = Math.min(l, Math.max(0, -shift));
      const t1 = Math.max(t0, Math.min(l, planeLength - shift));
      // Output columns outside [jl, jr) wrapped in from a neighbouring row.
      const jl = Math.min(ow, Math.max(0, e0 - ss));
      const jr = Math.max(jl, Math.min(ow, ow + e0 - ss));
      const wraps = jl > 0 || jr < ow;
      for (let c = 0; c < cin; c++) {
        const row = g.tapMajor ? tap * cin + c : c * taps + tap;
        for (let img = 0; img < count; img++) {
          const inBase = ((n0 + img) * cin + c) * hin * win;
          const plane = g.inputPlanes
            ? inBase
            : (((img * cin + c) * ph + pi) * pw + pj) * planeLength;
          const dst = row * width + img * l;
          if (t0 > 0) zero(col, dst, dst + t0);
          copy(col, dst + t0, from, plane + t0 + shift, t1 - t0);
          if (t1 < l) zero(col, dst + t1, dst + l);
          if (!wraps) continue;
          if (g.inputPlanes) {
            // With ow === win every wrapped column lies outside the image.
            zeroColumns(col, dst, l, ow, jl, jr);
            continue;
          }
          patchRows(
            col,
            dst,
            g,
            jl,
            jr,
            src,
            inBase,
            sh * rr + pi + offH,
            sw * ss + pj + offW,
          );
        }
      }
    }
  }
}

/** Zeroes columns [0, jl) and [jr, ow) of each `ow`-long row in [o, o+l). */
function zeroColumns(
  col: Float32Array,
  o: number,
  l: number,
  ow: number,
  jl: number,
  jr: number,
): void {
  for (const end = o + l; o < end; o += ow) {
    for (let j = 0; j < jl; j++) col[o + j] = 0;
    for (let j = jr; j < ow; j++) col[o + j] = 0;
  }
}

/**
 * Sets columns [0, jl) and [jr, ow) of each output row i of the column-matrix
 * row at `o` to input elements (sh*i + y0, sw*j + x0) of the channel at
 * `inBase` (zero outside the image).
 */
function patchRows(
  col: Float32Array,
  o: number,
  g: Geometry,
  jl: number,
  jr: number,
  src: Float32Array,
  inBase: number,
  y0: number,
  x0: number,
): void {
  const { hin, win, sh, sw, oh, ow } = g;
  for (let i = 0; i < oh; i++, o += ow) {
    const y = sh * i + y0;
    // Outside the image the shift may still have wrapped data in.
    const width = y >= 0 && y < hin ? win : 0;
    const rowBase = inBase + y * win;
    for (let j = 0; j < jl; j++) {
      const x = x0 + sw * j;
      col[o + j] = x >= 0 && x < width ? src[rowBase + x] : 0;
    }
    for (let j = jr; j < ow; j++) {
      const x = x0 + sw * j;
      col[o + j] = x >= 0 && x < width ? src[rowBase + x] : 0;
    }
  }
}

/**
 * The column matrix of images `n0 .. n0+count`: `x` itself where it already
 * is one, else built in `col` by way of planes in `planes`.
 */
function groupColumns(
  x: Float32Array,
  n0: number,
  count: number,
  g: Geometry,
  col: Float32Array,
  planes: Float32Array,
): Float32Array {
  if (g.inputColumns && count === 1) {
    return x.subarray(n0 * g.rows * g.l, (n0 + 1) * g.rows * g.l);
  }
  if (!g.inputPlanes) fillPlanes(x, n0, count, g, planes);
  fillColumns(planes, x, n0, count, g, col);
  return col;
}

/**
 * Where `correlate` puts output element (i, j) of channel k: row
 * `row0 + i*rowStep`, column `col0 + j*colStep` of channel k of the image.
 */
interface Placement {
  out: Float32Array;
  /** Channels, height and width of each image of `out`. */
  kout: number;
  hout: number;
  wout: number;
  row0: number;
  rowStep: number;
  col0: number;
  colStep: number;
}

function dense(g: Geometry, p: Placement): boolean {
  return p.row0 === 0 && p.col0 === 0 && p.rowStep === 1 &&
    p.colStep === 1 && p.hout === g.oh && p.wout === g.ow;
}

/** Whether the GEMM may write straight into the output images. */
function writesInPlace(g: Geometry, p: Placement): boolean {
  return g.group === 1 && dense(g, p);
}

/** Scratch elements that `correlate` needs. */
function correlateElements(g: Geometry, p: Placement): number {
  const wide = writesInPlace(g, p) ? 0 : p.kout * g.group * g.l;
  return columnElements(g) + Math.max(planeElements(g), wide);
}

/** Copies a group's GEMM output [kout][count * l] to where `p` says. */
function scatterOutput(
  result: Float32Array,
  n0: number,
  count: number,
  g: Geometry,
  p: Placement,
): void {
  const { oh, ow, l } = g;
  const { out, kout, hout, wout, row0, rowStep, col0, colStep } = p;
  const width = count * l;
  const isDense = dense(g, p);
  for (let img = 0; img < count; img++) {
    for (let k = 0; k < kout; k++) {
      const src = k * width + img * l;
      const base = ((n0 + img) * kout + k) * hout * wout + row0 * wout + col0;
      if (isDense) {
        copy(out, base, result, src, l);
        continue;
      }
      for (let i = 0; i < oh; i++) {
        const o = base + i * rowStep * wout;
        scatter(out, o, colStep, result, src + i * ow, ow);
      }
    }
  }
}

/**
 * Runs the correlation `g` of all images of `x` with weights `w`
 * ([p.kout][rows] with leading dimension `ldw`, or its transpose when
 * `transW`), placing the output as `p` says. `mem` holds `correlateElements`
 * elements.
 */
function correlate(
  blas: Blas,
  mem: Float32Array,
  g: Geometry,
  x: Float32Array,
  w: Float32Array,
  transW: boolean,
  ldw: number,
  p: Placement,
): void {
  const inPlace = writesInPlace(g, p);
  const colSize = columnElements(g);
  const col = mem.subarray(0, colSize);
  const after = mem.subarray(colSize);
  const image = p.kout * g.l;
  for (let n0 = 0; n0 < g.n; n0 += g.group) {
    const count = Math.min(g.group, g.n - n0);
    const width = count * g.l;
    const b = groupColumns(x, n0, count, g, col, after);
    const c = inPlace ? p.out.subarray(n0 * image, (n0 + 1) * image) : after;
    blas.sgemm(
      transW,
      false,
      p.kout,
      width,
      g.rows,
      1,
      w,
      ldw,
      b,
      width,
      0,
      c,
      width,
    );
    if (!inPlace) scatterOutput(after, n0, count, g, p);
  }
}

/**
 * Images at least this large (output elements) are convolved by row taps
 * when the weights are no larger than the input.
 */
const ROW_TAP_MIN_COLUMNS = 512;

/**
 * The geometry of the row-tap form of a stride-1 correlation, or null where
 * it does not pay.
 *
 * Kernel row r of a stride-1 correlation reads the input shifted down by r
 * rows. So a column matrix Z built for the kernel's first row only, but
 * `kr - 1` output rows taller, holds every kernel row's column matrix as a
 * window of consecutive columns starting at r*ow, and the correlation is
 * `kr` GEMMs over those windows. Z has `ks` rows per channel where the full
 * column matrix has kr*ks, so TypeScript copies kr times less, and the GEMMs
 * run as fast. The weights have to be regrouped by kernel row first, which
 * pays only while they are small next to the images.
 */
function rowTaps(g: Geometry, kout: number): Geometry | null {
  if (!g.inputPlanes || g.kr === 1 || g.l < ROW_TAP_MIN_COLUMNS) return null;
  if (kout * g.rows > g.n * g.cin * g.hin * g.win) return null;
  return geometry({
    n: g.n,
    cin: g.cin,
    hin: g.hin,
    win: g.win,
    kr: 1,
    ks: g.ks,
    sh: 1,
    sw: 1,
    offH: g.offH,
    offW: g.offW,
    oh: g.oh + g.kr - 1,
    ow: g.ow,
    tapMajor: g.tapMajor,
    groupInPlace: false,
    maxGroup: 1,
  });
}

/** Scratch elements that `correlateRowTaps` needs. */
function rowTapElements(g: Geometry, z: Geometry, p: Placement): number {
  return columnElements(z) + (dense(g, p) ? 0 : p.kout * g.l);
}

/**
 * Runs the correlation `g` image by image in its row-tap form `z`. The
 * weights of kernel row r start at `w[r * rowStride]`, as `correlate` takes
 * them, with rows ordered as `z`'s. `mem` holds `rowTapElements` elements.
 */
function correlateRowTaps(
  blas: Blas,
  mem: Float32Array,
  g: Geometry,
  z: Geometry,
  x: Float32Array,
  w: Float32Array,
  transW: boolean,
  ldw: number,
  rowStride: number,
  p: Placement,
): void {
  const inPlace = dense(g, p);
  const col = mem.subarray(0, columnElements(z));
  const result = mem.subarray(col.length);
  const image = p.kout * g.l;
  const taps = z.rows;
  for (let n0 = 0; n0 < g.n; n0++) {
    const b = groupColumns(x, n0, 1, z, col, result);
    const c = inPlace ? p.out.subarray(n0 * image, (n0 + 1) * image) : result;
    for (let r = 0; r < g.kr; r++) {
      blas.sgemm(
        transW,
        false,
        p.kout,
        g.l,
        taps,
        1,
        w.subarray(r * rowStride),
        ldw,
        b.subarray(r * g.ow),
        z.l,
        r === 0 ? 0 : 1,
        c,
        g.l,
      );
    }
    if (!inPlace) scatterOutput(result, n0, 1, g, p);
  }
}

/** `conv2dBackwardFilter` by the row-tap form `z` of the forward `g`. */
function filterRowTaps(
  blas: Blas,
  scratch: Scratch,
  g: Geometry,
  z: Geometry,
  x: Float32Array,
  dy: Float32Array,
  dw: Float32Array,
  k: number,
): void {
  const { cin: c, kr: r, ks: s, l } = g;
  const taps = z.rows;
  const sums = k * g.rows;
  const mem = scratch(sums + columnElements(z));
  // The gradient per kernel row, [r][k][c][s], summed over the images.
  const perRow = mem.subarray(0, sums);
  const col = mem.subarray(sums);
  for (let n0 = 0; n0 < g.n; n0++) {
    const b = groupColumns(x, n0, 1, z, col, col);
    for (let rr = 0; rr < r; rr++) {
      blas.sgemm(
        false,
        true,
        k,
        taps,
        l,
        1,
        dy.subarray(n0 * k * l, (n0 + 1) * k * l),
        l,
        b.subarray(rr * g.ow),
        z.l,
        n0 === 0 ? 0 : 1,
        perRow.subarray(rr * k * taps),
        taps,
      );
    }
  }
  for (let kk = 0; kk < k; kk++) {
    for (let cc = 0; cc < c; cc++) {
      for (let rr = 0; rr < r; rr++) {
        const from = ((rr * k + kk) * c + cc) * s;
        copy(dw, ((kk * c + cc) * r + rr) * s, perRow, from, s);
      }
    }
  }
}

function forwardGeometry(d: ConvDesc, groupInPlace: boolean): Geometry {
  return geometry({
    n: d.n,
    cin: d.c,
    hin: d.h,
    win: d.w,
    kr: d.r,
    ks: d.s,
    sh: d.strideH,
    sw: d.strideW,
    offH: -d.padH,
    offW: -d.padW,
    oh: d.oh,
    ow: d.ow,
    tapMajor: false,
    groupInPlace,
    maxGroup: d.n,
  });
}

/** y = x ⋆ w: y [n,k,oh,ow] overwritten from x [n,c,h,w] and w [k,c,r,s]. */
export function conv2dForward(
  blas: Blas,
  scratch: Scratch,
  x: Float32Array,
  w: Float32Array,
  y: Float32Array,
  d: ConvDesc,
): void {
  const g = forwardGeometry(d, true);
  const p: Placement = {
    out: y,
    kout: d.k,
    hout: d.oh,
    wout: d.ow,
    row0: 0,
    rowStep: 1,
    col0: 0,
    colStep: 1,
  };
  const z = rowTaps(g, d.k);
  if (z === null) {
    correlate(
      blas,
      scratch(correlateElements(g, p)),
      g,
      x,
      w,
      false,
      g.rows,
      p,
    );
    return;
  }
  const packSize = d.k * g.rows;
  const mem = scratch(packSize + rowTapElements(g, z, p));
  const packed = mem.subarray(0, packSize);
  const { k, c, r, s } = d;
  for (let kk = 0; kk < k; kk++) {
    for (let cc = 0; cc < c; cc++) {
      for (let rr = 0; rr < r; rr++) {
        const o = ((rr * k + kk) * c + cc) * s;
        copy(packed, o, w, ((kk * c + cc) * r + rr) * s, s);
      }
    }
  }
  const rest = mem.subarray(packSize);
  correlateRowTaps(blas, rest, g, z, x, packed, false, z.rows, k * z.rows, p);
}

/**
 * dx [n,c,h,w] overwritten with the gradient of the forward with respect to
 * x, given dy [n,k,oh,ow].
 *
 * Input row i (padded row i + padH = sh*q + a) receives dy rows q - t through
 * kernel rows r = a + sh*t; so the rows of phase a form a stride-1
 * correlation of dy with the flipped sub-kernel w[.., a + sh*t, ..], and
 * likewise for columns.
 */
export function conv2dBackwardData(
  blas: Blas,
  scratch: Scratch,
  dy: Float32Array,
  w: Float32Array,
  dx: Float32Array,
  d: ConvDesc,
): void {
  const { c, h, k, r, s, strideH: sh, strideW: sw, padH, padW } = d;
  // Phases that no kernel tap reaches get no gradient.
  if (sh > r || sw > s) dx.fill(0, 0, d.n * c * h * d.w);
  for (let a = 0; a < Math.min(sh, r); a++) {
    const ra = Math.ceil((r - a) / sh);
    const q0 = Math.ceil((padH - a) / sh);
    const rowsOut = Math.floor((h - 1 + padH - a) / sh) - q0 + 1;
    if (rowsOut <= 0) continue;
    for (let b = 0; b < Math.min(sw, s); b++) {
      const sb = Math.ceil((s - b) / sw);
      const p0 = Math.ceil((padW - b) / sw);
      const colsOut = Math.floor((d.w - 1 + padW - b) / sw) - p0 + 1;
      if (colsOut <= 0) continue;
      const g = geometry({
        n: d.n,
        cin: k,
        hin: d.oh,
        win: d.ow,
        kr: ra,
        ks: sb,
        sh: 1,
        sw: 1,
        offH: q0 - (ra - 1),
        offW: p0 - (sb - 1),
        oh: rowsOut,
        ow: colsOut,
        tapMajor: true,
        groupInPlace: true,
        maxGroup: d.n,
      });
      const p: Placement = {
        out: dx,
        kout: c,
        hout: h,
        wout: d.w,
        row0: sh * q0 + a - padH,
        rowStep: sh,
        col0: sw * p0 + b - padW,
        colStep: sw,
      };
      if (r * s === 1) {
        // A 1×1 kernel needs no flip: w is the transposed weight matrix.
        correlate(blas, scratch(correlateElements(g, p)), g, dy, w, true, c, p);
        continue;
      }
      const z = rowTaps(g, c);
      const taps = ra * sb;
      const selectSize = taps * r * s;
      const packSize = taps * k * c;
      const work = z === null
        ? correlateElements(g, p)
        : rowTapElements(g, z, p);
      const mem = scratch(selectSize + packSize + work);
      const select = mem.subarray(0, selectSize);
      const packed = mem.subarray(selectSize, selectSize + packSize);
      // packed [tap][k][c] = w[k][c][flipped tap]: the flipped phase taps
      // selected from w viewed as a [k*c][r*s] matrix, transposed. As the
      // GEMM's transposed weights, its rows are (tap, k): the tap-major
      // order of the column matrix.
      select.fill(0);
      for (let u = 0; u < ra; u++) {
        for (let v = 0; v < sb; v++) {
          const from = (a + sh * (ra - 1 - u)) * s + b + sw * (sb - 1 - v);
          select[(u * sb + v) * r * s + from] = 1;
        }
      }
      blas.sgemm(
        false,
        true,
        taps,
        k * c,
        r * s,
        1,
        select,
        r * s,
        w,
        r * s,
        0,
        packed,
        k * c,
      );
      const rest = mem.subarray(selectSize + packSize);
      if (z === null) {
        correlate(blas, rest, g, dy, packed, true, c, p);
      } else {
        correlateRowTaps(blas, rest, g, z, dy, packed, true, c, sb * k * c, p);
      }
    }
  }
}

/**
 * dw [k,c,r,s] overwritten with the gradient of the forward with respect to
 * w, given x [n,c,h,w] and dy [n,k,oh,ow]: dy times the column matrix
 * transposed, summed over groups of images by the GEMM's beta.
 */
export function conv2dBackwardFilter(
  blas: Blas,
  scratch: Scratch,
  x: Float32Array,
  dy: Float32Array,
  dw: Float32Array,
  d: ConvDesc,
): void {
  // Per-image GEMMs summed by beta run as fast as grouped ones here, so
  // images that are their own column matrix are not copied to be grouped.
  const g = forwardGeometry(d, false);
  const { n, k } = d;
  const z = rowTaps(g, k);
  if (z !== null) {
    filterRowTaps(blas, scratch, g, z, x, dy, dw, k);
    return;
  }
  const image = k * g.l;
  const gathered = g.group === 1 ? 0 : g.group * image;
  const colSize = columnElements(g);
  const mem = scratch(colSize + Math.max(planeElements(g), gathered));
  const col = mem.subarray(0, colSize);
  const after = mem.subarray(colSize);
  for (let n0 = 0; n0 < n; n0 += g.group) {
    const count = Math.min(g.group, n - n0);
    const width = count * g.l;
    const b = groupColumns(x, n0, count, g, col, after);
    let a = dy.subarray(n0 * image, (n0 + count) * image);
    if (count > 1) {
      // [image][k][l] to [k][image * l], the layout of the column matrix.
      for (let img = 0; img < count; img++) {
        for (let kk = 0; kk < k; kk++) {
          copy(after, kk * width + img * g.l, a, (img * k + kk) * g.l, g.l);
        }
      }
      a = after;
    }
    blas.sgemm(
      false,
      true,
      k,
      g.rows,
      width,
      1,
      a,
      width,
      b,
      width,
      n0 === 0 ? 0 : 1,
      dw,
      g.rows,
    );
  }
}
