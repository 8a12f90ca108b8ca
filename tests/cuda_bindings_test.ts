/**
 * Every binding in cuda/ against NVIDIA's real headers and library files:
 * each bound function has a prototype in the header of the library it is
 * loaded from, with the same parameter count and FFI type for each
 * parameter and the result; and each bound name is exported by that file.
 * This is what catches a binding on a legacy ABI name (`cuMemAlloc` where
 * cuda.h means `cuMemAlloc_v2`), which no FFI call can detect.
 */

import { CUBLAS_SYMBOLS } from "../cuda/cublas.ts";
import { CUDNN_SYMBOLS } from "../cuda/cudnn.ts";
import { DRIVER_LEGACY_NAMES, DRIVER_SYMBOLS } from "../cuda/driver.ts";
import { NCCL_SYMBOLS } from "../cuda/nccl.ts";
import { NVRTC_SYMBOLS } from "../cuda/nvrtc.ts";
import { assert } from "./assert.ts";
import { type CType, Headers, type Prototype } from "./cuda_headers.ts";
import {
  gccFound,
  HEADERS,
  headersFound,
  includeFolders,
  librariesMissing,
  libraryPaths,
  noteSkipped,
} from "./cuda_env.ts";

type Table = Deno.ForeignLibraryInterface;

const missing = librariesMissing() ??
  (!headersFound
    ? `headers ${HEADERS.join(", ")} not found in ${
      includeFolders.join(", ") || "any include folder"
    }`
    : !gccFound
    ? "gcc, the C preprocessor the header check uses, is not installed"
    : null);
if (missing) noteSkipped("bindings against headers", missing);
const ignore = missing !== null;

