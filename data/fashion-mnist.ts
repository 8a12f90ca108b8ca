/**
 * The built-in dataset: Fashion-MNIST (Zalando, MIT licensed), 28x28 grey
 * images of 10 kinds of clothing. The full set (60,000 + 10,000) is used
 * where Debian's `dataset-fashion-mnist` has installed it; otherwise the
 * subset shipped in `data/builtin/fashion-mnist/` (the first 10,000 training
 * and 2,000 test images), so that the tools run with no data at all.
 *
 * @module
 */

import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { ArrayDataset } from "./dataset.ts";

/** Fashion-MNIST's class names, label 0 to 9. */
export const FASHION_MNIST_CLASSES: readonly string[] = [
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
];

/** Where Debian's package `dataset-fashion-mnist` puts the full set. */
export const DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist";

/** The subset in this repository. */
export const BUILTIN_FASHION_MNIST: URL = new URL(
  "./builtin/fashion-mnist/",
  import.meta.url,
);

/** Options of {@link fashionMnist}. */
export interface FashionMnistOptions {
  /**
   * A folder (path or URL) with the four gzip IDX files. Default: the Debian
   * package's folder when it exists, else the built-in subset.
   */
  root?: string | URL;
}

/** Which split and where it came from. */
export interface FashionMnist extends ArrayDataset {
  /** The folder the files were read from. */
  readonly root: string;
}

/**
 * Loads one split of Fashion-MNIST as 28x28 grey images (expanded to RGB for
 * the augmentations).
 *
 * @throws {Error} with one sentence when a file is missing or malformed.
 */
export async function fashionMnist(
  split: "train" | "test",
  options: FashionMnistOptions = {},
): Promise<FashionMnist> {
  const root = options.root ?? await defaultFashionMnistRoot();
  const base = root instanceof URL ? root : pathToFileURL(resolve(root) + "/");
  const prefix = split === "train" ? "train" : "t10k";
  const images = parseIdx(
    await readGzip(new URL(`${prefix}-images-idx3-ubyte.gz`, base)),
    3,
  );
  const labels = parseIdx(
    await readGzip(new URL(`${prefix}-labels-idx1-ubyte.gz`, base)),
    1,
  );
  const [count, height, width] = images.dims;
  if (labels.dims[0] !== count) {
    throw new Error(
      `Fashion-MNIST in ${base.href} has ${count} ${split} images but ${
        labels.dims[0]
      } labels.`,
    );
  }
  const dataset = new ArrayDataset({
    pixels: images.data,
    labels: labels.data,
    width,
    height,
    channels: 1,
    classes: FASHION_MNIST_CLASSES,
    name: `fashion-mnist/${split}`,
  });
  return Object.assign(dataset, { root: base.href });
}

/**
 * The folder {@link fashionMnist} reads without a `root`: Debian's full set
 * where `dataset-fashion-mnist` has installed it, else the built-in subset.
 */
export async function defaultFashionMnistRoot(): Promise<string | URL> {
  try {
    const info = await Deno.stat(
      `${DEBIAN_FASHION_MNIST}/train-images-idx3-ubyte.gz`,
    );
    if (info.isFile) return DEBIAN_FASHION_MNIST;
  } catch {
    // Not installed (or not readable): the built-in subset serves.
  }
  return BUILTIN_FASHION_MNIST;
}

async function readGzip(url: URL): Promise<Uint8Array> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch {
    throw new Error(`The Fashion-MNIST file ${url.href} cannot be read.`);
  }
  if (!response.ok || response.body === null) {
    throw new Error(`The Fashion-MNIST file ${url.href} cannot be read.`);
  }
  try {
    const stream = response.body.pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  } catch {
    throw new Error(`The Fashion-MNIST file ${url.href} is not valid gzip.`);
  }
}

/**
 * An IDX file of unsigned bytes: magic 0x00000800 + ndim, the dimensions as
 * big-endian 32-bit integers, then the data.
 */
function parseIdx(
  bytes: Uint8Array,
  ndim: number,
): { dims: number[]; data: Uint8Array } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const header = 4 + 4 * ndim;
  if (bytes.length < header || view.getUint32(0) !== 0x800 + ndim) {
    throw new Error(
      `A Fashion-MNIST file is not an IDX file of ${ndim}-dimensional bytes.`,
    );
  }
  const dims = Array.from(
    { length: ndim },
    (_, i) => view.getUint32(4 + 4 * i),
  );
  const size = dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== header + size) {
    throw new Error(
      `A Fashion-MNIST IDX file holds ${
        bytes.length - header
      } bytes where its header announces ${size}.`,
    );
  }
  return { dims, data: bytes.subarray(header) };
}
