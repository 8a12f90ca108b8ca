/**
 * NVRTC (`libnvrtc.so.13`, or `.so.12`): CUDA C++ source to PTX and to a
 * CUBIN for one GPU architecture, at run time, with no toolkit installed.
 *
 * libnvrtc opens its builtins library (`libnvrtc-builtins.so.13.N`) by
 * soname when it compiles and has no RUNPATH to find it beside itself, so
 * cuda/find.ts opens the builtins first by absolute path.
 *
 * @module
 */

import { lazyLibrary, type Opened } from "./find.ts";
import {
  addressOf,
  bufferString,
  checker,
  cstr,
  CudaError,
  out,
  pointerOut,
  readCString,
} from "./ffi.ts";

export const NVRTC_SYMBOLS = {
  nvrtcGetErrorString: { parameters: ["i32"], result: "pointer" },
  nvrtcVersion: { parameters: ["buffer", "buffer"], result: "i32" },
  nvrtcGetNumSupportedArchs: { parameters: ["buffer"], result: "i32" },
  nvrtcGetSupportedArchs: { parameters: ["buffer"], result: "i32" },
  nvrtcCreateProgram: {
    parameters: ["buffer", "buffer", "buffer", "i32", "pointer", "pointer"],
    result: "i32",
  },
  nvrtcDestroyProgram: { parameters: ["buffer"], result: "i32" },
  nvrtcCompileProgram: {
    parameters: ["pointer", "i32", "buffer"],
    result: "i32",
  },
  nvrtcGetPTXSize: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcGetPTX: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcGetCUBINSize: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcGetCUBIN: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcGetProgramLogSize: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcGetProgramLog: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcAddNameExpression: { parameters: ["pointer", "buffer"], result: "i32" },
  nvrtcGetLoweredName: {
    parameters: ["pointer", "buffer", "buffer"],
    result: "i32",
  },
} as const;

/** `NVRTC_ERROR_COMPILATION`: the source has errors; the log says which. */
export const NVRTC_ERROR_COMPILATION = 6;

/** NVRTC, opened on first use (builtins first); one sentence if missing. */
export const nvrtcLibrary: () => Opened<typeof NVRTC_SYMBOLS> = lazyLibrary(
  "nvrtc",
  NVRTC_SYMBOLS,
);

const sym = () => nvrtcLibrary().symbols;

export function nvrtcStatusString(status: number): string {
  return readCString(sym().nvrtcGetErrorString(status));
}

const check = checker("NVRTC", nvrtcStatusString);

/** NVRTC's version, e.g. "13.0". */
export function nvrtcVersion(): string {
  const major = out.i32();
  const minor = out.i32();
  check(sym().nvrtcVersion(major, minor), "nvrtcVersion");
  return `${major[0]}.${minor[0]}`;
}

/** The real architectures this NVRTC compiles for (75, 80, 86, 90, ...). */
export function supportedArchs(): number[] {
  const n = out.i32();
  check(sym().nvrtcGetNumSupportedArchs(n), "nvrtcGetNumSupportedArchs");
  const archs = new Int32Array(n[0]);
  check(sym().nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs");
  return [...archs];
}

/** What to compile for, and how. */
export interface CompileOptions {
  /** The file name shown in the log (default "kernels.cu"). */
  name?: string;
  /** A real architecture, "sm_90", for a CUBIN; "compute_90" gives PTX only. */
  arch: string;
  /** Further NVRTC options ("--std=c++17", "-lineinfo", ...). */
  options?: readonly string[];
  /** Template instantiations whose mangled names are wanted. */
  nameExpressions?: readonly string[];
}

/** A compiled program. */
export interface Compiled {
  ptx: string;
  /** ELF CUBIN for a real architecture; empty for a virtual one. */
  cubin: Uint8Array<ArrayBuffer>;
  /** The compiler's log (warnings, `--ptxas-options=-v` resource usage). */
  log: string;
  /** Mangled name of each name expression. */
  lowered: Map<string, string>;
}

/** A compilation that failed, with the compiler's log. */
export class CompileError extends CudaError {
  constructor(status: number, description: string, readonly log: string) {
    super("NVRTC", "nvrtcCompileProgram", status, description);
    const first = log.split("\n").find((l) => l.includes("error")) ?? "";
    this.message = `NVRTC could not compile the CUDA kernels (${description})${
      first ? `: ${first.trim()}` : ""
    }\n${log}`;
  }
}

/** Compiles CUDA C++ source; throws CompileError with the log on errors. */
export function compile(source: string, opts: CompileOptions): Compiled {
  const s = sym();
  const progOut = out.u64();
  check(
    s.nvrtcCreateProgram(
      progOut,
      cstr(source),
      cstr(opts.name ?? "kernels.cu"),
      0,
      null,
      null,
    ),
    "nvrtcCreateProgram",
  );
  const prog = pointerOut(progOut);
  try {
    for (const e of opts.nameExpressions ?? []) {
      check(s.nvrtcAddNameExpression(prog, cstr(e)), "nvrtcAddNameExpression");
    }
    const options = [`--gpu-architecture=${opts.arch}`, ...(opts.options ?? [])]
      .map(cstr);
    const argv = new BigUint64Array(options.map((o) => addressOf(o)));
    const status = s.nvrtcCompileProgram(prog, options.length, argv);
    const log = programLog(prog);
    if (status !== 0) {
      throw new CompileError(status, nvrtcStatusString(status), log);
    }
    const ptxSize = out.u64();
    check(s.nvrtcGetPTXSize(prog, ptxSize), "nvrtcGetPTXSize");
    const ptx = new Uint8Array(Number(ptxSize[0]));
    check(s.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX");
    const cubinSize = out.u64();
    check(s.nvrtcGetCUBINSize(prog, cubinSize), "nvrtcGetCUBINSize");
    const cubin = new Uint8Array(Number(cubinSize[0]));
    if (cubin.length > 0) check(s.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN");
    const lowered = new Map<string, string>();
    for (const e of opts.nameExpressions ?? []) {
      const name = out.u64();
      check(s.nvrtcGetLoweredName(prog, cstr(e), name), "nvrtcGetLoweredName");
      lowered.set(e, readCString(pointerOut(name)));
    }
    return { ptx: bufferString(ptx), cubin, log, lowered };
  } finally {
    // Unchecked: a failure to free the program must not hide a compile error.
    s.nvrtcDestroyProgram(progOut);
  }
}

function programLog(prog: Deno.PointerValue): string {
  const s = sym();
  const size = out.u64();
  if (s.nvrtcGetProgramLogSize(prog, size) !== 0) return "";
  const buf = new Uint8Array(Number(size[0]));
  if (buf.length === 0 || s.nvrtcGetProgramLog(prog, buf) !== 0) return "";
  return bufferString(buf).trimEnd();
}
