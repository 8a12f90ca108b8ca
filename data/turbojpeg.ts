/**
 * libjpeg-turbo's TurboJPEG API through Deno FFI: the JPEG decoder used
 * wherever the library is installed (Debian/Ubuntu: `apt-get install
 * libturbojpeg0`), with the settings of PIL's default decode (libjpeg's
 * accurate integer IDCT and its "fancy" triangle-filter chroma upsampling),
 * so that pixels equal PIL's, and so torchvision's, on the same libjpeg-turbo.
 *
 * `MEC_TURBOJPEG` names the library file to load (a path or a soname, or
 * `off` to use jpeg-js); otherwise the usual sonames are tried. The 2.x
 * functions bound here are exported by libturbojpeg 2.0 to 3.x alike. A
 * library that cannot be found is not an error: {@link turboJpeg} returns
 * null and the decoder falls back to jpeg-js, with one line saying so.
 *
 * @module
 */

const symbols = {
  tjInitDecompress: { parameters: [], result: "pointer" },
  tjDecompressHeader3: {
    parameters: [
      "pointer", // handle
      "buffer", // jpegBuf
      "usize", // jpegSize (unsigned long)
      "buffer", // int *width
      "buffer", // int *height
      "buffer", // int *jpegSubsamp
      "buffer", // int *jpegColorspace
    ],
    result: "i32",
  },
  tjDecompress2: {
    parameters: [
      "pointer", // handle
      "buffer", // jpegBuf
      "usize", // jpegSize
      "buffer", // dstBuf
      "i32", // width
      "i32", // pitch
      "i32", // height
      "i32", // pixelFormat
      "i32", // flags
    ],
    result: "i32",
  },
  tjGetErrorStr2: { parameters: ["pointer"], result: "pointer" },
  tjGetErrorCode: { parameters: ["pointer"], result: "i32" },
  tjDestroy: { parameters: ["pointer"], result: "i32" },
} as const;

/** Sonames tried in order when `MEC_TURBOJPEG` is not set. */
const DEFAULT_NAMES = [
  "libturbojpeg.so.0",
  "libturbojpeg.so",
  "libturbojpeg.0.dylib",
  "libturbojpeg.dylib",
  "turbojpeg.dll",
];

/** Pixel formats (turbojpeg.h `enum TJPF`). */
export const TJPF = { rgb: 0, gray: 6, cmyk: 11 } as const;
/** JPEG colour spaces (turbojpeg.h `enum TJCS`). */
export const TJCS = { rgb: 0, ycbcr: 1, gray: 2, cmyk: 3, ycck: 4 } as const;
/**
 * libjpeg's accurate integer IDCT (JDCT_ISLOW), PIL's default; fancy
 * upsampling is TurboJPEG's default (TJFLAG_FASTUPSAMPLE not set).
 */
const TJFLAG_ACCURATEDCT = 4096;
/** `tjGetErrorCode`: a warning (the image was still decoded). */
const TJERR_WARNING = 0;

/** What a JPEG's headers say, as libjpeg reads them. */
export interface TurboJpegHeader {
  width: number;
  height: number;
  /** TJSAMP_* (chroma subsampling), -1 when unusual. */
  subsampling: number;
  /** One of {@link TJCS}. */
  colorspace: number;
}

/** A file that libjpeg refuses; `message` is libjpeg's own. */
export class TurboJpegError extends Error {
  override name = "TurboJpegError";
}

/** One decompressor: a TurboJPEG handle, used by one thread. */
export interface TurboJpeg {
  /** The library file that was loaded. */
  readonly path: string;
  /** Reads the headers (no pixels are allocated or decoded). */
  header(jpeg: Uint8Array): TurboJpegHeader;
  /**
   * Decodes into `out` (`width * height * channels` bytes) in pixel format
   * `format` ({@link TJPF}). `size` is the header's, or a reduced one:
   * libjpeg then scales in its IDCT by the largest factor (a multiple of
   * 1/8) whose output fits, ceil(width * factor) x ceil(height * factor).
   */
  decompress(
    jpeg: Uint8Array,
    out: Uint8Array,
    size: { width: number; height: number },
    format: number,
  ): void;
}

