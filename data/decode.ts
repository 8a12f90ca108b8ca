/**
 * Image files to RGB pixels, as torchvision's ImageFolder gets them from PIL
 * (`Image.open(f).convert("RGB")`): JPEG through libjpeg-turbo's TurboJPEG
 * where it is installed (data/turbojpeg.ts: the same pixels as PIL on the
 * same libjpeg-turbo), otherwise through `npm:jpeg-js` with libjpeg's
 * chroma upsampling and colour conversion (data/jpegjs.ts: within a few
 * levels of PIL); baseline and progressive, every chroma subsampling,
 * grayscale, CMYK and Adobe RGB. PNG through `npm:pngjs`. Anything else, and
 * any file that ends before its image does, is a {@link DecodeError}, which
 * the loader counts and reports instead of stopping.
 *
 * @module
 */

import { decodeJpegJs, type JpegFrame } from "./jpegjs.ts";
import {
  TJCS,
  TJPF,
  type TurboJpeg,
  turboJpeg,
  TurboJpegError,
  type TurboJpegHeader,
  turboJpegMissing,
} from "./turbojpeg.ts";
// @ts-types="@types/pngjs"
import { PNG } from "pngjs";
import { Buffer } from "node:buffer";

/** 8-bit RGB pixels, row by row, three bytes per pixel (HWC). */
export interface RgbImage {
  width: number;
  height: number;
  /** `width * height * 3` bytes: R, G, B of each pixel in row-major order. */
  data: Uint8Array;
}

/** A file that is not a decodable image; `message` says why. */
export class DecodeError extends Error {
  override name = "DecodeError";
}

/**
 * The pixel budget of one image: larger ones are refused from the sizes in
 * their headers, before any decoding. The decoders hold the whole image in
 * memory, jpeg-js about 16 bytes per pixel while it decodes (a 9,999 x
 * 9,999 header made it take 1.6 GB and 4 s) and pngjs about 9, in every
 * worker at once; 50 million pixels (about 800 MB in jpeg-js) still takes a
 * 48-megapixel phone photo (8064 x 6048) and any ImageNet image.
 */
export const MAX_IMAGE_PIXELS = 50_000_000;

/**
 * The size budget of one image file: larger files are refused before they
 * are read. A JPEG or PNG within {@link MAX_IMAGE_PIXELS} is far smaller
 * (the 50 megapixels as uncompressed 8-bit RGBA take 200 MB).
 */
export const MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024;

/** The image formats {@link decodeImage} recognises by their first bytes. */
export type ImageFormat = "jpeg" | "png";

/** The format announced by a file's signature, or null if neither. */
export function sniffFormat(bytes: Uint8Array): ImageFormat | null {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8) {
    return "jpeg";
  }
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length >= 8 && png.every((b, i) => bytes[i] === b)) return "png";
  return null;
}

/**
 * Which JPEG decoder to use: `"auto"` (the default) is TurboJPEG where the
 * library loads and jpeg-js otherwise; naming one insists on it.
 */
export type JpegDecoder = "auto" | "turbojpeg" | "jpeg-js";

/**
 * A buffer that decodes reuse, one per thread: a fresh 500x375 RGB array
 * costs 0.7 ms of page faults, 40 % of TurboJPEG's whole decode. Images up
 * to {@link DecodeScratch.MAX_BYTES} are written into it; larger ones get
 * their own array, so that one huge image does not pin its memory.
 */
export class DecodeScratch {
  /** Largest image kept in the scratch: 16 MB, 5.3 megapixels of RGB. */
  static readonly MAX_BYTES = 16 * 1024 * 1024;
  #buffer = new Uint8Array(0);

