/**
 * The C prototypes of NVIDIA's real headers, as Deno FFI types, for the test
 * that checks every binding in cuda/ against the header of the library it is
 * loaded from.
 *
 * The headers go through a real C preprocessor (`gcc -E -x c`): their export
 * macros (`CUDNNWINAPI`, `CUDAAPI`, `CUDNN_DEPRECATED`) expand to nothing,
 * cuda.h's `#define cuMemAlloc cuMemAlloc_v2` renames take effect (so the
 * legacy unversioned ABI is simply absent), and C mode keeps out the C++-only
 * inline overloads of cublas_api.h. The preprocessed text is split into
 * top-level declarations; typedefs are resolved to the FFI type each C type
 * is passed as.
 *
 * @module
 */

/** How a C type crosses the FFI boundary. */
export type CType =
  | "i8"
  | "u8"
  | "i16"
  | "u16"
  | "i32"
  | "u32"
  | "i64"
  | "u64"
  | "f32"
  | "f64"
  | "void"
  | "pointer"
  | { struct: number };

/** A function declared in the headers. */
export interface Prototype {
  name: string;
  result: CType;
  parameters: CType[];
  /** The declaration as written (whitespace collapsed). */
  text: string;
  /** The header that declares it. */
  file: string;
}

type Typedef =
  | { kind: "enum" }
  | { kind: "pointer" }
  | { kind: "struct"; size: number }
  | { kind: "alias"; of: string };

/** The FFI type of a C arithmetic type written as keywords, in any order. */
function scalar(words: string): CType | undefined {
  const w = words.split(" ").filter((x) =>
    x !== "signed" || words === "signed"
  );
  const unsigned = w.includes("unsigned");
  const longs = w.filter((x) => x === "long").length;
  const rest = w.filter((x) => x !== "unsigned" && x !== "long" && x !== "int");
  if (w.length === 0) return undefined;
  if (rest.length === 0 || (rest.length === 1 && rest[0] === "signed")) {
    if (longs > 0) return unsigned ? "u64" : "i64";
    return unsigned ? "u32" : "i32";
  }
  if (rest.length !== 1) return undefined;
  switch (rest[0]) {
    case "char":
      return unsigned ? "u8" : "i8";
    case "short":
      return unsigned ? "u16" : "i16";
    case "float":
      return "f32";
    case "double":
      return longs ? undefined : "f64";
    case "void":
      return "void";
    case "_Bool":
      return "u8";
  }
  return undefined;
}

/** Words that are part of a type, never a parameter's name. */
const TYPE_WORDS = new Set([
  "char",
  "short",
  "int",
  "long",
  "signed",
  "unsigned",
  "float",
  "double",
  "void",
  "_Bool",
  "const",
  "volatile",
]);

/** Sizes of the scalar FFI types, for structs passed by value. */
const SIZES: Record<string, number> = {
  i8: 1,
  u8: 1,
  i16: 2,
  u16: 2,
  i32: 4,
  u32: 4,
  i64: 8,
  u64: 8,
  f32: 4,
  f64: 8,
  pointer: 8,
};

/** Parsed headers: every prototype by name, with typedefs resolved. */
export class Headers {
  readonly prototypes = new Map<string, Prototype>();
  readonly #typedefs = new Map<string, Typedef>();

  constructor(preprocessed: string) {
    for (const { text, file } of declarations(preprocessed)) {
      this.#declare(text, file);
    }
  }

  /** The FFI type of a C type such as `const cudnnTensorDescriptor_t`. */
  resolve(type: string): CType {
    const t = type.replace(/\b(const|volatile|restrict|__restrict)\b/g, " ")
      .replace(/\s+/g, " ").trim();
    if (t.includes("*") || t.includes("[")) return "pointer";
    const words = t.replace(/\b(struct|enum|union)\s+/, "");
    if (/^enum\b/.test(t)) return "i32";
    const s = scalar(words);
    if (s !== undefined) return s;
    const def = this.#typedefs.get(words);
    if (!def) throw new Error(`unknown C type "${type}"`);
    switch (def.kind) {
      case "enum":
        return "i32";
      case "pointer":
        return "pointer";
      case "struct":
        return { struct: def.size };
      case "alias":
        return this.resolve(def.of);
    }
  }

