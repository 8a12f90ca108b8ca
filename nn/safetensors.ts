/**
 * The safetensors file format, as Hugging Face defines it
 * (https://github.com/huggingface/safetensors), so checkpoints move between
 * this toolkit and PyTorch unchanged.
 *
 * Layout: an 8-byte little-endian unsigned length N, N bytes of UTF-8 JSON
 * header, then the data buffer. The header maps each tensor's name to
 * `{"dtype", "shape", "data_offsets": [begin, end)}` (offsets into the data
 * buffer) and may hold a `"__metadata__"` map of strings. Data is
 * little-endian and row-major; the tensors tile the data buffer exactly.
 *
 * Writing produces F32 only. Reading accepts F32, F16, BF16 and F64, and the
 * integer types I64 and I32 (PyTorch stores BatchNorm's `num_batches_tracked`
 * as int64), and gives float32, the only element type of this toolkit's
 * tensors; integers are exact up to 2^24.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";

/** A tensor's data on the host: its shape and its values as float32. */
export interface HostTensor {
  /** Dimensions, outermost first; `[]` for a 0-d tensor (one value). */
  shape: readonly number[];
  /** The values in row-major (C) order; length is the product of shape. */
  data: Float32Array;
}

/** What a safetensors file holds: tensors in header order, and metadata. */
export interface Safetensors {
  tensors: Map<string, HostTensor>;
  metadata: Record<string, string>;
}

/** Tensors to encode: a Map, or any iterable of [name, tensor] pairs. */
export type TensorEntries =
  | Map<string, HostTensor>
  | Iterable<readonly [string, HostTensor]>;

/** The reference implementation refuses headers over 100 MB as hostile. */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";

/**
 * Typed arrays use the platform's byte order and the format is little-endian,
 * so the copy-free paths below are only taken where the two agree; elsewhere
 * bytes are converted one value at a time through DataView.
 */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Bytes per element of every dtype the format names. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
  C64: 8,
};
const READABLE = new Set(["F32", "F16", "BF16", "F64", "I64", "I32"]);

function fmt(values: readonly number[]): string {
  return `[${values.join(", ")}]`;
}

