/**
 * Reading the stored (uncompressed) entries of a zip archive by position,
 * as PyTorch's `torch.save` writes them: every entry stored, sizes in the
 * central directory (the local headers defer them to data descriptors),
 * ZIP64 end records always present, entries padded to 64-byte alignment.
 *
 * The central directory is read from the end of the file and every offset
 * and size in it is checked against the file's size before anything is
 * read, so a damaged or hostile archive can make this read no more than
 * the file holds; each entry read is checked against its CRC-32.
 *
 * Written here rather than taken from npm: zip libraries inflate and hold
 * whole archives or read through Node streams, where a checkpoint needs a
 * few hundred stored entries read by offset from a file of up to gigabytes,
 * and the format PyTorch writes fits in this one file.
 *
 * @module
 */

/** Bytes to read at positions: a file, or bytes already in memory. */
export interface ByteSource {
  readonly size: number;
  /** `length` bytes at `offset` (both checked by the caller). */
  read(offset: number, length: number): Promise<Uint8Array<ArrayBuffer>>;
}

/** A source over an open file of `size` bytes. */
export function fileSource(file: Deno.FsFile, size: number): ByteSource {
  return {
    size,
    async read(offset, length) {
      const out = new Uint8Array(length);
      await file.seek(offset, Deno.SeekMode.Start);
      for (let done = 0; done < length;) {
        const n = await file.read(out.subarray(done));
        if (n === null) {
          throw new Error(
            `the file ended at byte ${
              offset + done
            } of ${size} (did it change while being read?)`,
          );
        }
        done += n;
      }
      return out;
    },
  };
}

/** A source over bytes in memory. */
export function bytesSource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    read: (offset, length) =>
      Promise.resolve(bytes.slice(offset, offset + length)),
  };
}

/** One entry of the central directory. */
export interface ZipEntry {
  name: string;
  /** Offset of its local header. */
  headerOffset: number;
  size: number;
  crc32: number;
}

let crcTable: Uint32Array | null = null;

/** CRC-32 (ISO-HDLC, as zip uses), continuing from `crc`. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  if (crcTable === null) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  const table = crcTable;
  let c = ~crc;
  for (let i = 0; i < bytes.length; i++) {
    c = table[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  }
  return ~c >>> 0;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
/** The end record's fixed part, and the most a comment can add to it. */
const EOCD_BYTES = 22;
const MAX_COMMENT = 0xffff;

function u64(view: DataView, at: number): number {
  const v = view.getBigUint64(at, true);
  // Anything past 2^53 is past every file's size and fails the size checks.
  return v > BigInt(Number.MAX_SAFE_INTEGER)
    ? Number.MAX_SAFE_INTEGER
    : Number(v);
}

/** The central directory's place: from the ZIP64 record where it has one. */
async function directoryPlace(
  src: ByteSource,
  fail: (detail: string) => never,
): Promise<{ offset: number; size: number; count: number }> {
  const tailLength = Math.min(src.size, EOCD_BYTES + MAX_COMMENT);
  const tailStart = src.size - tailLength;
  const tail = await src.read(tailStart, tailLength);
  const view = new DataView(tail.buffer);
  let at = -1;
  for (let i = tail.length - EOCD_BYTES; i >= 0; i--) {
    if (
      view.getUint32(i, true) === EOCD &&
      i + EOCD_BYTES + view.getUint16(i + 20, true) === tail.length
    ) {
      at = i;
      break;
    }
  }
  if (at < 0) {
    fail("its zip directory is missing (the file is truncated or not a zip)");
  }
  if (
    view.getUint16(at + 4, true) !== 0 || view.getUint16(at + 6, true) !== 0
  ) {
    fail("it is a zip split over several files");
  }
  let count = view.getUint16(at + 10, true);
  let size = view.getUint32(at + 12, true);
  let offset = view.getUint32(at + 16, true);
  let end = tailStart + at;
  if (count === 0xffff || size === 0xffffffff || offset === 0xffffffff) {
    // ZIP64: a 20-byte locator just before the end record points at the
    // ZIP64 end record, which holds the full-width values.
    if (end < 20) fail("its ZIP64 locator is missing");
    const loc = new DataView((await src.read(end - 20, 20)).buffer);
    if (loc.getUint32(0, true) !== ZIP64_LOCATOR) {
      fail("its ZIP64 locator is missing");
    }
    const at64 = u64(loc, 8);
    if (at64 + 56 > end - 20) fail("its ZIP64 end record is out of place");
    const rec = new DataView((await src.read(at64, 56)).buffer);
    if (rec.getUint32(0, true) !== ZIP64_EOCD) {
      fail("its ZIP64 end record is missing");
    }
    count = u64(rec, 32);
    size = u64(rec, 40);
    offset = u64(rec, 48);
    end = at64;
  }
  if (offset > end || size > end - offset) {
    fail(
      `its zip directory claims bytes [${offset}, ${
        offset + size
      }) past where the directory ends (${end}; truncated?)`,
    );
  }
  // Each directory entry takes at least 46 bytes.
  if (count > size / 46) {
    fail(`its zip directory claims ${count} entries in ${size} bytes`);
  }
  return { offset, size, count };
}

