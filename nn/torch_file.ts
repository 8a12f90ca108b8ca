/**
 * Files written by PyTorch's `torch.save`, read without running them: the
 * zip format of PyTorch 1.6 and later (`ARCHIVE/data.pkl`, a pickle whose
 * tensors point at `ARCHIVE/data/KEY` records) and the format before it
 * (pickles one after another, then the storages' bytes).
 *
 * The pickle goes through the restricted reader of `pickle.ts` with only
 * the globals PyTorch uses for tensors and ordered dicts allowed:
 * `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` (and the
 * older `_rebuild_tensor`, and `_rebuild_parameter`) and the storage
 * classes (`torch.FloatStorage`, `torch.HalfStorage`, `torch.LongStorage`,
 * ...), named in persistent ids. Anything else is refused.
 *
 * Storages of float32, float16, bfloat16, float64, int64 and int32 are
 * read (BatchNorm's `num_batches_tracked` is int64) and given as float32.
 * Tensors may be views (any strides, a storage offset, several tensors of
 * one storage); each must lie inside its storage and hold no more elements
 * than it, so no tensor costs more memory than the file's own bytes.
 *
 * @module
 */

import {
  PyDict,
  PyGlobal,
  type PyObject,
  PyTuple,
  type PyValue,
  unpickle,
} from "./pickle.ts";
import { type HostTensor, toFloat32 } from "./safetensors.ts";
import {
  type ByteSource,
  bytesSource,
  fileSource,
  readZipDirectory,
  readZipEntry,
  type ZipEntry,
} from "./zip.ts";

/** Why a PyTorch file cannot be read: `message` is the detail. */
export class TorchFileError extends Error {
  /** The global a pickle asked for and was refused, if that is the reason. */
  readonly refused: string | null;
  constructor(detail: string, refused: string | null = null) {
    super(detail);
    this.name = "TorchFileError";
    this.refused = refused;
  }
}

/** The storage classes PyTorch names, with the dtype read from each. */
const STORAGES: Record<string, { bytes: number; dtype: string | null }> = {
  FloatStorage: { bytes: 4, dtype: "F32" },
  HalfStorage: { bytes: 2, dtype: "F16" },
  BFloat16Storage: { bytes: 2, dtype: "BF16" },
  DoubleStorage: { bytes: 8, dtype: "F64" },
  LongStorage: { bytes: 8, dtype: "I64" },
  IntStorage: { bytes: 4, dtype: "I32" },
  ShortStorage: { bytes: 2, dtype: null },
  CharStorage: { bytes: 1, dtype: null },
  ByteStorage: { bytes: 1, dtype: null },
  BoolStorage: { bytes: 1, dtype: null },
  ComplexFloatStorage: { bytes: 8, dtype: null },
  ComplexDoubleStorage: { bytes: 16, dtype: null },
};

/** A storage class, as a persistent id names it. */
class StorageType extends PyGlobal {
  constructor(
    name: string,
    readonly bytes: number,
    readonly dtype: string | null,
  ) {
    super("torch", name);
  }
}

/**
 * A storage: `numel` elements of `type` from element `start` of record
 * `key`, which holds `recordNumel` (more than `numel` only for the views of
 * the format before 1.6).
 */
export class TorchStorage implements PyObject {
  readonly pyType = "torch.Storage";
  constructor(
    readonly type: StorageType,
    readonly key: string,
    readonly start: number,
    readonly numel: number,
    readonly recordNumel: number,
  ) {}
}