let loaded: TurboJpeg | null | undefined;
let missing = "";

/**
 * The decompressor of this thread, loaded on first use; null when the
 * library is not installed or `MEC_TURBOJPEG=off` ({@link turboJpegMissing}
 * says why).
 */
export function turboJpeg(): TurboJpeg | null {
  if (loaded === undefined) loaded = open();
  return loaded;
}

/** Why {@link turboJpeg} returned null, in one line; "" when it did not. */
export function turboJpegMissing(): string {
  turboJpeg();
  return missing;
}

function open(): TurboJpeg | null {
  const env = Deno.env.get("MEC_TURBOJPEG");
  if (env === "off") {
    missing = "MEC_TURBOJPEG=off: decoding JPEG with jpeg-js";
    return null;
  }
  const candidates = env ? [env] : DEFAULT_NAMES;
  let last = "";
  for (const name of candidates) {
    let lib: Deno.DynamicLibrary<typeof symbols>;
    try {
      lib = Deno.dlopen(name, symbols);
    } catch (e) {
      last = (e as Error).message;
      continue;
    }
    const handle = lib.symbols.tjInitDecompress();
    if (handle === null) {
      last = "tjInitDecompress() failed";
      lib.close();
      continue;
    }
    return wrap(lib, handle, name);
  }
  missing = env
    ? `MEC_TURBOJPEG names "${env}", which could not be loaded (${last}): decoding JPEG with jpeg-js`
    : "libturbojpeg not found: decoding JPEG with jpeg-js, 5-10x slower and " +
      "not pixel-equal to PIL (apt-get install libturbojpeg0, or set MEC_TURBOJPEG)";
  return null;
}

function wrap(
  lib: Deno.DynamicLibrary<typeof symbols>,
  handle: Deno.PointerObject,
  path: string,
): TurboJpeg {
  const s = lib.symbols;
  // Out-parameters, allocated once.
  const width = new Int32Array(1);
  const height = new Int32Array(1);
  const subsampling = new Int32Array(1);
  const colorspace = new Int32Array(1);
  const fail = (call: string): never => {
    const text = s.tjGetErrorStr2(handle);
    const message = text === null
      ? "unknown error"
      : Deno.UnsafePointerView.getCString(text);
    throw new TurboJpegError(`${call}: ${message}`);
  };
  return {
    path,
    header(jpeg) {
      const status = s.tjDecompressHeader3(
        handle,
        jpeg,
        BigInt(jpeg.length),
        width,
        height,
        subsampling,
        colorspace,
      );
      // A warning (junk bytes before a marker, say) still reads the header.
      if (status !== 0 && s.tjGetErrorCode(handle) !== TJERR_WARNING) {
        fail("tjDecompressHeader3");
      }
      return {
        width: width[0],
        height: height[0],
        subsampling: subsampling[0],
        colorspace: colorspace[0],
      };
    },
    decompress(jpeg, out, size, format) {
      const channels = format === TJPF.cmyk ? 4 : format === TJPF.gray ? 1 : 3;
      const { width: w, height: h } = size;
      if (!(w > 0 && h > 0) || out.length !== w * h * channels) {
        throw new RangeError(
          `tjDecompress2: output of ${out.length} bytes for ${w}x${h}x${channels}`,
        );
      }
      const status = s.tjDecompress2(
        handle,
        jpeg,
        BigInt(jpeg.length),
        out,
        w,
        w * channels,
        h,
        format,
        TJFLAG_ACCURATEDCT,
      );
      // A warning (say, extraneous bytes before a marker) still decodes the
      // whole image, as libjpeg under PIL does.
      if (status !== 0 && s.tjGetErrorCode(handle) !== TJERR_WARNING) {
        fail("tjDecompress2");
      }
    },
  };
}