  /** `bytes` bytes, valid until the next call. */
  take(bytes: number): Uint8Array {
    if (bytes > DecodeScratch.MAX_BYTES) return new Uint8Array(bytes);
    if (this.#buffer.length < bytes) this.#buffer = new Uint8Array(bytes);
    return this.#buffer.subarray(0, bytes);
  }
}

/** Options of {@link decodeImage}. */
export interface DecodeOptions {
  jpeg?: JpegDecoder;
  /**
   * Decode into this scratch's buffer (TurboJPEG's RGB output): the image's
   * pixels are then valid only until the scratch's next use.
   */
  scratch?: DecodeScratch;
  /**
   * Decode a JPEG at a reduced size with libjpeg's DCT scaling (TurboJPEG
   * only): called with the full width and height once the header is read,
   * it returns the divisor d (1, 2, 4 or 8), and the image comes out
   * ceil(width / d) x ceil(height / d), its pixel i covering the full
   * image's pixels i d .. (i + 1) d - 1. It is not called for PNGs, for
   * jpeg-js, or for images under 8 pixels a side (where another scaling
   * factor could give the same size); those come at full size.
   */
  shrink?: (width: number, height: number) => DctShrink;
}

/** The DCT scalings {@link DecodeOptions.shrink} can ask for: 1/d. */
export type DctShrink = 1 | 2 | 4 | 8;

let noted = false;

/**
 * The decoder that `choice` means in this process: `"auto"` becomes
 * `"turbojpeg"` where libturbojpeg loads, otherwise `"jpeg-js"`, saying so
 * once on stderr ({@link noteJpegFallback}) unless `quiet`; never an error.
 *
 * @throws {Error} when `"turbojpeg"` is asked for and cannot be loaded.
 */
export function resolveJpegDecoder(
  choice: JpegDecoder = "auto",
  quiet = false,
): "turbojpeg" | "jpeg-js" {
  if (choice === "jpeg-js") return choice;
  if (turboJpeg() !== null) return "turbojpeg";
  if (choice === "turbojpeg") throw new Error(turboJpegMissing());
  if (!quiet) noteJpegFallback();
  return "jpeg-js";
}

/**
 * Says once per thread, on stderr, that JPEGs decode through jpeg-js
 * because libturbojpeg did not load (and why); nothing when it loaded.
 */
export function noteJpegFallback(): void {
  if (noted || turboJpeg() !== null) return;
  noted = true;
  console.error(`note: ${turboJpegMissing()}`);
}

/**
 * Decodes a JPEG or PNG file (recognised by its signature, not its name) into
 * RGB. Grey images get three equal channels; alpha is dropped; CMYK becomes
 * RGB as PIL converts it.
 *
 * @throws {DecodeError} when the bytes are not a complete, decodable image.
 */
export function decodeImage(
  bytes: Uint8Array,
  options: DecodeOptions = {},
): RgbImage {
  const format = sniffFormat(bytes);
  if (format === null) throw new DecodeError("not a JPEG or PNG file");
  const size = format === "jpeg" ? jpegSize(bytes) : pngSize(bytes);
  if (size !== null) checkPixels(format, size.width, size.height);
  if (format === "png") return decodePng(bytes);
  if (!jpegIsComplete(bytes)) {
    throw new DecodeError(
      "truncated JPEG (no end-of-image marker after the last scan)",
    );
  }
  return resolveJpegDecoder(options.jpeg) === "turbojpeg"
    ? decodeTurboJpeg(turboJpeg()!, bytes, options.scratch, options.shrink)
    : decodeJpeg(bytes);
}

/** Refuses an image over {@link MAX_IMAGE_PIXELS} before it is decoded. */
function checkPixels(format: ImageFormat, width: number, height: number) {
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new DecodeError(
      `${
        format === "jpeg" ? "JPEG" : "PNG"
      } of ${width}x${height} pixels is over the budget of ${
        MAX_IMAGE_PIXELS / 1e6
      } megapixels`,
    );
  }
}

/**
 * The width and height a JPEG's frame header (SOF) announces, found by
 * walking the marker segments up to it; null when there is none before the
 * first scan (the decoder then says what is wrong).
 */
export function jpegSize(
  bytes: Uint8Array,
): { width: number; height: number } | null {
  const frame = jpegFrame(bytes);
  return frame === null ? null : { width: frame.width, height: frame.height };
}

/**
 * The frame header (SOF): sizes and each component's sampling factors;
 * null when there is none before the first scan.
 */
export function jpegFrame(bytes: Uint8Array): JpegFrame | null {
  let pos = 2;
  while (pos + 4 <= bytes.length) {
    if (bytes[pos] !== 0xff) return null;
    const marker = bytes[pos + 1];
    if (marker === 0xff) {
      pos++; // fill byte
      continue;
    }
    // Markers without a length: TEM and RST0..7.
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      pos += 2;
      continue;
    }
    if (marker === 0xda || marker === 0xd9) return null;
    const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 &&
      marker !== 0xc8 && marker !== 0xcc;
    if (isFrame) {
      if (pos + 10 > bytes.length) return null;
      const height = (bytes[pos + 5] << 8) | bytes[pos + 6];
      const width = (bytes[pos + 7] << 8) | bytes[pos + 8];
      const count = bytes[pos + 9];
      const components: { h: number; v: number }[] = [];
      for (let c = 0; c < count && pos + 12 + 3 * c <= bytes.length; c++) {
        const factors = bytes[pos + 11 + 3 * c];
        components.push({ h: factors >> 4, v: factors & 15 });
      }
      return { width, height, components };
    }
    if (length < 2) return null;
    pos += 2 + length;
  }
  return null;
}

