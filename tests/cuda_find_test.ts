/**
 * Where cuda/find.ts looks for NVIDIA's libraries, in which order, what it
 * opens first, and what it says when a library is nowhere. Run on folders
 * of empty files made for the test, so it needs no NVIDIA library.
 */

import {
  LIBRARIES,
  locate,
  notFoundMessage,
  preloads,
  searchFolders,
} from "../cuda/find.ts";
import { assert } from "./assert.ts";

const VARS = [
  "MEC_CUDA_LIBS",
  "VIRTUAL_ENV",
  "CONDA_PREFIX",
  "CUDA_HOME",
  "CUDA_PATH",
];

/** Runs fn with the given variables set (others of VARS unset), then restores them. */
function withEnv(vars: Record<string, string>, fn: () => void): void {
  const saved = VARS.map((v) => [v, Deno.env.get(v)] as const);
  try {
    for (const v of VARS) Deno.env.delete(v);
    for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
    fn();
  } finally {
    for (const [k, v] of saved) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
  }
}

function touch(path: string): void {
  Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  Deno.writeFileSync(path, new Uint8Array(0));
}

Deno.test("MEC_CUDA_LIBS comes first, then the pip wheels of a venv, then the CUDA toolkit", () => {
  const root = Deno.makeTempDirSync();
  try {
    const venv = `${root}/venv`;
    const site = `${venv}/lib/python3.11/site-packages`;
    Deno.mkdirSync(`${site}/nvidia/cu13/lib`, { recursive: true });
    withEnv({
      MEC_CUDA_LIBS: `${root}/a:${root}/b/`,
      VIRTUAL_ENV: venv,
      CUDA_HOME: `${root}/cuda`,
    }, () => {
      const folders = searchFolders(LIBRARIES.cublas);
      assert.deepEqual(folders.slice(0, 4), [
        { folder: `${root}/a`, origin: "MEC_CUDA_LIBS" },
        { folder: `${root}/b`, origin: "MEC_CUDA_LIBS" },
        { folder: `${site}/nvidia/cu13/lib`, origin: "pip wheel" },
        { folder: `${site}/nvidia/cublas/lib`, origin: "pip wheel" },
      ]);
      const toolkit = folders.findIndex((f) =>
        f.folder === `${root}/cuda/lib64`
      );
      assert.ok(toolkit > 3, "the toolkit after the wheels");
      assert.equal(folders[toolkit].origin, "CUDA toolkit");
    });
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("the wheels of each python3 on PATH are found, as PyTorch's pip install puts them", () => {
  const root = Deno.makeTempDirSync();
  const path = Deno.env.get("PATH");
  try {
    touch(`${root}/py/bin/python3`);
    touch(
      `${root}/py/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9`,
    );
    Deno.env.set("PATH", `${root}/py/bin:${path}`);
    withEnv({}, () => {
      const where = locate("cudnn");
      assert.equal(
        where.path,
        `${root}/py/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9`,
      );
      assert.equal(where.searched[0].origin, "pip wheel");
    });
  } finally {
    if (path !== undefined) Deno.env.set("PATH", path);
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("the first folder holding a library wins, and the newer soname within a folder", () => {
  const root = Deno.makeTempDirSync();
  try {
    touch(`${root}/old/libcublas.so.12`);
    touch(`${root}/both/libcublas.so.12`);
    touch(`${root}/both/libcublas.so.13`);
    withEnv({ MEC_CUDA_LIBS: `${root}/empty:${root}/both:${root}/old` }, () => {
      assert.equal(locate("cublas").path, `${root}/both/libcublas.so.13`);
    });
    withEnv({ MEC_CUDA_LIBS: `${root}/old:${root}/both` }, () => {
      assert.equal(locate("cublas").path, `${root}/old/libcublas.so.12`);
    });
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("the driver is never looked for in a CUDA toolkit, whose libcuda is a stub", () => {
  const root = Deno.makeTempDirSync();
  try {
    touch(`${root}/cuda/lib64/libcuda.so.1`);
    touch(`${root}/cuda/lib64/stubs/libcuda.so`);
    withEnv({ CUDA_HOME: `${root}/cuda` }, () => {
      assert.deepEqual(searchFolders(LIBRARIES.driver), []);
      assert.equal(locate("driver").path, null);
      assert.match(
        notFoundMessage(locate("driver")),
        /^No NVIDIA driver is installed: libcuda\.so\.1/,
      );
    });
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});

Deno.test("a missing library gets one sentence naming the file, every folder and the pip package", () => {
  withEnv({
    MEC_CUDA_LIBS: "/nonexistent/one:/nonexistent/two",
    CUDA_HOME: "/nonexistent/cuda",
  }, () => {
    const where = locate("cudnn");
    const message = notFoundMessage(where);
    assert.equal(message.split("\n").length, 1);
    assert.match(message, /^cuDNN \(libcudnn\.so\.9\) was not found in /);
    for (const { folder } of where.searched) {
      assert.ok(message.includes(folder), folder);
    }
    assert.match(
      message,
      /\/nonexistent\/one, \/nonexistent\/two, .*\/nonexistent\/cuda\/lib64/,
    );
    assert.match(message, /pip install nvidia-cudnn-cu13/);
    assert.match(message, /\.$/);
  });
});

Deno.test("NVRTC's builtins of the same major version are opened first from NVRTC's folder", () => {
  const root = Deno.makeTempDirSync();
  try {
    touch(`${root}/lib/libnvrtc.so.13`);
    touch(`${root}/lib/libnvrtc-builtins.so.13.0`);
    touch(`${root}/lib/libnvrtc-builtins.so.12.8`);
    touch(`${root}/lib/libcublas.so.13`);
    touch(`${root}/lib/libcublasLt.so.13`);
    touch(`${root}/dnn/libcudnn.so.9`);
    withEnv({ MEC_CUDA_LIBS: `${root}/lib:${root}/dnn` }, () => {
      assert.deepEqual(preloads(locate("nvrtc")), [
        `${root}/lib/libnvrtc-builtins.so.13.0`,
      ]);
      assert.deepEqual(preloads(locate("cublas")), [
        `${root}/lib/libcublasLt.so.13`,
      ]);
      // cuDNN opens cuBLASLt and NVRTC by soname for some engines.
      assert.deepEqual(preloads(locate("cudnn")), [
        `${root}/lib/libcublasLt.so.13`,
        `${root}/lib/libnvrtc-builtins.so.13.0`,
        `${root}/lib/libnvrtc.so.13`,
      ]);
    });
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
});