  #declare(text: string, file: string): void {
    if (text.startsWith("typedef ")) return this.#typedef(text.slice(8));
    const fn = /^(.*?)\b(\w+)\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)$/s.exec(text);
    if (!fn || fn[1].trim() === "" || text.includes("{")) return;
    const [, ret, name, params] = fn;
    if (/\b(typedef|return)\b/.test(ret)) return;
    try {
      this.prototypes.set(name, {
        name,
        result: this.resolve(ret.replace(/\bextern\b/g, "")),
        parameters: this.#parameters(params),
        text,
        file,
      });
    } catch {
      // A declaration this parser cannot type (none of ours): skipped.
    }
  }

  #parameters(list: string): CType[] {
    const params = splitTopLevel(list, ",").map((p) => p.trim());
    if (params.length === 1 && (params[0] === "" || params[0] === "void")) {
      return [];
    }
    return params.map((p) => {
      if (p.includes("(")) return "pointer"; // a function pointer
      if (/\[\s*\w*\s*\]\s*$/.test(p)) return "pointer"; // an array
      return this.resolve(dropName(p));
    });
  }

  #typedef(body: string): void {
    const name = /(\w+)\s*(\[[^\]]*\])?\s*$/.exec(body)?.[1];
    if (!name) return;
    if (/^\s*(const\s+)?enum\b/.test(body)) {
      if (/\*\s*\w+\s*$/.test(body)) {
        this.#typedefs.set(name, { kind: "pointer" });
      } else this.#typedefs.set(name, { kind: "enum" });
    } else if (/\(\s*\*\s*\w+\s*\)\s*\(/.test(body)) {
      this.#typedefs.set(name, { kind: "pointer" });
    } else if (/^\s*(struct|union)\b/.test(body)) {
      if (/\*\s*\w+\s*$/.test(body)) {
        this.#typedefs.set(name, { kind: "pointer" });
      } else if (body.includes("{")) {
        this.#typedefs.set(name, { kind: "struct", size: this.#size(body) });
      } else {
        // `typedef struct X Y`: an incomplete type, only used by pointer.
        this.#typedefs.set(name, { kind: "struct", size: -1 });
      }
    } else {
      const of = body.slice(0, body.lastIndexOf(name)).trim();
      if (of.endsWith("*")) this.#typedefs.set(name, { kind: "pointer" });
      else this.#typedefs.set(name, { kind: "alias", of });
    }
  }

  /** The size of a struct of scalar and array fields (C alignment rules). */
  #size(body: string): number {
    const fields = body.slice(body.indexOf("{") + 1, body.lastIndexOf("}"));
    // Nested aggregates and bit fields are not needed: none is passed by value.
    if (/[{}:]/.test(fields)) return -1;
    let size = 0;
    let align = 1;
    for (const f of fields.split(";").map((s) => s.trim()).filter(Boolean)) {
      const arr = /\[\s*(\d+)\s*\]\s*$/.exec(f);
      const count = arr ? Number(arr[1]) : 1;
      const decl = arr ? f.slice(0, arr.index) : f;
      let t: CType;
      try {
        t = this.resolve(dropName(decl));
      } catch {
        return -1;
      }
      if (typeof t !== "string") return -1;
      const s = SIZES[t];
      if (!s) return -1;
      size = Math.ceil(size / s) * s + s * count;
      align = Math.max(align, s);
    }
    return Math.ceil(size / align) * align;
  }
}

/** A declaration's parameter text without its name (names are optional). */
function dropName(param: string): string {
  const p = param.trim();
  const m = /^(.*?[\s*])(\w+)$/.exec(p);
  if (!m) return p;
  const last = m[2];
  if (TYPE_WORDS.has(last)) return p;
  // A lone type name (`cudnnHandle_t`) has no parameter name to drop.
  if (m[1].trim() === "" || /^(const\s+)?(struct\s+|enum\s+)?$/.test(m[1])) {
    return p;
  }
  return m[1];
}

function splitTopLevel(text: string, sep: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === "(" || ch === "[" || ch === "{") depth++;
    else if (ch === ")" || ch === "]" || ch === "}") depth--;
    else if (ch === sep && depth === 0) {
      out.push(text.slice(start, i));
      start = i + 1;
    }
  }
  out.push(text.slice(start));
  return out;
}

/** Strips `__attribute__((...))` and `__declspec(...)` groups. */
function stripAttributes(text: string): string {
  let out = text;
  for (const word of ["__attribute__", "__declspec", "__asm__", "__asm"]) {
    let i: number;
    while ((i = out.indexOf(word)) >= 0) {
      let j = out.indexOf("(", i);
      if (j < 0) break;
      let depth = 0;
      for (; j < out.length; j++) {
        if (out[j] === "(") depth++;
        else if (out[j] === ")" && --depth === 0) break;
      }
      out = out.slice(0, i) + " " + out.slice(j + 1);
    }
  }
  return out.replace(/\b(__extension__|__inline__|__inline|extern)\b/g, " ");
}

/** Top-level declarations of preprocessed C, each with its header. */
function* declarations(
  preprocessed: string,
): Generator<{ text: string; file: string }> {
  let file = "";
  let current = "";
  let currentFile = "";
  let depth = 0;
  for (const line of preprocessed.split("\n")) {
    const marker = /^# \d+ "([^"]+)"/.exec(line);
    if (marker) {
      file = marker[1];
      continue;
    }
    if (line.startsWith("#")) continue;
    for (const ch of line + " ") {
      if (current.trim() === "") currentFile = file;
      current += ch;
      if (ch === "{") depth++;
      else if (ch === "}") {
        depth--;
        // The end of a function definition: drop it whole.
        if (
          depth === 0 && /\)\s*\{/.test(current) &&
          !/\btypedef\b/.test(current.slice(0, current.indexOf("{")))
        ) {
          const head = current.slice(0, current.indexOf("{"));
          if (!/\b(struct|enum|union)\b[^()]*$/.test(head)) current = "";
        }
      } else if (ch === ";" && depth === 0) {
        const text = stripAttributes(current.slice(0, -1)).replace(/\s+/g, " ")
          .trim();
        if (text) yield { text, file: currentFile };
        current = "";
      }
    }
  }
}
