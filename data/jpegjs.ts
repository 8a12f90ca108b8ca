/**
 * The dependency-free JPEG decoder: `npm:jpeg-js` for the entropy decoding
 * and the IDCT, with libjpeg's chroma upsampling and colour conversion done
 * here, so that subsampled files come out as libjpeg (and so PIL) decodes
 * them, up to the small IDCT differences of jpeg-js.
 *
 * jpeg-js does not expose its component planes, but asked not to convert
 * colours it returns each component at full size, upsampled by repeating
 * samples: every second sample of that is the plane itself. From the planes,
 * libjpeg-turbo's "fancy" upsampling (its default, and PIL's) is applied as
 * jdsample.c does it: a triangle filter for 2:1 horizontal (h2v1, 4:2:2),
 * 2:1 both ways (h2v2, 4:2:0) and 1:2 vertical (h1v2, 4:4:0), edges
 * replicated; plain repetition for other ratios and for planes at most two
 * samples wide, as in libjpeg. Then YCbCr to RGB with libjpeg's fixed-point
 * tables (jdcolor.c). Four-component files (CMYK, YCCK) are left to jpeg-js,
 * whose CMYK to RGB equals PIL's within one level.
 *
 * @module
 */

import jpeg from "jpeg-js";

/** The sampling factors of a JPEG frame's components, in frame order. */
export interface JpegFrame {
  width: number;
  height: number;
  components: { h: number; v: number }[];
}

/** Options passed through to jpeg-js's own limits. */
export interface JpegJsLimits {
  maxResolutionInMP: number;
  maxMemoryUsageInMB: number;
}

/**
 * Decodes to RGB. `transform` says whether the components are YCbCr (YCCK)
 * by libjpeg's rule, decided from the JFIF and Adobe markers by the caller;
 * undefined leaves jpeg-js's default (three components are, four are not).
 * Throws jpeg-js's errors as they are.
 */
export function decodeJpegJs(
  bytes: Uint8Array,
  frame: JpegFrame | null,
  transform: boolean | undefined,
  limits: JpegJsLimits,
): { width: number; height: number; data: Uint8Array } {
  const options = {
    useTArray: true,
    formatAsRGBA: false,
    tolerantDecoding: true,
    ...limits,
  } as const;
  // Without a frame header before the first scan that the caller could
  // find (bytes between segments, which libjpeg skips), jpeg-js decides.
  if (frame === null || frame.components.length !== 3) {
    return jpeg.decode(bytes, { ...options, colorTransform: transform });
  }
  // jpeg-js converts colours whenever an Adobe marker's transform code is
  // non-zero, whatever it is asked: a copy with the code cleared gets the
  // planes out (the caller has already read the code).
  const adobe = adobeTransformOffset(bytes);
  const input = adobe !== null && bytes[adobe] !== 0 ? bytes.slice() : bytes;
  if (input !== bytes) input[adobe!] = 0;
  const raw = jpeg.decode(input, { ...options, colorTransform: false });
  const { width, height } = raw;
  if (width !== frame.width || height !== frame.height) {
    throw new Error(
      `frame of ${frame.width}x${frame.height} decoded as ${width}x${height}`,
    );
  }
  const out = new Uint8Array(width * height * 3);
  const maxH = Math.max(...frame.components.map((c) => c.h));
  const maxV = Math.max(...frame.components.map((c) => c.v));
  frame.components.forEach(({ h, v }, c) => {
    upsample(raw.data, out, width, height, c, maxH / h, maxV / v);
  });
  if (transform ?? true) yccToRgb(out);
  return { width, height, data: out };
}

/** The position of an Adobe APP14 marker's transform code, or null. */
function adobeTransformOffset(bytes: Uint8Array): number | null {
  let pos = 2;
  while (pos + 4 <= bytes.length) {
    if (bytes[pos] !== 0xff) return null;
    const marker = bytes[pos + 1];
    if (marker === 0xff) {
      pos++;
      continue;
    }
    if (
      marker === 0xda ||
      (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
        marker !== 0xcc)
    ) {
      return null;
    }
    const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
    const body = pos + 4;
    if (
      marker === 0xee && length >= 14 && body + 12 <= bytes.length &&
      String.fromCharCode(...bytes.subarray(body, body + 5)) === "Adobe"
    ) {
      return body + 11;
    }
    if (length < 2) return null;
    pos += 2 + length;
  }
  return null;
}

/**
 * Channel `c` of `raw` (interleaved, three per pixel, each component
 * repeated up to full size) upsampled as libjpeg-turbo's jdsample.c does
 * into channel `c` of `out`. `rh`, `rv`: the component's downsampling.
 */
