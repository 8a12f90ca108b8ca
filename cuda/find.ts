/**
 * Finding NVIDIA's libraries on disk and opening them.
 *
 * Search order, for every library but the driver:
 * 1. `MEC_CUDA_LIBS`, a `:`-separated list of folders;
 * 2. the folders of NVIDIA's pip wheels (`site-packages/nvidia/cu13/lib`,
 *    `nvidia/cudnn/lib`, ...) of the active virtual environment or conda
 *    environment, of each `python3` on `PATH`, of the user's site-packages
 *    and of the usual venv places;
 * 3. a CUDA toolkit: `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda` (`lib64`);
 * 4. the system loader's own path (`ldconfig`, `LD_LIBRARY_PATH`).
 *
 * The driver (`libcuda.so.1`) comes with the NVIDIA driver only: it is looked
 * for in `MEC_CUDA_LIBS` and then on the loader's path, never in a toolkit,
 * whose `stubs/libcuda.so` would only fail every call.
 *
 * Libraries that another library opens by soname and cannot find through its
 * own RUNPATH are opened first by absolute path (the loader then reuses them
 * by soname), because `LD_LIBRARY_PATH` cannot be changed from inside a
 * running process: NVRTC's builtins (libnvrtc has no RUNPATH), and cuBLASLt
 * and NVRTC for cuDNN, which opens them at run time for some engines.
 *
 * @module
 */

/** The libraries the bindings load. */
export type LibraryId = "driver" | "cublas" | "nvrtc" | "cudnn" | "nccl";

/** What is known about where a library lives and how users get it. */
export interface LibrarySpec {
  id: LibraryId;
  /** NVIDIA's name for it. */
  title: string;
  /** File names (sonames), preferred first. */
  files: readonly string[];
  /** Folders under site-packages that NVIDIA's wheels put it in. */
  wheelFolders: readonly string[];
  /** Whether a CUDA toolkit's lib64 holds it. */
  inToolkit: boolean;
  /** How to install it, for the not-found message. */
  install: string;
}

export const LIBRARIES: Readonly<Record<LibraryId, LibrarySpec>> = {
  driver: {
    id: "driver",
    title: "CUDA driver",
    files: ["libcuda.so.1"],
    wheelFolders: [],
    inToolkit: false,
    install: "install the NVIDIA driver",
  },
  cublas: {
    id: "cublas",
    title: "cuBLAS",
    files: ["libcublas.so.13", "libcublas.so.12"],
    wheelFolders: ["nvidia/cu13/lib", "nvidia/cublas/lib"],
    inToolkit: true,
    install:
      "install it with `pip install nvidia-cublas` (CUDA 13) or a CUDA toolkit, or set MEC_CUDA_LIBS to its folder",
  },
  nvrtc: {
    id: "nvrtc",
    title: "NVRTC",
    files: ["libnvrtc.so.13", "libnvrtc.so.12"],
    wheelFolders: ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
    inToolkit: true,
    install:
      "install it with `pip install nvidia-cuda-nvrtc` (CUDA 13) or a CUDA toolkit, or set MEC_CUDA_LIBS to its folder",
  },
  cudnn: {
    id: "cudnn",
    title: "cuDNN",
    files: ["libcudnn.so.9"],
    wheelFolders: ["nvidia/cudnn/lib"],
    inToolkit: true,
    install:
      "install it with `pip install nvidia-cudnn-cu13` (or -cu12 for CUDA 12), or set MEC_CUDA_LIBS to its folder",
  },
  nccl: {
    id: "nccl",
    title: "NCCL",
    files: ["libnccl.so.2"],
    wheelFolders: ["nvidia/nccl/lib"],
    inToolkit: true,
    install:
      "install it with `pip install nvidia-nccl-cu13` (or -cu12 for CUDA 12), or set MEC_CUDA_LIBS to its folder",
  },
};

/** A folder searched, and why it is on the list. */
export interface SearchFolder {
  folder: string;
  origin: "MEC_CUDA_LIBS" | "pip wheel" | "CUDA toolkit";
}

/** Where a library was found: a file, or the loader's path (`path` null). */
export interface Located {
  spec: LibrarySpec;
  /** Absolute path of the file, or null when only the loader may know it. */
  path: string | null;
  /** The soname to open when `path` is null. */
  file: string;
  /** Every folder searched, in order. */
  searched: readonly SearchFolder[];
}

