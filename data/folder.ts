/**
 * ImageFolder as torchvision defines it: `root/<class>/**\/<image>`, classes
 * the sorted sub-folder names, labels their indices, files in sorted walk
 * order, extensions matched case-insensitively. The listing of a large tree
 * can be cached in a JSON index file so that it is built once.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { describeFileType } from "../nn/safetensors.ts";
import type { Dataset, SampleSource } from "./dataset.ts";
import { checkIndex } from "./dataset.ts";
import { MAX_IMAGE_FILE_BYTES } from "./decode.ts";

/**
 * The extensions ImageFolder takes: those of torchvision that the decoder
 * reads (JPEG and PNG), matched case-insensitively (ImageNet's are ".JPEG").
 */
export const IMAGE_EXTENSIONS: readonly string[] = [".jpg", ".jpeg", ".png"];

/** Options of {@link imageFolder}. */
export interface ImageFolderOptions {
  /**
   * A JSON file holding the listing. Reused when it lists the same root and
   * the root and every class folder still have the modification times it
   * recorded (adding or removing a file in a class folder changes its time;
   * a change deeper down does not, so delete the index after editing nested
   * folders); rewritten otherwise.
   */
  index?: string;
}

/** One class folder as the index file records it. */
interface IndexedClass {
  name: string;
  mtime: number;
  /** Paths relative to the class folder, in torchvision's order. */
  files: string[];
}

interface IndexFile {
  version: 1;
  root: string;
  mtime: number;
  classes: IndexedClass[];
}

/** The images of an ImageFolder tree and their labels. */
export class ImageFolder implements Dataset {
  /** The folder's absolute path. */
  readonly root: string;
  readonly classes: readonly string[];
  readonly length: number;
  /** Whether the listing came from the index file. */
  readonly fromIndex: boolean;
  #paths: string[];
  #labels: Int32Array;

  constructor(root: string, listing: IndexedClass[], fromIndex: boolean) {
    this.root = root;
    this.classes = listing.map((c) => c.name);
    this.#paths = [];
    const labels: number[] = [];
    listing.forEach((c, label) => {
      for (const f of c.files) {
        this.#paths.push(join(c.name, f));
        labels.push(label);
      }
    });
    this.#labels = Int32Array.from(labels);
    this.length = this.#paths.length;
    this.fromIndex = fromIndex;
  }

  label(index: number): number {
    checkIndex(this, index);
    return this.#labels[index];
  }

  /** The image's path, relative to the root. */
  name(index: number): string {
    checkIndex(this, index);
    return this.#paths[index];
  }

  /** The image's absolute path. */
  path(index: number): string {
    return join(this.root, this.name(index));
  }

  /** How many images each class has. */
  counts(): number[] {
    const counts = new Array(this.classes.length).fill(0);
    for (const l of this.#labels) counts[l]++;
    return counts;
  }

  /**
   * The file's bytes. Only a regular file is opened (a FIFO, a device or a
   * socket named like an image is refused by its type, so nothing blocks),
   * and at most {@link MAX_IMAGE_FILE_BYTES} are read; a link that leads
   * nowhere or to itself fails like a vanished file. The loader reports
   * each refusal as a skipped image.
   */
  async source(index: number): Promise<SampleSource> {
    return { kind: "encoded", bytes: await readImageFile(this.path(index)) };
  }
}

/**
 * Reads an image file, refusing anything but a regular file and files over
 * {@link MAX_IMAGE_FILE_BYTES}; reads are bounded by that size even if the
 * file grows meanwhile.
 *
 * @throws Error with a short reason ("it is a FIFO (named pipe), not a
 * regular file"), or the file system's error without the path (the loader
 * names the file).
 */
export async function readImageFile(path: string): Promise<Uint8Array> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    throw new Error(osReason(e));
  }
  if (!info.isFile) {
    throw new Error(`it is ${describeFileType(info)}, not a regular file`);
  }
  if (info.size > MAX_IMAGE_FILE_BYTES) {
    throw new Error(
      `it is ${info.size} bytes, over the ${MAX_IMAGE_FILE_BYTES}-byte budget of an image file`,
    );
  }
  try {
    using file = await Deno.open(path, { read: true });
    // One byte more than the size: a file that grew is noticed, not read on.
    const bytes = new Uint8Array(info.size + 1);
    let done = 0;
    while (done < bytes.length) {
      const n = await file.read(bytes.subarray(done));
      if (n === null) break;
      done += n;
    }
    if (done > info.size) {
      throw new Error("it changed while being read");
    }
    return bytes.subarray(0, done);
  } catch (e) {
    throw new Error(osReason(e));
  }
}

