/**
 * End-to-end runs of `deno task convert` and of `deno task lincls` on the
 * official MEC code's checkpoint layout (tests/fixtures/torch/): the
 * conversion keeps every tensor bit for bit, the probe loads the .pth.tar
 * directly, and the torchvision export is loaded by Debian's python3-torch
 * and torchvision (where installed) with only fc.* missing and the same
 * eval-mode features as this toolkit's.
 */

import { join } from "node:path";
import {
  Generator,
  loadCheckpoint,
  noGrad,
  randn,
  type ResNetName,
  resnets,
  scope,
  writeSafetensors,
} from "../mod.ts";
import { readCheckpoint } from "../tools/models.ts";
import { assert } from "./assert.ts";
import { testDevice } from "./device.ts";
import { FIXTURES, JPEGS, PERMISSIONS, ROOT } from "./tool_runs.ts";

const DIR = `${FIXTURES}torch/`;
const OFFICIAL = `${DIR}mec_resnet18.pth.tar`;
const PYTHON = "/usr/bin/python3";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(command: string, args: string[], cwd = ROOT): Promise<Run> {
  const out = await new Deno.Command(command, {
    args,
    cwd,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

function tool(name: "convert" | "lincls", args: string[]): Promise<Run> {
  const device = name === "lincls" ? ["--device", testDevice] : [];
  return run(Deno.execPath(), [
    "run",
    ...PERMISSIONS,
    `tools/${name}.ts`,
    ...device,
    ...args,
  ]);
}

/** A failure: the expected code and one sentence on stderr, no stack. */
function assertOneSentence(r: Run, code: number, pattern: RegExp): void {
  const lines = r.stderr.trim().split("\n").filter((l) =>
    !l.startsWith("note: ")
  );
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0], pattern);
}

/** Whether Python with torch and torchvision runs here, or why not. */
async function torchMissing(): Promise<string | null> {
  try {
    const r = await run(PYTHON, ["-c", "import torch, torchvision"]);
    return r.code === 0
      ? null
      : `${PYTHON} cannot import torch and torchvision`;
  } catch {
    return `${PYTHON} is not installed`;
  }
}
const noTorch = await torchMissing();
if (noTorch !== null) {
  console.error(`torchvision checks skipped: ${noTorch}.`);
}

const tmp = await Deno.makeTempDir({ prefix: "mec_convert_" });
globalThis.addEventListener("unload", () => {
  Deno.removeSync(tmp, { recursive: true });
});
/** DATA/{train,val}/{a,b}/*.jpg with four real JPEGs per class. */
const data = join(tmp, "data");
for (const split of ["train", "val"]) {
  for (const [i, file] of JPEGS.entries()) {
    const dir = join(data, split, i % 2 === 0 ? "a" : "b");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.copyFile(join(FIXTURES, file), join(dir, `img${i}.jpg`));
  }
}
/** A one-epoch probe of `pretrained` on `data`; its output. */
async function probe(pretrained: string, out: string): Promise<Run> {
  const r = await tool("lincls", [
    data,
    "--pretrained",
    pretrained,
    "--image-size",
    "32",
    "-b",
    "4",
    "--epochs",
    "1",
    "-j",
    "0",
    "--out",
    join(tmp, out),
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /\* Epoch 0: Acc@1 \d+\.\d{3}/);
  assert.match(r.stdout, /the backbone is unchanged/);
  return r;
}

Deno.test("convert keeps every tensor bit for bit and records the architecture; lincls needs no flags for it or for the torchvision export", async () => {
  const out = join(tmp, "converted.safetensors");
  const r = await tool("convert", [OFFICIAL, out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /Wrote .+converted\.safetensors: the resnet18 \(width 2\) of .+ \(epoch 100\), 282 tensors\./,
  );
  const source = await readCheckpoint(OFFICIAL, "checkpoint");
  const converted = await loadCheckpoint(out);
  assert.deepEqual(converted.metadata, {
    kind: "mec-converted",
    source: OFFICIAL,
    epoch: 100,
    args: { arch: "resnet18", width: 2, smallStem: false },
  });
  assert.deepEqual([...converted.model.keys()], [...source.model.keys()]);
  for (const [key, t] of source.model) {
    const c = converted.model.get(key)!;
    assert.deepEqual(c.shape, t.shape, key);
    assert.deepEqual(
      new Uint32Array(c.data.buffer),
      new Uint32Array(t.data.buffer),
      key,
    );
  }

  // The recorded architecture, and a torchvision export's from its tensors.
  assert.match(
    (await probe(out, "probe_converted")).stdout,
    /Linear probe of resnet18 \(width 2\) from .+converted\.safetensors\./,
  );
  const tv = join(tmp, "tv.safetensors");
  assert.equal(
    (await tool("convert", [OFFICIAL, "--torchvision", tv])).code,
    0,
  );
  assert.match(
    (await probe(tv, "probe_tv")).stdout,
    /Linear probe of resnet18 \(width 2\) from .+tv\.safetensors\./,
  );

  const again = await tool("convert", [OFFICIAL, out]);
  assertOneSentence(
    again,
    2,
    /converted\.safetensors exists; give --overwrite to replace it\.$/,
  );
  assertOneSentence(
    await tool("convert", [OFFICIAL]),
    2,
    /^Expected IN and OUT, got 1 arguments/,
  );
});

Deno.test("lincls probes the official .pth.tar directly, and refuses a forbidden global and a wrong --arch in one sentence", async () => {
  const r = await probe(OFFICIAL, "probe");
  assert.match(
    r.stdout,
    /Linear probe of resnet18 \(width 2\) from .+mec_resnet18\.pth\.tar\./,
  );

  const common = [data, "--epochs", "1", "-j", "0", "--out", join(tmp, "bad")];
  assertOneSentence(
    await tool("lincls", [
      ...common,
      "--pretrained",
      `${DIR}forbidden_global.pth.tar`,
    ]),
    1,
    /^The pretrained checkpoint .+forbidden_global\.pth\.tar was not loaded: its pickle asks to run posix\.system/,
  );
  assertOneSentence(
    await tool("lincls", [
      ...common,
      "--pretrained",
      OFFICIAL,
      "--arch",
      "resnet50",
    ]),
    1,
    /^The checkpoint .+mec_resnet18\.pth\.tar does not fit a resnet50 \(width 2\) backbone: /,
  );
  assertOneSentence(
    await tool("lincls", [
      ...common,
      "--pretrained",
      `${DIR}not_a_resnet.pth.tar`,
    ]),
    1,
    /holds a notaresnet this toolkit does not build/,
  );
});

/**
 * Converts `ckpt` with --torchvision, runs the backbone here on a fixed
 * batch and has PyTorch load the file and run the same batch.
 */
async function checkTorchvision(
  ckpt: string,
  arch: ResNetName,
  width: number,
): Promise<void> {
  const backbonePath = join(tmp, `${arch}_tv.safetensors`);
  const r = await tool("convert", [ckpt, "--torchvision", backbonePath]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /under torchvision's names \(fc left out\)/);

  const state = (await loadCheckpoint(backbonePath)).model;
  const net = resnets[arch]({ width });
  const loaded = net.loadStateDict(state, { strict: false });
  assert.deepEqual(loaded.missingKeys, ["fc.weight", "fc.bias"]);
  assert.deepEqual(loaded.unexpectedKeys, []);
  net.eval();
  const x = randn([3, 3, 64, 64], new Generator(7));
  const features = scope(() => noGrad(() => net.features(x).toArray()));
  const featuresPath = join(tmp, `${arch}_features.safetensors`);
  await writeSafetensors(featuresPath, [
    ["input", { shape: x.shape, data: x.toArray() }],
    ["features", { shape: [3, features.length / 3], data: features }],
  ]);
  x.dispose();
  net.dispose();

  const check = await run(PYTHON, [
    "check_torchvision.py",
    "check",
    backbonePath,
    featuresPath,
    arch,
    String(width),
  ], DIR);
  assert.equal(check.code, 0, check.stderr);
  const result = JSON.parse(check.stdout);
  // torchvision's full-size model: exactly its names, fc alone missing.
  assert.deepEqual(result.missing, ["fc.bias", "fc.weight"]);
  assert.deepEqual(result.unexpected, []);
  assert.deepEqual(result.loadMissing, ["fc.bias", "fc.weight"]);
  assert.deepEqual(result.loadUnexpected, []);
  assert.deepEqual(result.shape, [3, features.length / 3]);
  // Both sides compute in float32 with different summation orders
  // (oneDNN's convolutions here, PyTorch's there) through every layer, and
  // eval-mode BN over channels as narrow as 2 amplifies rounding. So both
  // are measured against the same network in float64: ours must be as
  // close to it as PyTorch's own float32 result, within a factor of 2.
  assert.ok(
    result.errorOurs <= 2 * result.errorTorch + 1e-7 * result.maxAbs,
    `our features are ${result.errorOurs} from float64, PyTorch's ${result.errorTorch}`,
  );
}

Deno.test({
  name:
    "the torchvision export of the official ResNet-18 loads into torchvision with only fc.* missing and gives our features",
  ignore: noTorch !== null,
  fn: () => checkTorchvision(OFFICIAL, "resnet18", 2),
});

Deno.test({
  name:
    "a ResNet-50 in the official layout, written by PyTorch here, exports to torchvision's resnet50 names with only fc.* missing and gives our features",
  ignore: noTorch !== null,
  async fn() {
    const ckpt = join(tmp, "mec_resnet50.pth.tar");
    const made = await run(PYTHON, [
      "check_torchvision.py",
      "make",
      ckpt,
      "resnet50",
      "2",
    ], DIR);
    assert.equal(made.code, 0, made.stderr);
    await checkTorchvision(ckpt, "resnet50", 2);
  },
});