/** The folders to search for a library, in order, without duplicates. */
export function searchFolders(spec: LibrarySpec): SearchFolder[] {
  const out: SearchFolder[] = [];
  const seen = new Set<string>();
  const add = (folder: string, origin: SearchFolder["origin"]) => {
    const f = folder.replace(/\/+$/, "");
    if (f === "" || seen.has(f)) return;
    seen.add(f);
    out.push({ folder: f, origin });
  };
  for (const f of (env("MEC_CUDA_LIBS") ?? "").split(":")) {
    add(f, "MEC_CUDA_LIBS");
  }
  if (spec.id === "driver") return out;
  for (const site of sitePackages()) {
    for (const w of spec.wheelFolders) add(`${site}/${w}`, "pip wheel");
  }
  if (spec.inToolkit) {
    for (const home of toolkitHomes()) {
      add(`${home}/lib64`, "CUDA toolkit");
      add(`${home}/targets/x86_64-linux/lib`, "CUDA toolkit");
    }
  }
  return out;
}

/** Finds a library's file without opening it. */
export function locate(id: LibraryId): Located {
  const spec = LIBRARIES[id];
  const searched = searchFolders(spec);
  for (const { folder } of searched) {
    for (const file of spec.files) {
      if (isFile(`${folder}/${file}`)) {
        return { spec, path: `${folder}/${file}`, file, searched };
      }
    }
  }
  return { spec, path: null, file: spec.files[0], searched };
}

/** The one sentence for a library found nowhere. */
export function notFoundMessage(where: Located): string {
  const { spec, searched } = where;
  const names = spec.files.join(" or ");
  const folders = searched.map((s) => s.folder);
  const list = folders.length
    ? `${folders.join(", ")} and the system loader's path`
    : "the system loader's path";
  if (spec.id === "driver") {
    return `No NVIDIA driver is installed: ${names}, which comes with the driver (not with pip or a CUDA toolkit), was not found in ${list}.`;
  }
  return `${spec.title} (${names}) was not found in ${list}; ${spec.install}.`;
}

/** Libraries opened so far, kept alive for the life of the process. */
const opened = new Map<
  string,
  Deno.DynamicLibrary<Deno.ForeignLibraryInterface>
>();

/**
 * Opens a library with its symbol table: first the libraries it needs
 * opened by absolute path, then the library itself. Throws one sentence
 * when it is missing or cannot be loaded.
 */
export function openLibrary<S extends Deno.ForeignLibraryInterface>(
  id: LibraryId,
  symbols: S,
): { library: Deno.DynamicLibrary<S>; path: string } {
  const where = locate(id);
  for (const dep of preloads(where)) preload(dep);
  const target = where.path ?? where.file;
  let library: Deno.DynamicLibrary<S>;
  try {
    library = Deno.dlopen(target, symbols);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (
      where.path === null && /cannot open shared object|No such file/.test(why)
    ) {
      throw new Error(notFoundMessage(where));
    }
    throw new Error(
      `${where.spec.title} at ${target} could not be loaded: ${firstLine(why)}`,
    );
  }
  return { library, path: where.path ?? target };
}

/** A library opened once, on first use: its symbols and the file's path. */
export interface Opened<S extends Deno.ForeignLibraryInterface> {
  symbols: Deno.DynamicLibrary<S>["symbols"];
  path: string;
}

/**
 * The getter each binding exports: it opens the library on its first call
 * (throwing one sentence when the library is missing) and returns the same
 * symbols after.
 */
export function lazyLibrary<S extends Deno.ForeignLibraryInterface>(
  id: LibraryId,
  symbols: S,
): () => Opened<S> {
  let opened: Opened<S> | null = null;
  return () => {
    if (opened === null) {
      const { library, path } = openLibrary(id, symbols);
      opened = { symbols: library.symbols, path };
    }
    return opened;
  };
}

/**
 * Absolute paths to open before a library: NVRTC's builtins (same folder,
 * same major version) for NVRTC; cuBLASLt and NVRTC (with its builtins)
 * for cuDNN, when they are found; the cuBLASLt beside cuBLAS, which a
 * cuBLAS built without a RUNPATH of `$ORIGIN` would not find (the wheels'
 * has one, so there it is only opened a little earlier).
 */
