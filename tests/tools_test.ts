/**
 * End-to-end runs of `deno task pretrain` and `deno task lincls` as
 * subprocesses, on a few real JPEGs in class folders and a tiny network:
 * checkpoints and logs, exact resumption, the probe with its frozen-backbone
 * check, and one sentence with a non-zero exit for each kind of bad input.
 */

import { join } from "node:path";
import {
  Generator,
  loadCheckpoint,
  MEC,
  noGrad,
  randn,
  resnet18,
  scope,
} from "../mod.ts";
import {
  FIXED_THREADS,
  FIXTURES,
  JPEGS,
  PERMISSIONS,
  ROOT,
  type Run,
  runDeno,
  TINY,
} from "./tool_runs.ts";
import { assertFrozen, snapshotState } from "../tools/probe.ts";
import { assert, assertThrows } from "./assert.ts";
import { testDevice } from "./device.ts";

function tool(name: "pretrain" | "lincls", args: string[]): Promise<Run> {
  // The device under test first: a case's own --device comes later and wins.
  // The default convolutions (oneDNN where installed): resumed runs must
  // match uninterrupted ones with what users get, at a fixed thread count.
  return runDeno(
    `tools/${name}.ts`,
    ["--device", testDevice, ...args],
    FIXED_THREADS,
  );
}

/** DATA/{train,val}/{a,b}/*.jpg with four real JPEGs per class. */
async function makeData(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "mec_tools_" });
  for (const split of ["train", "val"]) {
    for (const [i, file] of JPEGS.entries()) {
      const dir = join(root, "data", split, i % 2 === 0 ? "a" : "b");
      await Deno.mkdir(dir, { recursive: true });
      await Deno.copyFile(join(FIXTURES, file), join(dir, `img${i}.jpg`));
    }
  }
  return root;
}

/** The loss of every logged step, by iteration. */
async function stepLosses(log: string): Promise<Map<number, number>> {
  const losses = new Map<number, number>();
  for (const line of (await Deno.readTextFile(log)).split("\n")) {
    if (line === "") continue;
    const r = JSON.parse(line);
    if (r.event === "step") losses.set(r.iteration, r.loss);
  }
  return losses;
}

/** A failure: the expected code, one line on stderr matching, no stack. */
function assertOneSentence(r: Run, code: number, pattern: RegExp): void {
  // Notes ("note: ...", e.g. JPEGs decoded by jpeg-js for want of
  // libturbojpeg) may come before the one sentence.
  const lines = r.stderr.trim().split("\n").filter((l) =>
    !l.startsWith("note: ")
  );
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
}

const tmp = await makeData();
globalThis.addEventListener("unload", () => {
  Deno.removeSync(tmp, { recursive: true });
});
const data = join(tmp, "data");
const run1 = join(tmp, "run1");

Deno.test("pretrain writes loadable checkpoints and a JSON-lines log, and a resumed run repeats the losses exactly", async () => {
  // The probe below takes its side from --eval-size.
  const full = await tool("pretrain", [
    data,
    ...TINY,
    "--eval-size",
    "20",
    "--out",
    run1,
  ]);
  assert.equal(full.code, 0, full.stderr);
  assert.match(
    full.stdout,
    /Epoch: \[1\]\[1\/2\].*Loss .* MEC .* lr .* img\/s .*ETA/,
  );
  for (const epoch of ["0000", "0001"]) {
    const ckpt = await loadCheckpoint(
      join(run1, `checkpoint_${epoch}.safetensors`),
    );
    assert.equal(ckpt.metadata.kind, "mec-pretrain");
    assert.ok(ckpt.model.has("encoder.conv1.weight"));
    assert.ok(ckpt.model.has("teacher.layer4.1.bn2.running_var"));
    assert.ok(ckpt.optimizer !== null);
    // The state loads into a model built from the recorded flags.
    new MEC({
      arch: "resnet18",
      width: 4,
      smallStem: true,
      dim: 16,
      predDim: 8,
    }).loadStateDict(ckpt.model);
  }
  const first = await loadCheckpoint(join(run1, "checkpoint_0000.safetensors"));
  assert.equal(first.metadata.epoch, 1);
  assert.equal(first.metadata.iteration, 2);

  const uninterrupted = await stepLosses(join(run1, "log.jsonl"));
  assert.deepEqual([...uninterrupted.keys()], [0, 1, 2, 3]);
  const run2 = join(tmp, "run2");
  const resumed = await tool("pretrain", [
    "--resume",
    join(run1, "checkpoint_0000.safetensors"),
    "--out",
    run2,
    "-j",
    "0",
  ]);
  assert.equal(resumed.code, 0, resumed.stderr);
  const again = await stepLosses(join(run2, "log.jsonl"));
  assert.deepEqual([...again.keys()], [2, 3]);
  for (const [it, loss] of again) {
    assert.equal(loss, uninterrupted.get(it), `iteration ${it}`);
  }
});