/** A tensor as a pickle describes it: a strided view of a storage. */
export class TorchTensor implements PyObject {
  readonly pyType = "torch.Tensor";
  constructor(
    readonly storage: TorchStorage,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

function fail(detail: string): never {
  throw new TorchFileError(detail);
}

function isIndex(v: PyValue | undefined): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

function indices(v: PyValue | undefined, what: string): number[] {
  if (!(v instanceof PyTuple) || !v.items.every(isIndex)) {
    fail(`a tensor's ${what} is not a tuple of non-negative integers`);
  }
  return (v as PyTuple).items as number[];
}

/**
 * A tensor from `_rebuild_tensor_v2(storage, offset, size, stride, ...)`,
 * checked to lie inside its storage.
 */
function rebuildTensor(args: PyValue[]): TorchTensor {
  const [storage, offset] = args;
  if (!(storage instanceof TorchStorage)) {
    fail("a tensor is built from something that is not a storage");
  }
  if (!isIndex(offset)) fail("a tensor has an invalid storage offset");
  const shape = indices(args[2], "size");
  const stride = indices(args[3], "stride");
  if (shape.length !== stride.length) {
    fail("a tensor's size and stride differ in length");
  }
  const s = storage as TorchStorage;
  let numel = 1;
  let last = offset as number;
  for (let i = 0; i < shape.length; i++) {
    numel *= shape[i];
    last += (shape[i] - 1) * stride[i];
  }
  if (numel > 0 && (numel > s.numel || last >= s.numel)) {
    fail(
      `a tensor of size [${shape.join(", ")}] and stride [${
        stride.join(", ")
      }] at offset ${offset} does not fit its storage of ${s.numel} elements`,
    );
  }
  return new TorchTensor(s, offset as number, shape, stride);
}

const ALLOWED = new Map<string, PyGlobal>([
  [
    "collections.OrderedDict",
    new PyGlobal("collections", "OrderedDict", (args) => {
      if (args.length !== 0) fail("an OrderedDict is built with arguments");
      return new PyDict();
    }),
  ],
  [
    "torch._utils._rebuild_tensor_v2",
    new PyGlobal("torch._utils", "_rebuild_tensor_v2", rebuildTensor),
  ],
  [
    "torch._utils._rebuild_tensor",
    new PyGlobal("torch._utils", "_rebuild_tensor", rebuildTensor),
  ],
  [
    "torch._utils._rebuild_parameter",
    new PyGlobal("torch._utils", "_rebuild_parameter", (args) => {
      if (!(args[0] instanceof TorchTensor)) {
        fail("a parameter is built from something that is not a tensor");
      }
      return args[0];
    }),
  ],
  ...Object.entries(STORAGES).map(([name, s]): [string, PyGlobal] => [
    `torch.${name}`,
    new StorageType(name, s.bytes, s.dtype),
  ]),
]);

/** Reads one pickle of the file with PyTorch's allowed globals. */
function readPickle(
  bytes: Uint8Array,
  persistentLoad: ((pid: PyValue) => PyValue) | undefined,
  start = 0,
): { value: PyValue; end: number } {
  return unpickle(bytes, {
    findGlobal: (module, name) => ALLOWED.get(`${module}.${name}`) ?? null,
    persistentLoad,
    refuse: (name) =>
      new TorchFileError(
        `its pickle asks to run ${name}, which a file of tensors never needs`,
        name,
      ),
    fail: (detail) => new TorchFileError(detail),
  }, start);
}

/** The storage a persistent id `('storage', type, key, location, numel, ...)` names. */
function storageFromId(pid: PyValue, legacy: boolean): TorchStorage {
  if (!(pid instanceof PyTuple) || pid.items[0] !== "storage") {
    fail("its pickle refers to an object that is not a storage");
  }
  const [, type, key, , numel, view] = (pid as PyTuple).items;
  if (!(type instanceof StorageType)) {
    fail("a storage's type is not one of PyTorch's storage classes");
  }
  if (typeof key !== "string" || !isIndex(numel)) {
    fail("a storage is named by an invalid persistent id");
  }
  const t = type as StorageType;
  const n = numel as number;
  if (!legacy || view === null || view === undefined) {
    return new TorchStorage(t, key as string, 0, n, n);
  }
  // The format before 1.6 names a view of a storage: (view key, offset, size).
  if (!(view instanceof PyTuple)) fail("a storage view is invalid");
  const [, start, size] = (view as PyTuple).items;
  if (!isIndex(start) || !isIndex(size) || start + size > (numel as number)) {
    fail("a storage view lies outside its storage");
  }
  return new TorchStorage(t, key as string, start as number, size as number, n);
}

/** Where each storage record's bytes are. */
interface Layout {
  /** The bytes of storage record `key`: all `numel` elements. */
  record(
    key: string,
    type: StorageType,
    numel: number,
  ): Promise<Uint8Array<ArrayBuffer>>;
}

/** What `torch.save` wrote: the unpickled object and a way to its tensors. */
export interface TorchFile {
  /** The saved object; tensors in it are {@link TorchTensor}s. */
  root: PyValue;
  /** Which of the two formats the file is in. */
  format: "zip" | "legacy";
  /** Reads the given tensors' values as float32. */
  read(tensors: Map<string, TorchTensor>): Promise<Map<string, HostTensor>>;
}

const ZIP_MAGIC = [0x50, 0x4b, 0x03, 0x04];
/** The first pickle of the format before 1.6 holds this integer. */
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

/**
 * The first pickle of the format before 1.6, as `torch.save` writes it
 * (protocol 2, LONG1 of 10 bytes). No safetensors file starts so: read as
 * its 8-byte header length, they would claim petabytes.
 */
const LEGACY_START = [
  0x80,
  0x02,
  0x8a,
  0x0a,
  0x6c,
  0xfc,
  0x9c,
  0x46,
  0xf9,
  0x20,
  0x6a,
  0xa8,
  0x50,
  0x19,
];

/** Whether the first bytes of a file are those of a `torch.save` file. */
export function isTorchFile(head: Uint8Array): boolean {
  return ZIP_MAGIC.every((b, i) => head[i] === b) ||
    LEGACY_START.every((b, i) => head[i] === b);
}

async function openZip(
  src: ByteSource,
): Promise<{ root: PyValue; layout: Layout }> {
  const entries = await readZipDirectory(src, fail);
  const first = entries.keys().next().value;
  const slash = first?.indexOf("/") ?? -1;
  if (first === undefined || slash < 0) {
    fail("its zip holds no PyTorch archive");
  }
  // Every record sits under one folder named after the file it was saved to.
  const prefix = first!.slice(0, slash + 1);
  const entry = (name: string): ZipEntry | undefined =>
    entries.get(prefix + name);
  const byteorder = entry("byteorder");
  if (byteorder !== undefined) {
    const order = new TextDecoder().decode(
      await readZipEntry(src, byteorder, fail),
    );
    if (order !== "little") fail(`its tensors are stored ${order}-endian`);
  }
  const pkl = entry("data.pkl");
  if (pkl === undefined) {
    fail("its zip has no data.pkl, so it is not a PyTorch file");
  }
  const bytes = await readZipEntry(src, pkl!, fail);
  const { value, end } = readPickle(bytes, storageLoader(new Map(), false));
  if (end !== bytes.length) fail("its data.pkl has bytes after the pickle");
  return {
    root: value,
    layout: {
      async record(key, type, numel) {
        const e = entry(`data/${key}`);
        if (e === undefined) fail(`its storage ${key} is missing from the zip`);
        if (e!.size !== numel * type.bytes) {
          fail(
            `its storage ${key} holds ${
              e!.size
            } bytes where ${numel} elements of torch.${type.name} take ${
              numel * type.bytes
            }`,
          );
        }
        return await readZipEntry(src, e!, fail);
      },
    },
  };
}

/**
 * Reads persistent ids into storages, keeping the first of each record in
 * `seen`: every later one must name the same type and size.
 */
function storageLoader(seen: Map<string, TorchStorage>, legacy: boolean) {
  return (pid: PyValue): PyValue => {
    const s = storageFromId(pid, legacy);
    const known = seen.get(s.key);
    if (known === undefined) seen.set(s.key, s);
    else if (known.type !== s.type || known.recordNumel !== s.recordNumel) {
      fail(`its storage ${s.key} is named with two types or sizes`);
    }
    return s;
  };
}

/**
 * The format before 1.6: a magic number, a protocol version and system
 * information (three small pickles), the object, the list of storage keys,
 * then for each key an 8-byte element count and the elements.
 */
function openLegacy(bytes: Uint8Array): { root: PyValue; layout: Layout } {
  let pos = 0;
  const next = (load?: (pid: PyValue) => PyValue): PyValue => {
    const r = readPickle(bytes, load, pos);
    pos = r.end;
    return r.value;
  };
  if (next() !== LEGACY_MAGIC) {
    fail("it is not a PyTorch file (wrong magic number)");
  }
  const protocol = next();
  if (protocol !== LEGACY_PROTOCOL) {
    fail(
      `it has PyTorch protocol ${
        String(protocol)
      } (${LEGACY_PROTOCOL} is read)`,
    );
  }
  const info = next();
  if (!(info instanceof PyDict) || info.get("little_endian") !== true) {
    fail("its tensors are not stored little-endian");
  }
  const roots = new Map<string, TorchStorage>();
  const root = next(storageLoader(roots, true));
  const keys = next();
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === "string")) {
    fail("its list of storages is invalid");
  }
  // Where each storage's elements start, from the counts written before them.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const places = new Map<string, { start: number; numel: number }>();
  for (const key of keys as string[]) {
    const s = roots.get(key);
    if (s === undefined) fail(`its storage ${key} is listed but never used`);
    if (pos + 8 > bytes.length) {
      fail("it ends before its storages (truncated?)");
    }
    const count = view.getBigInt64(pos, true);
    const bytesPer = s!.type.bytes;
    if (count * BigInt(bytesPer) > BigInt(bytes.length - pos - 8)) {
      fail(`its storage ${key} runs past the end of the file (truncated?)`);
    }
    if (count !== BigInt(s!.recordNumel)) {
      fail(
        `its storage ${key} holds ${count} elements where its pickle names ${
          s!.recordNumel
        }`,
      );
    }
    places.set(key, { start: pos + 8, numel: Number(count) });
    pos += 8 + Number(count) * bytesPer;
  }
  const src = bytesSource(bytes);
  return {
    root,
    layout: {
      record(key, type, numel) {
        const p = places.get(key);
        if (p === undefined) fail(`its storage ${key} is missing`);
        return src.read(p!.start, numel * type.bytes);
      },
    },
  };
}