/** An error's message without Deno's trailing `: stat '/the/path'`. */
function osReason(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/: \w+ '[^']*'$/, "");
}

/**
 * Lists (or loads from `options.index`) an ImageFolder tree.
 *
 * @throws {Error} with one sentence when the folder is missing, is not a
 * folder, has no class folders, or has a class folder without images.
 */
export async function imageFolder(
  root: string,
  options: ImageFolderOptions = {},
): Promise<ImageFolder> {
  const absolute = resolve(root);
  const rootStat = await statOrNull(absolute);
  if (rootStat === null) {
    throw new Error(`The data folder ${absolute} does not exist.`);
  }
  if (!rootStat.isDirectory) {
    throw new Error(`The data path ${absolute} is not a folder.`);
  }
  const classNames = await classFolders(absolute);
  if (classNames.length === 0) {
    throw new Error(
      `The data folder ${absolute} has no class folders: expected ${
        join(absolute, "<class>", "<image>.jpg")
      }.`,
    );
  }
  const mtimes = await Promise.all(
    classNames.map(async (c) => mtimeOf(await Deno.stat(join(absolute, c)))),
  );
  if (options.index !== undefined) {
    const cached = await readIndex(options.index);
    if (
      cached !== null && cached.root === absolute &&
      cached.mtime === mtimeOf(rootStat) &&
      cached.classes.length === classNames.length &&
      cached.classes.every((c, i) =>
        c.name === classNames[i] && c.mtime === mtimes[i]
      )
    ) {
      return new ImageFolder(absolute, cached.classes, true);
    }
  }
  const listing: IndexedClass[] = [];
  for (let i = 0; i < classNames.length; i++) {
    const dir = join(absolute, classNames[i]);
    const files = await listImages(dir);
    if (files.length === 0) {
      throw new Error(
        `The class folder ${dir} has no images (${
          IMAGE_EXTENSIONS.join(", ")
        }).`,
      );
    }
    listing.push({ name: classNames[i], mtime: mtimes[i], files });
  }
  if (options.index !== undefined) {
    const index: IndexFile = {
      version: 1,
      root: absolute,
      mtime: mtimeOf(rootStat),
      classes: listing,
    };
    // Written aside and renamed, so a crash never leaves half an index.
    const temporary = `${options.index}.${Deno.pid}.tmp`;
    await Deno.writeTextFile(temporary, JSON.stringify(index));
    await Deno.rename(temporary, options.index);
  }
  return new ImageFolder(absolute, listing, false);
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

function mtimeOf(info: Deno.FileInfo): number {
  return info.mtime?.getTime() ?? 0;
}

/** Sorted names of the sub-folders (following links, as torchvision does). */
async function classFolders(root: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(root)) {
    if (await isDirectory(root, entry)) names.push(entry.name);
  }
  return names.sort(compareCodePoints);
}

/**
 * Whether an entry is a folder or a link to one. A link that leads nowhere
 * or to itself (ELOOP) is not: it is listed like a file when named like an
 * image, and skipped and reported when the loader cannot read it.
 */
async function isDirectory(
  dir: string,
  entry: Deno.DirEntry,
): Promise<boolean> {
  if (entry.isDirectory) return true;
  if (!entry.isSymlink) return false;
  try {
    return (await Deno.stat(join(dir, entry.name))).isDirectory;
  } catch {
    return false;
  }
}

function hasImageExtension(name: string): boolean {
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((ext) => lower.endsWith(ext));
}

/**
 * Image files under `dir`, relative to it, in the order of Python's
 * `sorted(os.walk(dir))` with sorted file names: by folder path, then name.
 */
async function listImages(dir: string): Promise<string[]> {
  const found: { folder: string; name: string }[] = [];
  const walk = async (relative: string) => {
    const absolute = join(dir, relative);
    for await (const entry of Deno.readDir(absolute)) {
      if (await isDirectory(absolute, entry)) {
        await walk(relative === "" ? entry.name : join(relative, entry.name));
      } else if (hasImageExtension(entry.name)) {
        found.push({ folder: relative, name: entry.name });
      }
    }
  };
  await walk("");
  found.sort((a, b) =>
    compareCodePoints(a.folder, b.folder) || compareCodePoints(a.name, b.name)
  );
  return found.map((f) => f.folder === "" ? f.name : join(f.folder, f.name));
}

/** Python's string order (by code point), not the locale's. */
function compareCodePoints(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function readIndex(path: string): Promise<IndexFile | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    const parsed = JSON.parse(text) as IndexFile;
    return parsed.version === 1 && Array.isArray(parsed.classes)
      ? parsed
      : null;
  } catch {
    // A damaged index is rebuilt, not fatal.
    return null;
  }
}