export function upsample(
  raw: Uint8Array,
  out: Uint8Array,
  width: number,
  height: number,
  c: number,
  rh: number,
  rv: number,
): void {
  const stride = 3 * width;
  // The plane's size, as libjpeg's downsampled_width and _height.
  const cw = Math.ceil(width / rh);
  const ch = Math.ceil(height / rv);
  // Sample (j, i) of the plane is raw[j * rowStep + i * colStep + c].
  const rowStep = rv * stride;
  const colStep = 3 * rh;
  if (rh === 2 && rv === 1 && cw > 2) {
    // h2v1_fancy_upsample: 3/4 nearer sample + 1/4 further, biased 1 or 2;
    // the first and last samples stand in for their missing neighbours.
    const last = (cw - 1) * colStep;
    for (let y = 0; y < height; y++) {
      const base = y * rowStep + c;
      const row = y * stride + c;
      for (let i = 0, q = 0; i < cw; i++, q += colStep) {
        const s = 3 * raw[base + q];
        const left = raw[base + (q > 0 ? q - colStep : q)];
        const right = raw[base + (q < last ? q + colStep : q)];
        out[row + 6 * i] = (s + left + 1) >> 2;
        if (2 * i + 1 < width) out[row + 6 * i + 3] = (s + right + 2) >> 2;
      }
    }
  } else if (rh === 2 && rv === 2 && cw > 2) {
    // h2v2_fancy_upsample: vertical 3:1 column sums, then horizontal 3:1
    // on the sums, biased 8 and 7, over 16; edge rows and columns repeated.
    const sums = new Int32Array(cw);
    for (let y = 0; y < height; y++) {
      const j = y >> 1;
      const near = (y & 1) === 0 ? Math.max(j - 1, 0) : Math.min(j + 1, ch - 1);
      const a = j * rowStep + c;
      const b = near * rowStep + c;
      for (let i = 0, q = 0; i < cw; i++, q += colStep) {
        sums[i] = 3 * raw[a + q] + raw[b + q];
      }
      const row = y * stride + c;
      for (let i = 0; i < cw; i++) {
        const s = 3 * sums[i];
        const left = sums[i > 0 ? i - 1 : i];
        const right = sums[i < cw - 1 ? i + 1 : i];
        out[row + 6 * i] = (s + left + 8) >> 4;
        if (2 * i + 1 < width) out[row + 6 * i + 3] = (s + right + 7) >> 4;
      }
    }
  } else if (rh === 1 && rv === 2) {
    // h1v2_fancy_upsample (libjpeg-turbo 2.0+): 3:1 vertically, biased 1
    // towards the row above, 2 towards the row below.
    for (let y = 0; y < height; y++) {
      const j = y >> 1;
      const above = (y & 1) === 0;
      const near = above ? Math.max(j - 1, 0) : Math.min(j + 1, ch - 1);
      const bias = above ? 1 : 2;
      const row = y * stride + c;
      const a = j * rowStep + c;
      const b = near * rowStep + c;
      for (let x = 0; x < stride; x += 3) {
        out[row + x] = (3 * raw[a + x] + raw[b + x] + bias) >> 2;
      }
    }
  } else {
    // Full size already, or libjpeg's plain repetition (int_upsample and
    // the narrow-plane cases): what jpeg-js did.
    for (let p = c; p < out.length; p += 3) out[p] = raw[p];
  }
}

/** libjpeg's jdcolor.c tables: 16-bit fixed point, rounded as there. */
const SCALEBITS = 16;
const ONE_HALF = 1 << (SCALEBITS - 1);
const fix = (x: number) => Math.floor(x * (1 << SCALEBITS) + 0.5);
const CR_R = new Int32Array(256);
const CB_B = new Int32Array(256);
const CR_G = new Int32Array(256);
const CB_G = new Int32Array(256);
for (let i = 0; i < 256; i++) {
  const x = i - 128;
  CR_R[i] = (fix(1.402) * x + ONE_HALF) >> SCALEBITS;
  CB_B[i] = (fix(1.772) * x + ONE_HALF) >> SCALEBITS;
  CR_G[i] = -fix(0.71414) * x;
  CB_G[i] = -fix(0.34414) * x + ONE_HALF;
}

/** YCbCr to RGB in place, exactly as libjpeg's ycc_rgb_convert. */
export function yccToRgb(data: Uint8Array): void {
  // Stores through a clamped view: libjpeg's range_limit, without branches.
  const clamped = new Uint8ClampedArray(
    data.buffer,
    data.byteOffset,
    data.length,
  );
  for (let p = 0; p < data.length; p += 3) {
    const y = data[p];
    const cb = data[p + 1];
    const cr = data[p + 2];
    clamped[p] = y + CR_R[cr];
    clamped[p + 1] = y + ((CB_G[cb] + CR_G[cr]) >> SCALEBITS);
    clamped[p + 2] = y + CB_B[cb];
  }
}