/** The row-major strides of `shape`. */
function contiguousStrides(shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    out[i] = s;
    s *= shape[i];
  }
  return out;
}

/**
 * The tensor's elements, in row-major order, from its record's values;
 * `values` itself when the tensor is all of them and `last` says no other
 * tensor needs them.
 */
function gather(
  t: TorchTensor,
  values: Float32Array,
  last: boolean,
): Float32Array {
  const numel = t.shape.reduce((a, b) => a * b, 1);
  const base = t.storage.start + t.offset;
  const dense = contiguousStrides(t.shape);
  if (t.shape.every((d, i) => d === 1 || t.stride[i] === dense[i])) {
    if (last && base === 0 && numel === values.length) return values;
    return values.slice(base, base + numel);
  }
  const out = new Float32Array(numel);
  const index = new Array<number>(t.shape.length).fill(0);
  let at = base;
  for (let i = 0; i < numel; i++) {
    out[i] = values[at];
    // Odometer over the indices, last dimension fastest.
    for (let d = t.shape.length - 1; d >= 0; d--) {
      if (++index[d] < t.shape[d]) {
        at += t.stride[d];
        break;
      }
      at -= (t.shape[d] - 1) * t.stride[d];
      index[d] = 0;
    }
  }
  return out;
}

/**
 * Opens a `torch.save` file: reads its pickle (refusing any global but
 * PyTorch's tensor and dict constructors) and gives a reader of the
 * tensors the caller picks. The zip format is read by position from the
 * file, the older format whole.
 *
 * @throws TorchFileError naming the problem, with `refused` set when the
 * pickle asked for a forbidden global.
 */