function isNonNegativeInteger(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/**
 * The element count of `shape`. Products past 2^53 are inexact but stay at
 * least 2^53, so they can never equal a real byte length and still fail the
 * size check.
 */
function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Encodes F32 tensors and string metadata into safetensors bytes. Tensors are
 * laid out in the order given; the header is padded with spaces so the data
 * buffer starts at a multiple of 8 bytes, as the reference writer does.
 * Values are copied bit for bit (NaN payloads and -0 included).
 *
 * @throws Error on a repeated or reserved name, a shape that is not
 * non-negative integers, data whose length does not match its shape, or
 * metadata values that are not strings.
 */
export function encodeSafetensors(
  tensors: TensorEntries,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") {
        throw new Error(
          `encodeSafetensors: metadata value of "${key}" is a ${typeof value}, not a string`,
        );
      }
    }
    // Own data property even for a key like "__proto__" in the metadata.
    Object.defineProperty(header, METADATA_KEY, {
      value: { ...metadata },
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  const list: [string, HostTensor][] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    if (name === METADATA_KEY) {
      throw new Error(
        `encodeSafetensors: "${METADATA_KEY}" is reserved and cannot name a tensor`,
      );
    }
    if (Object.hasOwn(header, name)) {
      throw new Error(`encodeSafetensors: tensor "${name}" is given twice`);
    }
    if (!t.shape.every(isNonNegativeInteger)) {
      throw new Error(
        `encodeSafetensors: tensor "${name}" has invalid shape ${fmt(t.shape)}`,
      );
    }
    const n = elementCount(t.shape);
    if (n !== t.data.length) {
      throw new Error(
        `encodeSafetensors: tensor "${name}" has ${t.data.length} values, but shape ${
          fmt(t.shape)
        } holds ${n}`,
      );
    }
    const end = offset + 4 * n;
    Object.defineProperty(header, name, {
      value: { dtype: "F32", shape: [...t.shape], data_offsets: [offset, end] },
      enumerable: true,
      writable: true,
      configurable: true,
    });
    list.push([name, t]);
    offset = end;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = json.length + ((8 - (8 + json.length) % 8) % 8);
  const out = new Uint8Array(8 + padded + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + padded);
  let pos = 8 + padded;
  for (const [, t] of list) {
    const d = t.data;
    if (LITTLE_ENDIAN) {
      out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), pos);
    } else {
      // Through integers: a float round trip could quiet signalling NaNs.
      const words = new Uint32Array(d.buffer, d.byteOffset, d.length);
      const view = new DataView(out.buffer, pos, d.byteLength);
      for (let i = 0; i < d.length; i++) view.setUint32(4 * i, words[i], true);
    }
    pos += d.byteLength;
  }
  return out;
}

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** Checks one header entry's types and dtype; returns it typed. */
function parseEntry(
  name: string,
  info: unknown,
  fail: (detail: string) => never,
): Entry {
  if (typeof info !== "object" || info === null || Array.isArray(info)) {
    fail(`header entry of tensor "${name}" is not an object`);
  }
  const { dtype, shape, data_offsets: offsets } = info as Record<
    string,
    unknown
  >;
  if (dtype === undefined) fail(`tensor "${name}" has no dtype`);
  if (typeof dtype !== "string") {
    fail(`tensor "${name}" has a dtype that is not a string`);
  }
  if (shape === undefined) fail(`tensor "${name}" has no shape`);
  if (!Array.isArray(shape) || !shape.every(isNonNegativeInteger)) {
    fail(
      `tensor "${name}" has a shape that is not a list of non-negative integers`,
    );
  }
  if (offsets === undefined) fail(`tensor "${name}" has no data_offsets`);
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every(isNonNegativeInteger)
  ) {
    fail(
      `tensor "${name}" has data_offsets that are not two non-negative integers [begin, end]`,
    );
  }
  if (!READABLE.has(dtype)) {
    fail(
      Object.hasOwn(DTYPE_BYTES, dtype)
        ? `tensor "${name}" has dtype ${dtype}, which this toolkit cannot read (it reads F32, F16, BF16, F64, I64 and I32)`
        : `tensor "${name}" has unknown dtype "${dtype}"`,
    );
  }
  return { name, dtype, shape, begin: offsets[0], end: offsets[1] };
}

/** Float32 bit patterns of all 65536 half-precision values, built on use. */
let halfTable: Uint32Array | null = null;

/**
 * Every half value is exactly a float32 value, so the conversion is a bit
 * rearrangement: rebias the exponent, widen the mantissa, normalise
 * subnormals, and keep infinities and NaN payloads.
 */
function halfToFloatBits(): Uint32Array {
  if (halfTable) return halfTable;
  const table = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    let bits: number;
    if (exp === 0x1f) {
      bits = 0x7f800000 | (mant << 13);
    } else if (exp !== 0) {
      bits = ((exp + 112) << 23) | (mant << 13);
    } else if (mant === 0) {
      bits = 0;
    } else {
      // mant × 2^-24 with its top bit at position k is 1.f × 2^(k-24).
      const k = 31 - Math.clz32(mant);
      bits = ((k + 103) << 23) | ((mant << (23 - k)) & 0x7fffff);
    }
    table[h] = (sign | bits) >>> 0;
  }
  halfTable = table;
  return table;
}

/**
 * Converts one tensor's little-endian bytes (an own copy, whose buffer the
 * result may take over) of a safetensors dtype (F32, F16, BF16, F64, I64,
 * I32) to float32.
 */