/** The width and height of a PNG's IHDR chunk (which must come first). */
export function pngSize(
  bytes: Uint8Array,
): { width: number; height: number } | null {
  // Signature (8), chunk length (4), "IHDR" (4), width (4), height (4).
  if (bytes.length < 24 || ascii(bytes, 12, 4) !== "IHDR") return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, 24);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/**
 * Whether a JPEG stream ends with its End Of Image marker after the last
 * scan. jpeg-js decodes a truncated file without complaint (the missing
 * blocks come out grey), and PIL refuses such a file, so we refuse it too.
 * Entropy-coded data never contains 0xFF followed by 0xD9 or 0xDA (0xFF is
 * stuffed as FF 00), so the last FF DA is the start of the last scan header
 * and an FF D9 after it is the real end marker; bytes after the marker
 * (cameras append some) are allowed.
 */
function jpegIsComplete(bytes: Uint8Array): boolean {
  let lastScan = -1;
  for (let i = bytes.length - 2; i >= 0; i--) {
    if (bytes[i] === 0xff && bytes[i + 1] === 0xda) {
      lastScan = i;
      break;
    }
  }
  if (lastScan < 0) return false;
  for (let i = lastScan + 2; i < bytes.length - 1; i++) {
    if (bytes[i] === 0xff && bytes[i + 1] === 0xd9) return true;
  }
  return false;
}

/**
 * Whether the three or four components need the YCbCr (YCCK) to RGB (CMYK)
 * transform, decided as libjpeg decides: an Adobe marker's transform code
 * wins; otherwise a file without a JFIF marker whose components are named
 * 'R', 'G', 'B' holds RGB as is. `undefined` lets jpeg-js choose its default
 * (transform three components, not four), which jpeg-js also applies when an
 * Adobe marker says "no transform", hence this scan of the header segments.
 */
function colorTransform(bytes: Uint8Array): boolean | undefined {
  let jfif = false;
  let adobe: number | null = null;
  let pos = 2;
  while (pos + 4 <= bytes.length) {
    if (bytes[pos] !== 0xff) return undefined;
    const marker = bytes[pos + 1];
    if (marker === 0xff) {
      pos++; // fill byte
      continue;
    }
    const length = (bytes[pos + 2] << 8) | bytes[pos + 3];
    const body = pos + 4;
    if (marker === 0xe0 && ascii(bytes, body, 5) === "JFIF\0") jfif = true;
    if (marker === 0xee && ascii(bytes, body, 5) === "Adobe") {
      adobe = bytes[body + 11];
    }
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 &&
      marker !== 0xc8 && marker !== 0xcc;
    if (isFrame) {
      if (adobe !== null) return adobe !== 0;
      const components = bytes[body + 5];
      const ids = [0, 1, 2].map((c) => bytes[body + 6 + 3 * c]);
      const rgbNames = ids[0] === 0x52 && ids[1] === 0x47 && ids[2] === 0x42;
      return !jfif && components === 3 && rgbNames ? false : undefined;
    }
    pos = body + length - 2;
  }
  return undefined;
}

function ascii(bytes: Uint8Array, start: number, length: number): string {
  return String.fromCharCode(...bytes.subarray(start, start + length));
}

/**
 * TurboJPEG's decode, checked against the pixel budget from libjpeg's own
 * reading of the header before any pixel is allocated. CMYK and YCCK files
 * come out of libjpeg as CMYK and are converted to RGB as PIL does.
 */
