/**
 * Linux's `/proc` files, read through libc's `open` and `read`: Deno lets
 * only `--allow-all` read `/proc`, while the tools and the bench run with
 * `--allow-ffi`, which can read any file anyway. Where libc or `/proc` is
 * missing (macOS, Windows) every reading is null.
 *
 * @module
 */

const libcSymbols = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i64" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

/** libc, or null where it cannot be opened; undefined until first asked. */
let libc: Deno.DynamicLibrary<typeof libcSymbols>["symbols"] | null | undefined;

/**
 * The most of a file read: `/proc/stat`'s cpu lines (about 150 bytes a
 * core) and all of `/proc/self/stat` and `/proc/self/status` fit.
 */
const READ_BYTES = 1 << 16;
const buffer = new Uint8Array(READ_BYTES);

/**
 * The first 64 KB of a file under `/proc`, or null where it cannot be read
 * (no libc, no such file, or no FFI permission).
 */
export function readProc(path: string): string | null {
  if (libc === undefined) {
    try {
      libc = Deno.dlopen("libc.so.6", libcSymbols).symbols;
    } catch {
      libc = null;
    }
  }
  if (libc === null) return null;
  const fd = libc.open(new TextEncoder().encode(path + "\0"), 0);
  if (fd < 0) return null;
  try {
    let length = 0;
    while (length < READ_BYTES) {
      const n = Number(
        libc.read(fd, buffer.subarray(length), BigInt(READ_BYTES - length)),
      );
      if (n <= 0) break;
      length += n;
    }
    return new TextDecoder().decode(buffer.subarray(0, length));
  } finally {
    libc.close(fd);
  }
}

/** This process's peak resident memory (VmHWM) in bytes, or null. */
export function peakResidentBytes(): number | null {
  const status = readProc("/proc/self/status");
  const m = status === null ? null : /^VmHWM:\s+(\d+)\s+kB/m.exec(status);
  return m ? Number(m[1]) * 1024 : null;
}