function preprocess(header: string, defines: string[] = []): string {
  const src = Deno.makeTempFileSync({ suffix: ".h" });
  try {
    Deno.writeTextFileSync(src, header);
    const out = new Deno.Command("gcc", {
      args: [
        "-E",
        "-x",
        "c",
        ...defines,
        ...includeFolders.map((f) => `-I${f}`),
        src,
      ],
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    if (!out.success) {
      throw new Error(`gcc -E failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    return new TextDecoder().decode(out.stdout);
  } finally {
    Deno.removeSync(src);
  }
}

let parsed: { all: Headers; legacy: Headers } | null = null;

function headers(): { all: Headers; legacy: Headers } {
  if (parsed === null) {
    const all = new Headers(
      preprocess(HEADERS.map((h) => `#include <${h}>`).join("\n") + "\n"),
    );
    // The legacy driver ABI, declared only under this macro.
    const legacy = new Headers(
      preprocess("#include <cuda.h>\n", ["-D__CUDA_API_VERSION_INTERNAL"]),
    );
    parsed = { all, legacy };
  }
  return parsed;
}

/** An FFI type as the C type class it must match. */
function ffiType(t: Deno.NativeResultType): CType {
  if (typeof t === "object") {
    const fields = (t as Deno.NativeStructType).struct;
    let size = 0;
    let align = 1;
    for (const f of fields) {
      const s = typeof f === "string" ? SIZE[f] : 0;
      size = Math.ceil(size / s) * s + s;
      align = Math.max(align, s);
    }
    return { struct: Math.ceil(size / align) * align };
  }
  switch (t) {
    case "buffer":
    case "pointer":
    case "function":
      return "pointer";
    case "usize":
      return "u64";
    case "isize":
      return "i64";
    default:
      return t as CType;
  }
}

const SIZE: Record<string, number> = {
  u8: 1,
  i8: 1,
  u16: 2,
  i16: 2,
  u32: 4,
  i32: 4,
  u64: 8,
  i64: 8,
  f32: 4,
  f64: 8,
  usize: 8,
  isize: 8,
  pointer: 8,
  buffer: 8,
};

const show = (t: CType) =>
  typeof t === "string" ? t : `struct(${t.struct} bytes)`;
const same = (a: CType, b: CType) => show(a) === show(b);

/** Every way a table differs from the headers, one line each. */
function mismatches(
  table: Table,
  lookup: (name: string) => Prototype | undefined,
  headerFile: RegExp,
): string[] {
  const problems: string[] = [];
  for (const [key, def] of Object.entries(table)) {
    if (!("parameters" in def)) continue;
    const name = (def as Deno.ForeignFunction).name?.toString() ?? key;
    const proto = lookup(name);
    if (!proto) {
      problems.push(
        `${name}: no such function in the headers (a legacy or misspelt name?)`,
      );
      continue;
    }
    if (!headerFile.test(proto.file)) {
      problems.push(
        `${name}: declared in ${proto.file}, not in this library's headers`,
      );
    }
    const params = def.parameters.map(ffiType);
    if (params.length !== proto.parameters.length) {
      problems.push(
        `${name}: ${params.length} parameters bound, the header has ${proto.parameters.length}: ${proto.text}`,
      );
      continue;
    }
    params.forEach((p, i) => {
      if (!same(p, proto.parameters[i])) {
        problems.push(
          `${name}: parameter ${i + 1} bound as ${show(p)}, the header says ${
            show(proto.parameters[i])
          }: ${proto.text}`,
        );
      }
    });
    const result = ffiType(def.result ?? "void");
    if (!same(result, proto.result)) {
      problems.push(
        `${name}: result bound as ${show(result)}, the header says ${
          show(proto.result)
        }`,
      );
    }
  }
  return problems;
}

/** Names of a table that the library file does not export (nm -D). */
function unexported(table: Table, file: string): string[] {
  const out = new Deno.Command("nm", {
    args: ["-D", "--defined-only", file],
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  assert.ok(out.success, `nm -D ${file} failed`);
  const exported = new Set(
    new TextDecoder().decode(out.stdout).split("\n").map((l) =>
      l.trim().split(/\s+/).pop()?.split("@")[0] ?? ""
    ),
  );
  return Object.entries(table)
    .filter(([, d]) =>
      "parameters" in d && !(d as Deno.ForeignFunction).optional
    )
    .map(([k, d]) => (d as Deno.ForeignFunction).name?.toString() ?? k)
    .filter((n) => !exported.has(n));
}

const TABLES: {
  library: string;
  table: Table;
  header: RegExp;
  file: () => string | null;
}[] = [
  {
    library: "CUDA driver",
    table: DRIVER_SYMBOLS,
    header: /\/cuda\.h$/,
    file: () => null,
  },
  {
    library: "cuBLAS",
    table: CUBLAS_SYMBOLS,
    header: /\/cublas_api\.h$/,
    file: () => libraryPaths.cublas,
  },
  {
    library: "cuDNN",
    table: CUDNN_SYMBOLS,
    header: /\/cudnn_(graph|ops|cnn)\.h$/,
    file: () => libraryPaths.cudnn,
  },
  {
    library: "NVRTC",
    table: NVRTC_SYMBOLS,
    header: /\/nvrtc\.h$/,
    file: () => libraryPaths.nvrtc,
  },
  {
    library: "NCCL",
    table: NCCL_SYMBOLS,
    header: /\/nccl\.h$/,
    file: () => libraryPaths.nccl,
  },
];

for (const { library, table, header, file } of TABLES) {
  Deno.test({
    name: `${library} bindings match the prototypes of its real headers`,
    ignore,
    fn() {
      const { all, legacy } = headers();
      const lookup = (name: string) =>
        library === "CUDA driver" && DRIVER_LEGACY_NAMES.has(name)
          ? legacy.prototypes.get(name)
          : all.prototypes.get(name);
      const problems = mismatches(table, lookup, header);
      assert.deepEqual(problems, [], problems.join("\n"));
      assert.ok(Object.keys(table).length >= 5);
    },
  });

  Deno.test({
    name: `${library} bindings are all exported by the library file`,
    ignore: ignore || file() === null,
    fn() {
      const names = unexported(table, file()!);
      assert.deepEqual(
        names,
        [],
        `not exported by ${file()}: ${names.join(", ")}`,
      );
    },
  });
}

Deno.test({
  name:
    "the header check catches the legacy ABI, wrong widths and wrong counts",
  ignore,
  fn() {
    const { all } = headers();
    const lookup = (n: string) => all.prototypes.get(n);
    const bad = {
      // cuda.h #defines cuMemAlloc to cuMemAlloc_v2: the bare name is the 32-bit ABI.
      cuMemAlloc: { parameters: ["buffer", "usize"], result: "i32" },
      // size_t bound as a 32-bit integer.
      cuMemFree_v2: { parameters: ["u32"], result: "i32" },
      // a parameter missing.
      cuDeviceGetName: { parameters: ["buffer", "i32"], result: "i32" },
      // a double bound as a float.
      cudnnSetActivationDescriptor: {
        parameters: ["pointer", "i32", "i32", "f32"],
        result: "i32",
      },
      // an enum bound as a pointer, and the result as void.
      cublasSetMathMode: { parameters: ["pointer", "pointer"], result: "void" },
      // the unique id passed by pointer instead of by value.
      ncclCommInitRank: {
        parameters: ["buffer", "i32", "buffer", "i32"],
        result: "i32",
      },
    } as const;
    const problems = mismatches(bad, lookup, /./);
    for (const name of Object.keys(bad)) {
      assert.ok(
        problems.some((p) => p.startsWith(`${name}:`)),
        `${name} was not flagged: ${problems.join("\n")}`,
      );
    }
    // And the legacy unversioned cuBLAS names are exported, so only the
    // prototype check stands between a binding and the legacy ABI.
    assert.deepEqual(
      unexported(
        { cublasSgemm: { parameters: [], result: "void" } },
        libraryPaths.cublas!,
      ),
      [],
    );
    assert.equal(all.prototypes.has("cublasSgemm"), false);
  },
});