export async function readTorchFile<T>(
  path: string,
  use: (file: TorchFile) => Promise<T>,
): Promise<T> {
  using handle = await Deno.open(path, { read: true });
  const size = (await handle.stat()).size;
  const src = fileSource(handle, size);
  const head = await src.read(0, Math.min(size, 4));
  const zip = ZIP_MAGIC.every((b, i) => head[i] === b);
  const { root, layout } = zip
    ? await openZip(src)
    : openLegacy(await src.read(0, size));
  const file: TorchFile = {
    root,
    format: zip ? "zip" : "legacy",
    async read(tensors) {
      // A record shared by several tensors is converted once and dropped
      // after its last one.
      const users = new Map<string, number>();
      for (const t of tensors.values()) {
        users.set(t.storage.key, (users.get(t.storage.key) ?? 0) + 1);
      }
      const values = new Map<string, Float32Array>();
      const out = new Map<string, HostTensor>();
      for (const [name, t] of tensors) {
        const s = t.storage;
        if (s.type.dtype === null) {
          fail(
            `its tensor ${name} is a torch.${s.type.name}, which this toolkit cannot read`,
          );
        }
        let v = values.get(s.key);
        if (v === undefined) {
          v = toFloat32(
            s.type.dtype!,
            await layout.record(s.key, s.type, s.recordNumel),
          );
          values.set(s.key, v);
        }
        const left = users.get(s.key)! - 1;
        users.set(s.key, left);
        if (left === 0) values.delete(s.key);
        out.set(name, { shape: [...t.shape], data: gather(t, v, left === 0) });
      }
      return out;
    },
  };
  return await use(file);
}

/** The dict's entries whose values are tensors, with string keys. */
export function tensorEntries(dict: PyDict): Map<string, TorchTensor> {
  const out = new Map<string, TorchTensor>();
  for (const [k, v] of dict.entries) {
    if (typeof k === "string" && v instanceof TorchTensor) out.set(k, v);
  }
  return out;
}