Deno.test("lincls probes the pretrained backbone, keeps the best probe and evaluates it", async () => {
  const out = join(tmp, "probe");
  const r = await tool("lincls", [
    data,
    "--pretrained",
    join(run1, "checkpoint_0001.safetensors"),
    "-b",
    "4",
    "--epochs",
    "2",
    "-j",
    "0",
    "--out",
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /resnet18 \(width 4, small stem\)/);
  const start = JSON.parse(
    (await Deno.readTextFile(join(out, "log.jsonl"))).split("\n")[0],
  );
  // Pretraining trained on 16 px views and evaluates at 20 px.
  assert.equal(start.args.imageSize, 20);
  assert.match(r.stdout, /\* Epoch 1: Acc@1 \d+\.\d{3} Acc@2 100\.000/);
  assert.match(r.stdout, /the backbone is unchanged/);
  const best = await loadCheckpoint(join(out, "probe_best.safetensors"));
  assert.equal(best.metadata.kind, "mec-lincls");
  // Two classes on resnet18's 8 x width = 32 features.
  assert.deepEqual(best.model.get("fc.1.weight")?.shape, [2, 32]);
  assert.ok(best.model.has("fc.0.running_mean"));

  const evaluated = await tool("lincls", [
    data,
    "-e",
    "--resume",
    join(out, "probe_best.safetensors"),
    "-j",
    "0",
  ]);
  assert.equal(evaluated.code, 0, evaluated.stderr);
  assert.match(evaluated.stdout, / \* Acc@1 \d+\.\d{3} Acc@2 100\.000/);

  const cached = await tool("lincls", [
    data,
    "--raw-pixels",
    "--image-size",
    "8",
    "--cache-features",
    "-b",
    "8",
    "--epochs",
    "1",
    "-j",
    "0",
    "--out",
    join(tmp, "pixels"),
  ]);
  assert.equal(cached.code, 0, cached.stderr);
  assert.match(cached.stdout, /\* Epoch 0: Acc@1/);
});

Deno.test("the frozen-backbone check passes an untouched backbone and names a changed BN statistic", () => {
  const net = resnet18({ width: 4, smallStem: true, numClasses: 3 });
  net.eval();
  const before = snapshotState(net);
  const x = randn([2, 3, 8, 8], new Generator(1));
  // Eval mode: a forward pass reads the running statistics, never writes.
  noGrad(() => scope(() => void net.forward(x)));
  assertFrozen(before, net);
  // The classic mistake: a forward pass in training mode moves BN statistics.
  net.train();
  noGrad(() => scope(() => void net.forward(x)));
  assertThrows(
    () => assertFrozen(before, net),
    /^The frozen backbone changed during linear probing: bn1\.running_mean\[\d+\] was .* the probe is invalid\.$/,
  );
});

Deno.test("bad inputs get one sentence and a non-zero exit, never a stack trace", async () => {
  const ckpt = join(run1, "checkpoint_0000.safetensors");
  const garbage = join(tmp, "garbage.safetensors");
  await Deno.writeTextFile(garbage, "this is not a checkpoint");
  const cases: [string, "pretrain" | "lincls", string[], number, RegExp][] = [
    [
      "unknown flag",
      "pretrain",
      ["--frobnicate"],
      2,
      /^Unknown flag --frobnicate; see --help\.$/,
    ],
    [
      "bad value",
      "pretrain",
      ["--epochs", "zero"],
      2,
      /^--epochs must be an integer, not "zero"\.$/,
    ],
    [
      "out of range",
      "lincls",
      ["--lr=-1"],
      2,
      /^--lr must be above 0, not -1\.$/,
    ],
    [
      "negative value",
      "lincls",
      ["--lr", "-1"],
      2,
      /^The value after --lr looks like a flag; write --lr=VALUE/,
    ],
    [
      "bad choice",
      "pretrain",
      ["-a", "vgg16"],
      2,
      /^--arch must be one of resnet18, .*, not "vgg16"\.$/,
    ],
    [
      "missing folder",
      "pretrain",
      [join(tmp, "nowhere"), ...TINY],
      1,
      /^The data folder .*nowhere does not exist\.$/,
    ],
    [
      "missing resume",
      "pretrain",
      ["--resume", join(tmp, "none.safetensors")],
      1,
      /^The checkpoint to resume from .*none\.safetensors does not exist\.$/,
    ],
    [
      "unreadable checkpoint",
      "lincls",
      [data, "--pretrained", garbage],
      1,
      /^The pretrained checkpoint .*garbage\.safetensors cannot be read as a safetensors checkpoint/,
    ],
    [
      "another arch",
      "lincls",
      [data, "--pretrained", ckpt, "--arch", "resnet34"],
      1,
      /^The checkpoint .* does not fit a resnet34 \(width 4, small stem\) backbone: it has no layer1\.2\.conv1\.weight\.$/,
    ],
    [
      "another arch on resume",
      "pretrain",
      ["--resume", ckpt, "--width", "8"],
      1,
      /^The checkpoint .* does not fit a MEC model with a resnet18 \(width 8, small stem\) backbone.*: its encoder\.conv1\.weight has shape/,
    ],
    [
      "bad device",
      "pretrain",
      ["--device", "tpu"],
      2,
      /^--device must be cpu, cuda or cuda:N, not "tpu"\.$/,
    ],
    [
      // No machine has a 100th GPU: the CUDA plug-in says why, in its words
      // (no driver, or no such GPU).
      "unusable device",
      "pretrain",
      ["--device", "cuda:99"],
      1,
      /^\S.*\.$/,
    ],
    [
      "no backbone",
      "lincls",
      [data],
      2,
      /^Give the backbone to probe with --pretrained CKPT/,
    ],
    [
      "evaluate without probe",
      "lincls",
      [data, "-e"],
      2,
      /^--evaluate needs the probe checkpoint/,
    ],
  ];
  for (const [what, name, args, code, pattern] of cases) {
    const r = await tool(name, args);
    try {
      assertOneSentence(r, code, pattern);
    } catch (e) {
      throw new Error(`${what}: ${(e as Error).message}`);
    }
  }
});

Deno.test("a NaN loss stops pretraining with the iteration and the last good checkpoint", async () => {
  const out = join(tmp, "nan");
  const r = await tool("pretrain", [
    data,
    ...TINY,
    "--lr",
    "1e30",
    "--out",
    out,
  ]);
  assertOneSentence(
    r,
    1,
    /^Training stopped: the MEC loss is (NaN|-?Infinity) at iteration \d+; the last good checkpoint is (none|.*checkpoint_\d{4}\.safetensors)/,
  );
});

Deno.test("pretrain --profile prints each step's time and memory by op kind, and a resumed run does not inherit it", async () => {
  const out = join(tmp, "profile");
  const r = await tool("pretrain", [
    data,
    ...TINY,
    "--epochs",
    "1",
    "--profile",
    "--out",
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const tables = r.stderr.match(/^MEC step, iteration \d+: [\d.]+ s$/gm) ?? [];
  assert.equal(tables.length, 2, r.stderr);
  for (
    const kind of ["conv fwd", "conv bwd-filter", "batch norm fwd", "relu"]
  ) {
    assert.match(r.stderr, new RegExp(`^  ${kind} +[\\d.]+ +[\\d.]+%`, "m"));
  }
  assert.match(r.stderr, /memory: peak live [\d.]+ [kMG]?B, .* resident/);
  // Read through FFI: the tools' permissions do not let Deno read /proc.
  assert.match(r.stderr, /memory: .*, peak resident \d+ MB$/m);
  const resumed = await tool("pretrain", [
    "--resume",
    join(out, "checkpoint_0000.safetensors"),
    "--epochs",
    "2",
  ]);
  assert.equal(resumed.code, 0, resumed.stderr);
  assert.doesNotMatch(resumed.stderr, /MEC step, iteration/);
});

Deno.test("--help lists every flag and exits 0", async () => {
  for (const name of ["pretrain", "lincls"] as const) {
    const r = await tool(name, ["--help"]);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^usage: deno task/);
    assert.match(r.stdout, /--device DEV/);
  }
});

Deno.test("Ctrl-C finishes the step, saves a resumable checkpoint and exits 130", async () => {
  const out = join(tmp, "interrupted");
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...PERMISSIONS,
      "tools/pretrain.ts",
      "--device",
      testDevice,
      data,
      ...TINY,
      "--epochs",
      "50",
      "-p",
      "1",
      "--out",
      out,
    ],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/Epoch: \[0\]\[0\/2\]/.test(text)) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  child.kill("SIGINT");
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
  }
  const status = await child.status;
  await child.stderr.cancel();
  assert.equal(status.code, 130, text);
  const saved = /saved (\S+\.safetensors)/.exec(text);
  assert.ok(saved, text);
  const ckpt = await loadCheckpoint(saved[1]);
  assert.equal(ckpt.metadata.kind, "mec-pretrain");
  assert.ok((ckpt.metadata.iteration as number) >= 1);
});