export function toFloat32(
  dtype: string,
  raw: Uint8Array<ArrayBuffer>,
): Float32Array {
  const buffer = raw.buffer;
  const view = new DataView(buffer);
  switch (dtype) {
    case "F32": {
      if (LITTLE_ENDIAN) return new Float32Array(buffer);
      // Through integers: a float round trip could quiet signalling NaNs.
      const out = new Float32Array(raw.length / 4);
      const words = new Uint32Array(out.buffer);
      for (let i = 0; i < out.length; i++) {
        words[i] = view.getUint32(4 * i, true);
      }
      return out;
    }
    case "F64": {
      // Assigning a float64 to a Float32Array element rounds to nearest even.
      const out = new Float32Array(raw.length / 8);
      if (LITTLE_ENDIAN) {
        out.set(new Float64Array(buffer));
      } else {
        for (let i = 0; i < out.length; i++) {
          out[i] = view.getFloat64(8 * i, true);
        }
      }
      return out;
    }
    case "I64": {
      const out = new Float32Array(raw.length / 8);
      for (let i = 0; i < out.length; i++) {
        out[i] = Number(view.getBigInt64(8 * i, true));
      }
      return out;
    }
    case "I32": {
      const out = new Float32Array(raw.length / 4);
      for (let i = 0; i < out.length; i++) out[i] = view.getInt32(4 * i, true);
      return out;
    }
    default: {
      // F16 and BF16: written as bit patterns so NaN payloads survive.
      const n = raw.length / 2;
      const halves = LITTLE_ENDIAN ? new Uint16Array(buffer) : (() => {
        const h = new Uint16Array(n);
        for (let i = 0; i < n; i++) h[i] = view.getUint16(2 * i, true);
        return h;
      })();
      const out = new Float32Array(n);
      const bits = new Uint32Array(out.buffer);
      if (dtype === "BF16") {
        // bfloat16 is the top half of a float32.
        for (let i = 0; i < n; i++) bits[i] = halves[i] << 16;
      } else {
        const table = halfToFloatBits();
        for (let i = 0; i < n; i++) bits[i] = table[halves[i]];
      }
      return out;
    }
  }
}

/** A parsed, validated header: its entries and metadata. */
interface Header {
  entries: Entry[];
  metadata: Record<string, string>;
}

/** The 8-byte header length, checked against the bytes that follow it. */
function headerLength(
  prefix: Uint8Array,
  following: number,
  fail: (detail: string) => never,
): number {
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(
    0,
    true,
  );
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail(
      `header length ${n} bytes is over the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`,
    );
  }
  const length = Number(n);
  if (length > following) {
    fail(
      `header length ${length} bytes is more than the ${following} bytes that follow the length (truncated file?)`,
    );
  }
  return length;
}

/**
 * Parses the JSON header and checks every entry against a data buffer of
 * `dataLength` bytes (in range, sized by dtype and shape, tiling the buffer
 * exactly), so that nothing is allocated for a tensor the file cannot hold.
 */
function parseHeader(
  headerBytes: Uint8Array,
  dataLength: number,
  fail: (detail: string) => never,
): Header {
  if (headerBytes[0] !== 0x7b) fail(`header does not start with "{"`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(
      headerBytes,
    );
  } catch {
    return fail("header is not valid UTF-8");
  }
  // Valid JSON that starts with "{" is an object.
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }

  let metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === METADATA_KEY) {
      if (typeof info !== "object" || info === null || Array.isArray(info)) {
        fail(`${METADATA_KEY} is not an object of strings`);
      }
      for (const [key, value] of Object.entries(info)) {
        if (typeof value !== "string") {
          fail(`${METADATA_KEY} value of "${key}" is not a string`);
        }
      }
      metadata = Object.fromEntries(Object.entries(info));
    } else {
      entries.push(parseEntry(name, info, fail));
    }
  }

  for (const e of entries) {
    if (e.begin > e.end || e.end > dataLength) {
      fail(
        `tensor "${e.name}" has data_offsets ${
          fmt([e.begin, e.end])
        } outside the data buffer of ${dataLength} bytes`,
      );
    }
    const need = elementCount(e.shape) * DTYPE_BYTES[e.dtype];
    if (need !== e.end - e.begin) {
      fail(
        `tensor "${e.name}" of dtype ${e.dtype} and shape ${
          fmt(e.shape)
        } needs ${need} bytes, but data_offsets ${fmt([e.begin, e.end])} span ${
          e.end - e.begin
        }`,
      );
    }
  }
  // The reference reader requires the tensors to tile the data buffer.
  const sorted = [...entries].sort((a, b) =>
    a.begin - b.begin || a.end - b.end
  );
  let covered = 0;
  let previous: Entry | null = null;
  for (const e of sorted) {
    if (e.begin < covered && previous) {
      fail(
        `tensors "${previous.name}" ${
          fmt([previous.begin, previous.end])
        } and "${e.name}" ${fmt([e.begin, e.end])} overlap`,
      );
    }
    if (e.begin > covered) {
      fail(
        `bytes [${covered}, ${e.begin}) of the data buffer belong to no tensor`,
      );
    }
    covered = e.end;
    previous = e;
  }
  if (covered !== dataLength) {
    fail(
      `bytes [${covered}, ${dataLength}) of the data buffer belong to no tensor`,
    );
  }
  return { entries, metadata };
}