/**
 * The entries of a zip archive by name, read from its central directory.
 * Only stored entries are accepted (PyTorch never compresses), and each
 * entry's extent is checked against the file when it is read.
 *
 * @throws `fail(detail)` when the archive is damaged, compressed,
 * encrypted or split.
 */
export async function readZipDirectory(
  src: ByteSource,
  fail: (detail: string) => never,
): Promise<Map<string, ZipEntry>> {
  const place = await directoryPlace(src, fail);
  const dir = await src.read(place.offset, place.size);
  const view = new DataView(dir.buffer);
  const entries = new Map<string, ZipEntry>();
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let p = 0;
  for (let i = 0; i < place.count; i++) {
    if (p + 46 > dir.length || view.getUint32(p, true) !== CENTRAL) {
      fail(`its zip directory is damaged at entry ${i}`);
    }
    const flags = view.getUint16(p + 8, true);
    const method = view.getUint16(p + 10, true);
    const crc = view.getUint32(p + 16, true);
    let packed = view.getUint32(p + 20, true);
    let size = view.getUint32(p + 24, true);
    const nameLength = view.getUint16(p + 28, true);
    const extraLength = view.getUint16(p + 30, true);
    const commentLength = view.getUint16(p + 32, true);
    let headerOffset = view.getUint32(p + 42, true);
    const next = p + 46 + nameLength + extraLength + commentLength;
    if (next > dir.length) fail(`its zip directory is damaged at entry ${i}`);
    let name: string;
    try {
      name = utf8.decode(dir.subarray(p + 46, p + 46 + nameLength));
    } catch {
      return fail(`its zip directory has a name that is not UTF-8`);
    }
    // ZIP64 extra field: full-width values for the fields saturated above,
    // in this order.
    for (
      let e = p + 46 + nameLength;
      e + 4 <= p + 46 + nameLength + extraLength;
    ) {
      const id = view.getUint16(e, true);
      const length = view.getUint16(e + 2, true);
      if (id === 0x0001) {
        let f = e + 4;
        const field = (): number => {
          if (f + 8 > e + 4 + length) {
            fail(`its entry ${name} has a short ZIP64 field`);
          }
          const v = u64(view, f);
          f += 8;
          return v;
        };
        if (size === 0xffffffff) size = field();
        if (packed === 0xffffffff) packed = field();
        if (headerOffset === 0xffffffff) headerOffset = field();
      }
      e += 4 + length;
    }
    if (flags & 1) fail(`its entry ${name} is encrypted`);
    if (method !== 0 || packed !== size) {
      fail(`its entry ${name} is compressed, which PyTorch never writes`);
    }
    if (entries.has(name)) fail(`its zip directory names ${name} twice`);
    // Entries come before the directory.
    if (
      headerOffset + 30 > place.offset || size > place.offset - headerOffset
    ) {
      fail(`its entry ${name} lies past the end of its data (truncated?)`);
    }
    entries.set(name, { name, headerOffset, size, crc32: crc });
    p = next;
  }
  return entries;
}

/**
 * The bytes of a stored entry, after its local header, checked against
 * the file's size and the entry's CRC-32.
 */
export async function readZipEntry(
  src: ByteSource,
  entry: ZipEntry,
  fail: (detail: string) => never,
): Promise<Uint8Array<ArrayBuffer>> {
  const header = new DataView((await src.read(entry.headerOffset, 30)).buffer);
  if (header.getUint32(0, true) !== LOCAL) {
    fail(
      `its entry ${entry.name} has no local header where the directory says`,
    );
  }
  const start = entry.headerOffset + 30 + header.getUint16(26, true) +
    header.getUint16(28, true);
  if (start > src.size || entry.size > src.size - start) {
    fail(`its entry ${entry.name} runs past the end of the file (truncated?)`);
  }
  const data = await src.read(start, entry.size);
  if (crc32(data) !== entry.crc32) {
    fail(
      `its entry ${entry.name} fails its CRC-32 check (the file is damaged)`,
    );
  }
  return data;
}