function decodeTurboJpeg(
  tj: TurboJpeg,
  bytes: Uint8Array,
  scratch?: DecodeScratch,
  shrink?: (width: number, height: number) => DctShrink,
): RgbImage {
  try {
    const header = turboJpegHeader(tj, bytes);
    const { colorspace } = header;
    checkPixels("jpeg", header.width, header.height);
    if (!(header.width > 0 && header.height > 0)) {
      throw new DecodeError(
        `undecodable JPEG (${header.width}x${header.height} pixels)`,
      );
    }
    // TurboJPEG picks the largest scaling factor (a multiple of 1/8) whose
    // output fits the size asked for; from 8 pixels up, only 1/d gives
    // ceil(size / d).
    const d = shrink !== undefined && header.width >= 8 && header.height >= 8
      ? shrink(header.width, header.height)
      : 1;
    const width = Math.ceil(header.width / d);
    const height = Math.ceil(header.height / d);
    if (colorspace !== TJCS.cmyk && colorspace !== TJCS.ycck) {
      const n = width * height * 3;
      const data = scratch ? scratch.take(n) : new Uint8Array(n);
      tj.decompress(bytes, data, { width, height }, TJPF.rgb);
      return { width, height, data };
    }
    const cmyk = new Uint8Array(width * height * 4);
    tj.decompress(bytes, cmyk, { width, height }, TJPF.cmyk);
    return { width, height, data: cmykToRgb(cmyk) };
  } catch (e) {
    if (e instanceof TurboJpegError) {
      throw new DecodeError(`undecodable JPEG (${e.message})`);
    }
    throw e;
  }
}

/**
 * libjpeg's reading of the headers. TurboJPEG 2.x refuses to read those of
 * chroma subsamplings it has no name for (4:1:0, say) though it decodes
 * them, as PIL does: their sizes then come from the frame header.
 */
function turboJpegHeader(tj: TurboJpeg, bytes: Uint8Array): TurboJpegHeader {
  try {
    return tj.header(bytes);
  } catch (e) {
    const frame = jpegFrame(bytes);
    if (!(e instanceof TurboJpegError && /subsampling/.test(e.message))) {
      throw e;
    }
    if (frame === null) throw e;
    const n = frame.components.length;
    const colorspace = n === 4 ? TJCS.cmyk : n === 1 ? TJCS.gray : TJCS.ycbcr;
    return {
      width: frame.width,
      height: frame.height,
      subsampling: -1,
      colorspace,
    };
  }
}

/**
 * CMYK as libjpeg returns it to RGB, as PIL does: PIL reads four-component
 * JPEGs as inverted ("CMYK;I", Adobe's convention), then `convert("RGB")`
 * computes `255 - k - c * (255 - k) / 255` with its rounded MULDIV255.
 */
export function cmykToRgb(cmyk: Uint8Array): Uint8Array {
  const n = cmyk.length >> 2;
  const rgb = new Uint8Array(3 * n);
  for (let p = 0; p < n; p++) {
    const nk = cmyk[4 * p + 3]; // 255 - inverted k
    for (let c = 0; c < 3; c++) {
      const t = (255 - cmyk[4 * p + c]) * nk + 128;
      const v = nk - (((t >> 8) + t) >> 8);
      rgb[3 * p + c] = v < 0 ? 0 : v;
    }
  }
  return rgb;
}

function decodeJpeg(bytes: Uint8Array): RgbImage {
  const frame = jpegFrame(bytes);
  let decoded: { width: number; height: number; data: Uint8Array };
  try {
    // Damaged entropy-coded data decodes to what it can, as in libjpeg; a
    // file cut short is refused before.
    decoded = decodeJpegJs(
      bytes,
      frame,
      colorTransform(bytes),
      { maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6, maxMemoryUsageInMB: 1024 },
    );
  } catch (e) {
    throw new DecodeError(`undecodable JPEG (${errorText(e)})`);
  }
  const { width, height, data } = decoded;
  if (!(width > 0 && height > 0) || data.length !== width * height * 3) {
    throw new DecodeError(`undecodable JPEG (${width}x${height} pixels)`);
  }
  return { width, height, data };
}

function decodePng(bytes: Uint8Array): RgbImage {
  let png: { width: number; height: number; data: Uint8Array };
  try {
    // pngjs reads Node Buffers; this one shares the file's memory.
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    png = PNG.sync.read(buffer);
  } catch (e) {
    throw new DecodeError(`undecodable PNG (${errorText(e)})`);
  }
  const { width, height, data: rgba } = png;
  checkPixels("png", width, height);
  // pngjs always expands to 8-bit RGBA (16-bit samples are scaled down).
  const n = width * height;
  const data = new Uint8Array(n * 3);
  for (let p = 0, q = 0; p < n; p++, q += 4) {
    data[3 * p] = rgba[q];
    data[3 * p + 1] = rgba[q + 1];
    data[3 * p + 2] = rgba[q + 2];
  }
  return { width, height, data };
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
