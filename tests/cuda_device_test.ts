/**
 * The "cuda" device plug-in as users meet it without a GPU, and the promise
 * that a CPU run never opens an NVIDIA library.
 */

import { useDevice } from "../mod.ts";
import { assert } from "./assert.ts";
import { hasDriver } from "./cuda_env.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const driver = hasDriver();
const NO_DRIVER =
  /^No NVIDIA driver is installed: libcuda\.so\.1, which comes with the driver \(not with pip or a CUDA toolkit\), was not found in .*\.$/;

Deno.test({
  name: 'useDevice("cuda") without a driver rejects with one sentence',
  ignore: driver,
  async fn() {
    let caught: unknown;
    try {
      await useDevice("cuda");
    } catch (e) {
      caught = e;
    }
    assert.ok(caught instanceof Error);
    assert.equal(caught.message.split("\n").length, 1);
    assert.match(caught.message, NO_DRIVER);
  },
});

Deno.test({
  name: "with a driver, a GPU past the last one is named in one sentence",
  ignore: !driver,
  async fn() {
    const rejects = async (name: string, pattern: RegExp) => {
      let caught: unknown;
      try {
        await useDevice(name);
      } catch (e) {
        caught = e;
      }
      assert.ok(caught instanceof Error, name);
      assert.match(caught.message, pattern);
    };
    await rejects(
      "cuda:99",
      /^cuda:99 does not exist: this machine has \d+ GPUs? \(cuda:0|^The NVIDIA driver/,
    );
  },
});

for (const tool of ["pretrain", "lincls"]) {
  Deno.test({
    name:
      `${tool} --device cuda without a driver exits 1 with that sentence and no stack trace`,
    ignore: driver,
    async fn() {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--quiet", // Deno's own download lines are not the tool's output
          "--allow-read",
          "--allow-write",
          "--allow-ffi",
          "--allow-env",
          `tools/${tool}.ts`,
          "--device",
          "cuda",
          ...(tool === "lincls"
            ? ["--raw-pixels"]
            : ["--dummy", "--max-iters", "1"]),
        ],
        cwd: ROOT,
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr).trim();
      assert.equal(out.code, 1, stderr);
      assert.equal(stderr.split("\n").length, 1, stderr);
      assert.match(stderr, NO_DRIVER);
    },
  });
}

Deno.test("a CPU training step opens no NVIDIA library, even with MEC_CUDA_LIBS set", async () => {
  const code = `
    import { crossEntropy, Generator, randn, resnet18, scope, SGD, setDefaultDevice, useDevice } from "${ROOT}mod.ts";
    await useDevice("cpu");
    setDefaultDevice("cpu");
    const gen = new Generator(0);
    const net = resnet18({ numClasses: 4, smallStem: true, width: 4, gen });
    const opt = new SGD(net.parameters(), { lr: 0.1, momentum: 0.9 });
    scope(() => {
      const loss = crossEntropy(net.forward(randn([2, 3, 16, 16], gen)), [0, 1]);
      loss.backward();
      opt.step();
      return loss.item();
    });
    const maps = Deno.readTextFileSync("/proc/self/maps").split("\\n");
    const libs = [...new Set(maps.map((l) => l.split(/\\s+/)[5] ?? "").filter((p) => p.includes(".so")))];
    console.log(JSON.stringify(libs));
  `;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--config", `${ROOT}deno.json`, code],
    cwd: ROOT,
    env: {
      MEC_CUDA_LIBS: Deno.env.get("MEC_CUDA_LIBS") ?? "/usr/local/cuda/lib64",
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(r.stdout);
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  const libs: string[] = JSON.parse(stdout.trim().split("\n").pop()!);
  // The check sees the libraries a CPU run does open.
  assert.ok(libs.some((l) => /libopenblas/.test(l)), libs.join(" "));
  const nvidia = libs.filter((l) =>
    /lib(cuda|cudart|cublas|cublasLt|cudnn|nvrtc|nccl)[._-]/.test(l)
  );
  assert.deepEqual(nvidia, []);
});

async function cudaInfo(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "cuda-info", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("deno task cuda-info reports every library and why no GPU can be used, and exits 0", async () => {
  const r = await cudaInfo([]);
  assert.equal(r.code, 0, r.stderr);
  for (const title of ["CUDA driver", "cuBLAS", "cuDNN", "NVRTC", "NCCL"]) {
    assert.match(
      r.stdout,
      new RegExp(`^  ${title} +(\\d|not usable: )`, "m"),
      title,
    );
  }
  assert.match(
    r.stdout,
    /^GPUs\n {2}(none: .+\.|cuda:0 {2}.+ GiB {2}compute capability \d+\.\d+)$/m,
  );
  const json = JSON.parse((await cudaInfo(["--json"])).stdout);
  assert.equal(json.libraries.length, 5);
  for (const lib of json.libraries) {
    // Each library is either found, with a path and a version, or explained.
    assert.ok(
      (lib.path !== null && lib.version !== null) !== (lib.error !== null),
      lib.id,
    );
  }
  if (Deno.env.get("MEC_CUDA_LIBS") && !driver) {
    assert.match(r.stdout, /^ {2}cuDNN +9\.\d+\.\d+ {2}\/.*libcudnn\.so\.9$/m);
    assert.equal(json.gpus.length, 0);
    assert.match(json.gpuError, /^No NVIDIA driver is installed/);
  }
  const bad = await cudaInfo(["--verbose"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr.trim(), /^Unknown argument --verbose; see --help\.$/);
});