/** The tensors of a validated header, from the data buffer's bytes. */
function decodeTensors(header: Header, data: Uint8Array): Safetensors {
  const tensors = new Map<string, HostTensor>();
  for (const e of header.entries) {
    // slice() gives each tensor its own aligned buffer: one copy, and no
    // aliasing of the caller's bytes.
    const raw = data.slice(e.begin, e.end);
    tensors.set(e.name, { shape: e.shape, data: toFloat32(e.dtype, raw) });
  }
  return { tensors, metadata: header.metadata };
}

/** A failure of one file (or of bytes): `where: detail`. */
function failer(where: string): (detail: string) => never {
  return (detail) => {
    throw new Error(`${where}: ${detail}`);
  };
}

function tooShort(length: number): string {
  return `${length} bytes is too short for safetensors, which starts with an 8-byte header length`;
}

function decode(bytes: Uint8Array, where: string): Safetensors {
  // Typed explicitly so that TypeScript narrows after each call.
  const fail: (detail: string) => never = failer(where);
  if (bytes.length < 8) fail(tooShort(bytes.length));
  const length = headerLength(bytes, bytes.length - 8, fail);
  const header = parseHeader(
    bytes.subarray(8, 8 + length),
    bytes.length - 8 - length,
    fail,
  );
  return decodeTensors(header, bytes.subarray(8 + length));
}

/**
 * Decodes safetensors bytes. F32, F16, BF16, F64, I64 and I32 tensors come
 * back as float32: F16 and BF16 exactly (subnormals, infinities and NaN
 * included), F64 and large integers rounded to nearest. Tensors keep the
 * header's order; the returned arrays
 * are copies that do not alias `bytes`.
 *
 * @throws Error with one sentence naming the problem (and the tensor, where
 * one is at fault) on any malformed input or a dtype other than those six.
 */
export function decodeSafetensors(bytes: Uint8Array): Safetensors {
  return decode(bytes, "safetensors");
}

/**
 * Writes `data` to `path` atomically: into a temporary file in the same
 * folder (`.<name>.<pid>-<8 hex>.tmp`, locked while it is written), flushed
 * to disk, then renamed over `path`. A crash at any point leaves `path`
 * either as it was or complete; the temporary file is removed when anything
 * fails, and one left by a killed process is found by
 * {@link removeStaleTemporaries}.
 *
 * @throws Error naming `path`, with the underlying error as `cause`.
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array,
): Promise<void> {
  // Same folder, so the rename stays on one file system and is atomic.
  const temp = join(
    dirname(path),
    `.${basename(path)}.${Deno.pid}-${crypto.randomUUID().slice(0, 8)}.tmp`,
  );
  let created = false;
  try {
    const file = await Deno.open(temp, { write: true, createNew: true });
    created = true;
    try {
      // Held until the file is closed, after the rename: a temporary file
      // whose lock is free has no writer (see removeStaleTemporaries).
      await file.lock(true);
      for (let done = 0; done < data.length;) {
        done += await file.write(data.subarray(done));
      }
      // Without the flush a crash after the rename could leave `path` naming
      // a file whose blocks never reached the disk.
      await file.sync();
      await Deno.rename(temp, path);
      created = false;
    } finally {
      file.close();
    }
  } catch (e) {
    if (created) await Deno.remove(temp).catch(() => {});
    throw new Error(`cannot write ${path}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/**
 * Encodes tensors and metadata as safetensors (see {@link encodeSafetensors})
 * and writes them to `path` atomically (see {@link writeFileAtomic}).
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorEntries,
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/**
 * What kind of file system object `info` describes, for messages: "a
 * FIFO", "a character device", ...
 */
export function describeFileType(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a folder";
  if (info.isFifo) return "a FIFO (named pipe)";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSocket) return "a socket";
  return "not a regular file";
}