export function preloads(where: Located): string[] {
  const out: string[] = [];
  const siblings = (path: string, pattern: RegExp) => {
    const folder = path.slice(0, path.lastIndexOf("/"));
    return listFolder(folder).filter((f) => pattern.test(f)).sort().map((f) =>
      `${folder}/${f}`
    );
  };
  const nvrtcBuiltins = (path: string) => {
    const major = /\.so\.(\d+)$/.exec(path)?.[1] ?? "";
    return siblings(
      path,
      new RegExp(`^libnvrtc-builtins\\.so\\.${major}\\.\\d+$`),
    );
  };
  if (where.path === null) return out;
  switch (where.spec.id) {
    case "nvrtc":
      out.push(...nvrtcBuiltins(where.path));
      break;
    case "cublas": {
      const major = /\.so\.(\d+)$/.exec(where.path)?.[1];
      out.push(
        ...siblings(where.path, new RegExp(`^libcublasLt\\.so\\.${major}$`)),
      );
      break;
    }
    case "cudnn": {
      const cublas = locate("cublas").path;
      if (cublas) {
        const major = /\.so\.(\d+)$/.exec(cublas)?.[1];
        out.push(
          ...siblings(cublas, new RegExp(`^libcublasLt\\.so\\.${major}$`)),
        );
      }
      const nvrtc = locate("nvrtc").path;
      if (nvrtc) out.push(...nvrtcBuiltins(nvrtc), nvrtc);
      break;
    }
  }
  return out;
}

function preload(path: string): void {
  if (opened.has(path)) return;
  try {
    opened.set(path, Deno.dlopen(path, {}));
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(`${path} could not be loaded: ${firstLine(why)}`);
  }
}

/** site-packages folders of the Python environments a user may have. */
export function sitePackages(): string[] {
  const prefixes: string[] = [];
  const home = env("HOME");
  for (const v of ["VIRTUAL_ENV", "CONDA_PREFIX"]) {
    const p = env(v);
    if (p) prefixes.push(p);
  }
  for (const dir of (env("PATH") ?? "").split(":")) {
    if (dir === "" || !isFile(`${dir}/python3`)) continue;
    prefixes.push(parent(dir));
    try {
      prefixes.push(parent(parent(Deno.realPathSync(`${dir}/python3`))));
    } catch {
      // A dangling link: its own folder is still listed.
    }
  }
  if (home) {
    prefixes.push(`${home}/.local`);
    for (const v of listFolder(`${home}/.pyenv/versions`)) {
      prefixes.push(`${home}/.pyenv/versions/${v}`);
    }
  }
  const cwd = safeCwd();
  for (const base of [cwd, home]) {
    if (!base) continue;
    prefixes.push(`${base}/.venv`, `${base}/venv`);
  }
  prefixes.push("/usr/local", "/usr", "/opt/conda");
  const out: string[] = [];
  for (const prefix of prefixes) {
    const lib = `${prefix}/lib`;
    for (
      const py of listFolder(lib).filter((f) => /^python3(\.\d+)?$/.test(f))
        .sort()
    ) {
      for (const kind of ["site-packages", "dist-packages"]) {
        const site = `${lib}/${py}/${kind}`;
        if (isDir(`${site}/nvidia`) && !out.includes(site)) out.push(site);
      }
    }
  }
  return out;
}

/** CUDA toolkit folders, from the environment and the usual place. */
export function toolkitHomes(): string[] {
  const out: string[] = [];
  for (const v of ["CUDA_HOME", "CUDA_PATH"]) {
    const p = env(v);
    if (p) out.push(p);
  }
  out.push("/usr/local/cuda");
  return out;
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env for it: treated as unset
  }
}

function safeCwd(): string | undefined {
  try {
    return Deno.cwd();
  } catch {
    return undefined;
  }
}

function parent(path: string): string {
  const p = path.replace(/\/+$/, "");
  return p.slice(0, p.lastIndexOf("/")) || "/";
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function isDir(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

function listFolder(folder: string): string[] {
  try {
    return [...Deno.readDirSync(folder)].map((e) => e.name);
  } catch {
    return [];
  }
}

function firstLine(text: string): string {
  return text.split("\n")[0].trim();
}
