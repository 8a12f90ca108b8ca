/**
 * A disk cache of compiled kernels, so that a run does not wait for NVRTC
 * (about a second) each time it starts.
 *
 * An entry is keyed by the SHA-256 of everything that changes what NVRTC
 * produces: the source, the architecture, NVRTC's version and the compile
 * options (and this file's format version). It lives in
 * `$MEC_KERNEL_CACHE`, else `$XDG_CACHE_HOME/deno-mec/kernels`, else
 * `~/.cache/deno-mec/kernels`, as `<key>.cubin`; `MEC_KERNEL_CACHE=off`
 * turns the cache off.
 *
 * An entry is a 48-byte header (magic, format version, the CUBIN's length
 * and its SHA-256) and the CUBIN. It is written to a temporary file and
 * renamed, so a reader sees a whole entry or none; an entry that is
 * truncated or corrupt anyway (a wrong length or checksum, no ELF image) is
 * ignored and rebuilt. A cache that cannot be read or written (no
 * permission, a full disk) only costs a compile each time: it never throws.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** Everything that a compiled image depends on. */
export interface BuildInputs {
  source: string;
  /** "sm_90". */
  arch: string;
  /** The compiler and its version, "nvrtc 13.0". */
  compiler: string;
  options: readonly string[];
}

const MAGIC = new TextEncoder().encode("MECCUBIN");
const FORMAT = 1;
const HEADER = 48;
const ELF = [0x7f, 0x45, 0x4c, 0x46];

function sha256(data: Uint8Array | string): Uint8Array<ArrayBuffer> {
  return new Uint8Array(createHash("sha256").update(data).digest());
}

function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The entry's name: the SHA-256, in hex, of the inputs and the format. */
export function cacheKey(inputs: BuildInputs): string {
  return hex(sha256(JSON.stringify({
    format: FORMAT,
    source: inputs.source,
    arch: inputs.arch,
    compiler: inputs.compiler,
    options: inputs.options,
  })));
}

/** An entry's bytes: the header, then the CUBIN. */
export function encodeEntry(cubin: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(HEADER + cubin.length);
  out.set(MAGIC, 0);
  const view = new DataView(out.buffer);
  view.setUint32(8, FORMAT, true);
  view.setUint32(12, cubin.length, true);
  out.set(sha256(cubin), 16);
  out.set(cubin, HEADER);
  return out;
}

/** The CUBIN of an entry, or null when the entry is not whole and sound. */
export function decodeEntry(
  bytes: Uint8Array<ArrayBuffer>,
): Uint8Array<ArrayBuffer> | null {
  if (bytes.length < HEADER + ELF.length) return null;
  if (MAGIC.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (view.getUint32(8, true) !== FORMAT) return null;
  if (view.getUint32(12, true) !== bytes.length - HEADER) return null;
  const cubin = bytes.slice(HEADER);
  if (ELF.some((b, i) => cubin[i] !== b)) return null;
  const sum = sha256(cubin);
  if (sum.some((b, i) => bytes[16 + i] !== b)) return null;
  return cubin;
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env for it
  }
}

/** The cache folder from the environment, or null for no cache. */
export function defaultCacheDir(): string | null {
  const explicit = env("MEC_KERNEL_CACHE");
  if (explicit === "off") return null;
  if (explicit) return explicit;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/deno-mec/kernels`;
  const home = env("HOME");
  return home ? `${home}/.cache/deno-mec/kernels` : null;
}

/** What `cachedBuild` did. */
export interface CacheOutcome {
  cubin: Uint8Array<ArrayBuffer>;
  /** Whether the image came from the cache (false: it was built). */
  hit: boolean;
  /** Whether a built image was written to the cache. */
  stored: boolean;
  /** The entry's path, or null without a cache. */
  path: string | null;
}

function readEntry(path: string): Uint8Array<ArrayBuffer> | null {
  try {
    return decodeEntry(Deno.readFileSync(path));
  } catch {
    return null; // missing, unreadable, or no --allow-read
  }
}

function writeEntry(dir: string, path: string, cubin: Uint8Array): boolean {
  const temp = `${path}.${crypto.randomUUID()}.tmp`;
  try {
    Deno.mkdirSync(dir, { recursive: true });
    Deno.writeFileSync(temp, encodeEntry(cubin));
    Deno.renameSync(temp, path);
    return true;
  } catch {
    try {
      Deno.removeSync(temp);
    } catch {
      // never written
    }
    return false;
  }
}

/**
 * The image for `inputs`: the cached one when `dir` holds a sound entry for
 * them, else `build()`'s, which is then stored. `dir` null means no cache;
 * `refresh` ignores an existing entry (one the driver refused to load).
 */
export function cachedBuild(
  dir: string | null,
  inputs: BuildInputs,
  build: () => Uint8Array<ArrayBuffer>,
  { refresh = false }: { refresh?: boolean } = {},
): CacheOutcome {
  const path = dir === null ? null : `${dir}/${cacheKey(inputs)}.cubin`;
  if (path !== null && !refresh) {
    const cubin = readEntry(path);
    if (cubin !== null) return { cubin, hit: true, stored: false, path };
  }
  const cubin = build();
  const stored = dir !== null && path !== null && writeEntry(dir, path, cubin);
  return { cubin, hit: false, stored, path };
}