/**
 * Reads exactly `length` bytes from the file's current position, or throws
 * when it ends before.
 */
async function readExactly(
  file: Deno.FsFile,
  length: number,
  fail: (detail: string) => never,
): Promise<Uint8Array<ArrayBuffer>> {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await file.read(out.subarray(done));
    if (n === null) {
      fail(
        `the file ended after ${done} of ${length} bytes (did it change while being read?)`,
      );
    }
    done += n;
  }
  return out;
}

/**
 * Reads a safetensors file (see {@link decodeSafetensors}) without trusting
 * it: the path must be a regular file (a FIFO, a device such as /dev/zero
 * or a folder is refused before it is opened, so nothing blocks or reads
 * without end); the header length and every tensor's bytes are checked
 * against the file's size before the tensors are read, so that no header
 * can make it allocate more than the file holds.
 *
 * @throws Error whose message starts with `path` when the file is malformed
 * or not a regular file; the file system's own error (which names the path)
 * when it cannot be read.
 */
export async function readSafetensors(path: string): Promise<Safetensors> {
  const fail = failer(path);
  const info = await Deno.stat(path);
  if (!info.isFile) fail(`it is ${describeFileType(info)}, not a regular file`);
  const size = info.size;
  if (size < 8) fail(tooShort(size));
  using file = await Deno.open(path, { read: true });
  const length = headerLength(await readExactly(file, 8, fail), size - 8, fail);
  const header = parseHeader(
    await readExactly(file, length, fail),
    size - 8 - length,
    fail,
  );
  return decodeTensors(
    header,
    await readExactly(file, size - 8 - length, fail),
  );
}

/**
 * Whether `name` is a temporary file of {@link writeFileAtomic}'s naming,
 * `.<target>.<pid>-<8 hex>.tmp` (or, from earlier versions,
 * `.<target>.<8 hex>.tmp`); returns the target and the writer's process id
 * (null for the earlier naming), or null.
 */
export function parseTemporaryName(
  name: string,
): { target: string; pid: number | null } | null {
  const m = /^\.(.+)\.(?:(\d+)-)?[0-9a-f]{8}\.tmp$/.exec(name);
  if (m === null) return null;
  return { target: m[1], pid: m[2] === undefined ? null : Number(m[2]) };
}

/**
 * A temporary file of the earlier naming (which took no lock) belongs to no
 * live writer once nobody has written to it for this long.
 */
export const STALE_UNLOCKED_MS = 10 * 60 * 1000;

/**
 * A locked-naming temporary file must also be this old to count as stale:
 * it closes the moment between a writer creating the file and locking it.
 */
export const STALE_LOCKED_MS = 2000;

/**
 * Removes the temporary files that interrupted {@link writeFileAtomic}
 * calls left in `dir`, and returns their names. Only regular files of its
 * naming whose target `isTarget` accepts (the caller's own kind of file)
 * are touched, and only stale ones: no process holds the lock that every
 * writer keeps until it has renamed its file (and the file is
 * {@link STALE_LOCKED_MS} old), or, for the earlier naming without a lock,
 * nobody has written to it for {@link STALE_UNLOCKED_MS}. A missing folder
 * has none.
 */
export async function removeStaleTemporaries(
  dir: string,
  isTarget: (target: string) => boolean,
): Promise<string[]> {
  const removed: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return removed;
    throw e;
  }
  for (const entry of entries) {
    const parsed = parseTemporaryName(entry.name);
    if (parsed === null || !entry.isFile || !isTarget(parsed.target)) continue;
    const path = join(dir, entry.name);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch {
      continue; // renamed or removed meanwhile
    }
    try {
      const info = await file.stat();
      if (!info.isFile) continue;
      const age = Date.now() - (info.mtime?.getTime() ?? 0);
      const stale = parsed.pid === null
        ? age >= STALE_UNLOCKED_MS
        : age >= STALE_LOCKED_MS && await file.tryLock(true);
      if (!stale) continue;
      // By name: a writer that renamed its file meanwhile lost nothing.
      await Deno.remove(path);
      removed.push(entry.name);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    } finally {
      file.close();
    }
  }
  return removed.sort();
}
