/**
 * Issue 17's probe of both tools, case by case, as subprocesses on the
 * committed JPEG fixtures and the issue's tiny configuration: each run has a
 * time limit (a hang fails the test instead of stalling the suite) and a
 * memory cap, and a failing run must print one sentence and exit 2 (usage)
 * or 1 (failure).
 *
 * Memory: every run's peak resident memory is read from VmHWM in
 * /proc/<pid>/status (of the tool and of its children) every 20 ms while it
 * runs, and a run is killed as soon as it passes {@link MEMORY_CAP_MB};
 * `prlimit --as` is not used because V8 reserves far more address space
 * than it touches, so an address-space limit says nothing about memory.
 *
 * Ctrl-C: `deno task pretrain` is started under `setsid`, so it leads its
 * own process group as a shell job does, and SIGINT goes to the whole group
 * as a terminal sends it (`deno task` then forwards it to the tool, which
 * receives it twice). The loop is made to wait for data by the tool's test
 * hook `MEC_TEST_SLOW_DATA_MS`, which delays every sample's read.
 *
 * The full disk is a 8 MB tmpfs mounted for the test, where the test may
 * mount one (root on Linux); elsewhere that case prints one line and passes.
 */

import { join } from "node:path";
import { readSafetensors, writeSafetensors } from "../nn/safetensors.ts";
import { REPEAT_INTERRUPT_MS } from "../tools/cli.ts";
import { JsonLog } from "../tools/progress.ts";
import { FIXTURES, JPEGS, PERMISSIONS, ROOT } from "./tool_runs.ts";
import { assert } from "./assert.ts";

/** The tiny configuration: one epoch of one iteration on 8 images. */
const TINY = [
  "--arch",
  "resnet18",
  "--width",
  "8",
  "--small-stem",
  "--image-size",
  "32",
  "-b",
  "8",
  "--dim",
  "64",
  "--epochs",
  "1",
  "--warmup-epochs",
  "0",
  "--workers",
  "1",
];
/**
 * No run may go past this peak resident memory. A tiny run peaks near
 * 250 MB; the 9,999 x 9,999 JPEG header took 1.6 GB to decode, and
 * /dev/zero as a checkpoint grows without end.
 */
const MEMORY_CAP_MB = 700;
/** The time limit of one run: tiny runs take 1 to 3 s. */
const RUN_SECONDS = 30;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** The largest VmHWM seen in the process or its children, in MB. */
  peakMb: number;
}

interface RunOptions {
  env?: Record<string, string>;
  /** Called with the running child and its stdout so far, until it exits. */
  onOutput?: (text: string, child: Deno.ChildProcess) => void;
  /** The command instead of `deno run ... tools/<tool>.ts`. */
  command?: [string, string[]];
  /** The working folder (default: the repository). */
  cwd?: string;
}

/** The largest VmHWM, in kB, of `pid` and its descendants, or 0. */
async function peakKb(pid: number): Promise<number> {
  let peak = 0;
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const m = /^VmHWM:\s+(\d+) kB/m.exec(status);
    if (m) peak = Number(m[1]);
    const children = await Deno.readTextFile(
      `/proc/${pid}/task/${pid}/children`,
    );
    for (const child of children.trim().split(/\s+/).filter(Boolean)) {
      peak = Math.max(peak, await peakKb(Number(child)));
    }
  } catch {
    // The process has exited (or /proc is not there).
  }
  return peak;
}

/**
 * Runs a tool (or `options.command`) with the time limit and the memory
 * cap; a run that passes either is killed and fails the test.
 */
async function run(
  tool: "pretrain" | "lincls",
  args: string[],
  options: RunOptions = {},
): Promise<Run> {
  const [cmd, cmdArgs] = options.command ??
    [Deno.execPath(), [
      "run",
      ...PERMISSIONS,
      `${ROOT}tools/${tool}.ts`,
      ...args,
    ]];
  const child = new Deno.Command(cmd, {
    args: cmdArgs,
    cwd: options.cwd ?? ROOT,
    env: { NO_COLOR: "1", ...options.env },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let killed: string | null = null;
  let peak = 0;
  let running = true;
  const watch = (async () => {
    const start = performance.now();
    while (running) {
      peak = Math.max(peak, await peakKb(child.pid));
      if (peak > MEMORY_CAP_MB * 1024 && killed === null) {
        killed = `went past the memory cap of ${MEMORY_CAP_MB} MB`;
        child.kill("SIGKILL");
      }
      if (performance.now() - start > RUN_SECONDS * 1000 && killed === null) {
        killed = `ran past ${RUN_SECONDS} s (hung?)`;
        child.kill("SIGKILL");
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  let stdout = "";
  const readOut = (async () => {
    for await (
      const text of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      stdout += text;
      options.onOutput?.(stdout, child);
    }
  })();
  const stderrText = new Response(child.stderr).text();
  const status = await child.status;
  running = false;
  await Promise.all([watch, readOut]);
  const stderr = await stderrText;
  if (killed !== null) {
    throw new Error(
      `${tool} ${
        args.join(" ")
      } ${killed}; stdout: ${stdout}; stderr: ${stderr}`,
    );
  }
  return { code: status.code, stdout, stderr, peakMb: peak / 1024 };
}

/** The run failed with one sentence matching `pattern`, and no stack. */
function assertSentence(r: Run, code: number, pattern: RegExp): void {
  // Notes ("note: ...", e.g. JPEGs decoded by jpeg-js for want of
  // libturbojpeg) may come before the one sentence.
  const lines = r.stderr.trim().split("\n").filter((l) =>
    !l.startsWith("note: ")
  );
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.match(lines[0], /^[A-Z-].*\.$/, "a sentence");
}

/** Which of a folder's files are there, sorted. */
async function names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

const tmp = await Deno.makeTempDir({ prefix: "mec_reliability_" });
globalThis.addEventListener("unload", () => {
  Deno.removeSync(tmp, { recursive: true });
});

/** DIR/{train,val}/{a,b}/imgN.jpg, the fixtures but for those in `leaveOut`. */
async function makeData(name: string, leaveOut: number[] = []) {
  const root = join(tmp, name);
  for (const split of ["train", "val"]) {
    for (const [i, file] of JPEGS.entries()) {
      const dir = join(root, split, i % 2 === 0 ? "a" : "b");
      await Deno.mkdir(dir, { recursive: true });
      if (split === "train" && leaveOut.includes(i)) continue;
      await Deno.copyFile(join(FIXTURES, file), join(dir, `img${i}.jpg`));
    }
  }
  return root;
}

const data = await makeData("data");

/** A FIFO at `path` (by mkfifo), or false where there is no mkfifo. */
async function mkfifo(path: string): Promise<boolean> {
  try {
    const r = await new Deno.Command("mkfifo", { args: [path] }).output();
    return r.success;
  } catch {
    return false;
  }
}

/** A JPEG fixture whose frame header claims `width` x `height` pixels. */
async function lyingJpeg(path: string, width: number, height: number) {
  const bytes = await Deno.readFile(
    join(FIXTURES, "go-image/video-001.q50.420.jpeg"),
  );
  for (let pos = 2; pos + 9 < bytes.length;) {
    const marker = bytes[pos + 1];
    if (marker >= 0xc0 && marker <= 0xc2) {
      bytes.set([height >> 8, height & 255, width >> 8, width & 255], pos + 5);
      await Deno.writeFile(path, bytes);
      return;
    }
    pos += 2 + ((bytes[pos + 2] << 8) | bytes[pos + 3]);
  }
  throw new Error("the fixture has no frame header");
}

/** One finished tiny run, for the cases that need a checkpoint. */
let baseRun: Promise<string> | null = null;
function baseCheckpoint(): Promise<string> {
  baseRun ??= (async () => {
    const out = join(tmp, "base");
    const r = await run("pretrain", [data, ...TINY, "--out", out]);
    assert.equal(r.code, 0, r.stderr);
    return join(out, "checkpoint_0000.safetensors");
  })();
  return baseRun;
}

/** A copy of a checkpoint with its metadata changed by `edit`. */
async function editedCheckpoint(
  name: string,
  edit: (metadata: Record<string, unknown>) => void,
): Promise<string> {
  const file = await readSafetensors(await baseCheckpoint());
  const metadata = JSON.parse(file.metadata.metadata);
  edit(metadata);
  const path = join(tmp, name);
  await writeSafetensors(path, file.tensors, {
    ...file.metadata,
    metadata: JSON.stringify(metadata),
  });
  return path;
}

Deno.test("1, 4 and also seen: a FIFO, a lying 9,999 x 9,999 JPEG and dangling and self-looping links in the data folder are skipped and each named once", async () => {
  const root = await makeData("hostile", [0, 1, 3, 5]);
  const a = join(root, "train", "a");
  const b = join(root, "train", "b");
  const fifo = await mkfifo(join(a, "x.jpg"));
  if (!fifo) console.log("no mkfifo here: the FIFO part is left out");
  await lyingJpeg(join(b, "huge.jpg"), 9999, 9999);
  await Deno.symlink("loop.jpg", join(b, "loop.jpg"));
  await Deno.symlink("nowhere.jpg", join(a, "dangling.jpg"));
  const r = await run("pretrain", [
    root,
    ...TINY,
    "--out",
    join(tmp, "hostile-run"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const summary: string = r.stdout.split("\n")
    .find((l) => l.startsWith("epoch 0:")) ?? "";
  assert.ok(summary !== "", r.stdout);
  const expected: [string, RegExp][] = [
    ["a/dangling.jpg", /cannot be read: No such file or directory/],
    [
      "b/huge.jpg",
      /JPEG of 9999x9999 pixels is over the budget of 50 megapixels/,
    ],
    ["b/loop.jpg", /cannot be read: Too many levels of symbolic links/],
    ...(fifo
      ? [[
        "a/x.jpg",
        /cannot be read: it is a FIFO \(named pipe\), not a regular file/,
      ]] as [string, RegExp][]
      : []),
  ];
  for (const [name, reason] of expected) {
    const mentions = summary.split(`${name} (`).length - 1;
    assert.equal(mentions, 1, `${name} named once in: ${summary}`);
    const part = summary.slice(summary.indexOf(`${name} (`));
    assert.match(part.slice(0, part.indexOf(")") + 60), reason);
  }
  assert.match(
    summary,
    new RegExp(`^epoch 0: skipped ${expected.length} unreadable images`),
  );
  assert.ok(r.peakMb < MEMORY_CAP_MB, `peak ${r.peakMb} MB`);
});

Deno.test("2, 3: a FIFO, /dev/zero or a huge sparse file as --resume or --pretrained is refused in one sentence, without blocking or reading it", async () => {
  const fifo = join(tmp, "fifo.safetensors");
  const zero = join(tmp, "zero.safetensors");
  const sparse = join(tmp, "sparse.safetensors");
  await Deno.symlink("/dev/zero", zero);
  // 2 GB of nothing: a header of zeros, read 8 bytes at a time, not whole.
  await Deno.writeFile(sparse, new Uint8Array(0));
  await Deno.truncate(sparse, 2e9);
  const cases: [string, RegExp][] = [
    [zero, /is a character device, not a checkpoint file\.$/],
    [
      sparse,
      /cannot be read as a safetensors checkpoint \(.*header does not start with "\{"\)\.$/,
    ],
  ];
  if (await mkfifo(fifo)) {
    cases.push([fifo, /is a FIFO \(named pipe\), not a checkpoint file\.$/]);
  } else console.log("no mkfifo here: the FIFO part is left out");
  for (const [path, pattern] of cases) {
    const resumed = await run("pretrain", ["--resume", path]);
    assertSentence(resumed, 1, /^The checkpoint to resume from /);
    assert.match(resumed.stderr.trim(), pattern);
    const probed = await run("lincls", [data, "--pretrained", path]);
    assertSentence(probed, 1, /^The pretrained checkpoint /);
    assert.match(probed.stderr.trim(), pattern);
    assert.ok(Math.max(resumed.peakMb, probed.peakMb) < MEMORY_CAP_MB);
  }
});

Deno.test("4: a batch or image size too large for the memory is refused up front, saying what to lower", async () => {
  const huge = await run("pretrain", [data, ...TINY, "--image-size", "2000"]);
  assertSentence(
    huge,
    2,
    /^A batch of 8 pairs of 2000 px views through a resnet18 \(width 8, small stem\) needs about [\d.]+ [GT]B of memory, more than the [\d.]+ [GMT]B available; lower (--batch-size to \d+ or less, or )?--image-size or --width\.$/,
  );
  const dummy = await run("pretrain", ["--dummy", "-b", "1000000"]);
  assertSentence(
    dummy,
    2,
    /^A batch of 1000000 pairs of 224 px views .* needs about [\d.]+ [TP]B of memory, more than the .* available; lower --batch-size to \d+ or less, or --image-size or --width\.$/,
  );
  assert.ok(Math.max(huge.peakMb, dummy.peakMb) < MEMORY_CAP_MB);
});

Deno.test("5: one Ctrl-C to the process group of deno task, while the loop waits for data, saves and exits 130", async () => {
  const out = join(tmp, "interrupted");
  let sent = false;
  const r = await run("pretrain", [], {
    command: ["setsid", [
      Deno.execPath(),
      "task",
      "pretrain",
      data,
      ...TINY,
      "--out",
      out,
    ]],
    env: { MEC_TEST_SLOW_DATA_MS: "3000" },
    onOutput: (text, child) => {
      // The start line comes just before the loop waits for batch 0.
      if (!sent && /iterations per epoch/.test(text)) {
        sent = true;
        // setsid made the child the leader of its own process group.
        Deno.kill(-child.pid, "SIGINT");
      }
    },
  });
  assert.ok(sent, r.stdout);
  assert.equal(r.code, 130, `stdout: ${r.stdout}; stderr: ${r.stderr}`);
  assert.equal(r.stderr.match(/Interrupted: /g)?.length, 1, r.stderr);
  const saved = /saved (\S+\.safetensors) \(continue with --resume/.exec(
    r.stdout,
  );
  assert.ok(saved, r.stdout);
  const file = await readSafetensors(saved[1]);
  const meta = JSON.parse(file.metadata.metadata);
  assert.equal(meta.kind, "mec-pretrain");
  assert.equal(meta.epoch, 0);
  assert.equal(meta.batch, 0);
  assert.ok(r.peakMb < MEMORY_CAP_MB);
});

Deno.test("5: a second Ctrl-C counts only after the first was acknowledged", async () => {
  // The handler alone, in a process of its own: two signals at once are one
  // Ctrl-C; one more after the repeat window exits with 130.
  const code = `
    import { Interrupt } from ${
    JSON.stringify(new URL("../tools/cli.ts", import.meta.url).href)
  };
    const interrupt = new Interrupt();
    Deno.kill(Deno.pid, "SIGINT");
    while (!interrupt.requested) await new Promise((r) => setTimeout(r, 10));
    // The same Ctrl-C again, as deno task forwards it, just after.
    Deno.kill(Deno.pid, "SIGINT");
    await new Promise((r) => setTimeout(r, 300));
    console.log("still running");
    await new Promise((r) => setTimeout(r, ${REPEAT_INTERRUPT_MS}));
    Deno.kill(Deno.pid, "SIGINT");
    await new Promise((r) => setTimeout(r, 5000));
    console.log("not stopped");
  `;
  const r = await run("pretrain", [], {
    command: [Deno.execPath(), ["eval", code]],
  });
  assert.equal(r.code, 130, r.stdout + r.stderr);
  assert.equal(r.stdout, "still running\n");
  assert.equal(r.stderr.match(/Interrupted: /g)?.length, 1, r.stderr);
});

Deno.test("6, 7: flags that would be ignored or out of range, and checkpoints recording bad settings, get one sentence", async () => {
  const ckpt = await baseCheckpoint();
  const resnet7 = await editedCheckpoint("resnet7.safetensors", (m) => {
    (m.args as Record<string, unknown>).arch = "resnet7";
  });
  const negative = await editedCheckpoint("epoch-3.safetensors", (m) => {
    m.epoch = -3;
  });
  const onePixel = await editedCheckpoint("size1.safetensors", (m) => {
    (m.args as Record<string, unknown>).imageSize = 1;
  });
  const cases: [string, "pretrain" | "lincls", string[], number, RegExp][] = [
    [
      "start after the end",
      "pretrain",
      [data, ...TINY, "--start-epoch", "5", "--epochs", "2"],
      2,
      /^--start-epoch \(5\) must be below --epochs \(2\), or there is nothing to train\.$/,
    ],
    [
      "start epoch on resume",
      "pretrain",
      ["--resume", ckpt, "--start-epoch", "0"],
      2,
      /^--start-epoch cannot be combined with --resume: the checkpoint records/,
    ],
    [
      "a finished run",
      "pretrain",
      ["--resume", ckpt],
      2,
      /^The checkpoint .* is the end of its run \(1 of 1 epochs\): there is nothing to continue; give a larger --epochs/,
    ],
    [
      "dummy and a folder",
      "pretrain",
      [data, "--dummy", ...TINY],
      2,
      /^Give DATA_DIR or --dummy, not both: --dummy trains on random images and would ignore /,
    ],
    [
      "teacher momentum",
      "pretrain",
      [data, ...TINY, "--teacher-momentum", "2"],
      2,
      /^--teacher-momentum must be at most 1, not 2\.$/,
    ],
    [
      "momentum",
      "pretrain",
      [data, ...TINY, "--momentum", "5"],
      2,
      /^--momentum must be below 1, not 5\.$/,
    ],
    [
      "probe momentum",
      "lincls",
      [data, "--pretrained", ckpt, "--momentum", "5"],
      2,
      /^--momentum must be below 1, not 5\.$/,
    ],
    [
      "a backbone besides the probe to resume",
      "lincls",
      [data, "--resume", join(tmp, "probe.safetensors"), "--pretrained", ckpt],
      2,
      /^--pretrained, --random-init and --raw-pixels cannot be combined with --resume: the probe checkpoint holds the backbone it probes\.$/,
    ],
    [
      "probe start epoch on resume",
      "lincls",
      [data, "--resume", join(tmp, "probe.safetensors"), "--start-epoch", "1"],
      2,
      /^--start-epoch cannot be combined with --resume: the probe checkpoint records/,
    ],
    [
      "seed",
      "pretrain",
      [data, ...TINY, "--seed=1e20"],
      2,
      /^--seed must be at most 9007199254740991, not 1e20\.$/,
    ],
    [
      "recorded arch",
      "pretrain",
      ["--resume", resnet7, "--epochs", "2"],
      1,
      /^The checkpoint .*resnet7\.safetensors records a setting the flags do not allow: --arch must be one of resnet18, .*, not "resnet7"\.$/,
    ],
    [
      "recorded arch of a backbone",
      "lincls",
      [data, "--pretrained", resnet7],
      1,
      /^The checkpoint .*resnet7\.safetensors records a setting the flags do not allow: --arch must be one of/,
    ],
    [
      "recorded epoch",
      "pretrain",
      ["--resume", negative, "--epochs", "2"],
      1,
      /^The checkpoint .*epoch-3\.safetensors records an impossible position: epoch -3, batch 0/,
    ],
    [
      "recorded image size",
      "pretrain",
      ["--resume", onePixel, "--epochs", "2"],
      1,
      /^The checkpoint .*size1\.safetensors records a setting the flags do not allow: --image-size must be at least 8, not 1\.$/,
    ],
  ];
  for (const [what, tool, args, code, pattern] of cases) {
    const r = await run(tool, args);
    try {
      assertSentence(r, code, pattern);
      assert.ok(r.peakMb < MEMORY_CAP_MB, `peak ${r.peakMb} MB`);
    } catch (e) {
      throw new Error(`${what}: ${(e as Error).message}`);
    }
  }
});

Deno.test("-j above the core count is capped, with a note", async () => {
  const r = await run("pretrain", [
    data,
    ...TINY,
    "-j",
    "64",
    "--out",
    join(tmp, "many-workers"),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const cores = navigator.hardwareConcurrency;
  assert.match(
    r.stdout,
    new RegExp(
      `^Note: -j 64 is more than the ${cores} CPU cores; using ${cores} workers\\.$`,
      "m",
    ),
  );
});

Deno.test("8: on a full disk the error names the file, the last checkpoint keeps its bytes and log.jsonl holds whole records", async () => {
  const disk = join(tmp, "disk");
  await Deno.mkdir(disk);
  const mounted = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=8m", "tmpfs", disk],
    stdout: "null",
    stderr: "null",
  }).output().then((o) => o.success, () => false);
  if (!mounted) {
    console.log("skipped: this user cannot mount a tmpfs for the full disk");
    return;
  }
  try {
    const out = join(disk, "run");
    // The checkpoint's and the log's bytes on a full disk: no event file
    // takes the last free page first.
    const first = await run("pretrain", [
      data,
      ...TINY,
      "--no-tensorboard",
      "--out",
      out,
    ]);
    assert.equal(first.code, 0, first.stderr);
    const ckpt = join(out, "checkpoint_0000.safetensors");
    const before = await Deno.readFile(ckpt);
    const log = join(out, "log.jsonl");

    // Fill the disk, leaving a page: the next checkpoint cannot be written.
    const filler = join(disk, "filler");
    await fill(filler);
    await Deno.truncate(filler, (await Deno.stat(filler)).size - 4096);
    const second = await run("pretrain", [
      "--resume",
      ckpt,
      "--epochs",
      "2",
      "--no-tensorboard",
    ]);
    assertSentence(
      second,
      1,
      /^Cannot write .*run\/checkpoint_0001\.safetensors: No space left on device \(os error 28\); the last good checkpoint is .*checkpoint_0000\.safetensors\.$/,
    );
    assert.deepEqual(await Deno.readFile(ckpt), before);
    assert.deepEqual(await names(out), [
      "checkpoint_0000.safetensors",
      "log.jsonl",
    ]);
    await assertWholeRecords(log);

    // Now the log itself: its last page nearly full and no page free, so
    // the next record is written in part before the disk refuses the rest.
    await Deno.remove(filler);
    const size = (await Deno.stat(log)).size;
    const overhead = JSON.stringify({ event: "note", pad: "" }).length + 1;
    let add = (4096 - (size % 4096) - 40 + 4096) % 4096;
    if (add < overhead) add += 4096;
    await Deno.writeTextFile(
      log,
      JSON.stringify({ event: "note", pad: "x".repeat(add - overhead) }) + "\n",
      { append: true },
    );
    await fill(filler);
    const third = await run("pretrain", [
      "--resume",
      ckpt,
      "--epochs",
      "2",
      "--no-tensorboard",
    ]);
    assertSentence(
      third,
      1,
      /^Cannot write the log .*run\/log\.jsonl: No space left on device \(os error 28\)\.$/,
    );
    assert.deepEqual(await Deno.readFile(ckpt), before);
    await assertWholeRecords(log);
  } finally {
    await new Deno.Command("umount", { args: [disk] }).output();
  }
});

/** Writes zeros to `path` until the disk is full. */
async function fill(path: string): Promise<void> {
  using file = await Deno.open(path, { write: true, create: true });
  const chunk = new Uint8Array(64 * 1024);
  try {
    while (true) await file.write(chunk);
  } catch {
    // Full.
  }
}

/** Every line of the log is a whole JSON record, and it ends in a newline. */
async function assertWholeRecords(path: string): Promise<void> {
  const text = await Deno.readTextFile(path);
  assert.ok(
    text.endsWith("\n"),
    `log ends in half a record: ${text.slice(-80)}`,
  );
  for (const line of text.slice(0, -1).split("\n")) JSON.parse(line);
}

Deno.test("8: a log reopened after a writer died mid-record drops the half record", async () => {
  const dir = join(tmp, "halflog");
  await Deno.mkdir(dir);
  const path = join(dir, "log.jsonl");
  await Deno.writeTextFile(path, '{"event":"start"}\n{"event":"st');
  {
    using log = await JsonLog.open(dir);
    log.write({ event: "step", iteration: 0 });
  }
  assert.equal(
    await Deno.readTextFile(path),
    '{"event":"start"}\n{"event":"step","iteration":0}\n',
  );
  // A log of only half a record is emptied.
  await Deno.writeTextFile(path, '{"event":"st');
  using log = await JsonLog.open(dir);
  log.write({ event: "start" });
  assert.equal(await Deno.readTextFile(path), '{"event":"start"}\n');
});

Deno.test("9: a second run into another run's folder is refused unless --resume or --overwrite", async () => {
  const out = join(tmp, "taken");
  const first = await run("pretrain", [data, ...TINY, "--out", out]);
  assert.equal(first.code, 0, first.stderr);
  const ckpt = join(out, "checkpoint_0000.safetensors");
  const bytes = await Deno.readFile(ckpt);
  const log = await Deno.readTextFile(join(out, "log.jsonl"));

  const second = await run("pretrain", [data, ...TINY, "--out", out]);
  assertSentence(
    second,
    2,
    /^The folder .*taken already holds a run \(log\.jsonl and 1 checkpoint\); continue it with --resume .*taken\/checkpoint_0000\.safetensors, replace it with --overwrite, or choose another --out\.$/,
  );
  assert.deepEqual(await Deno.readFile(ckpt), bytes);
  assert.equal(await Deno.readTextFile(join(out, "log.jsonl")), log);

  const probe = await run("lincls", [
    data,
    "--pretrained",
    ckpt,
    "--out",
    out,
  ]);
  assertSentence(probe, 2, /^The folder .*taken already holds a run/);

  const replaced = await run("pretrain", [
    data,
    ...TINY,
    "--seed",
    "1",
    "--out",
    out,
    "--overwrite",
  ]);
  assert.equal(replaced.code, 0, replaced.stderr);
  assert.match(
    replaced.stdout,
    /^Replacing the previous run: removed its checkpoint_0000\.safetensors, events\.out\.tfevents\.\d{10}\.[^,]+, log\.jsonl from /m,
  );
  assert.equal(
    (await names(out)).filter((n) => n.startsWith("events.out.")).length,
    1,
    "the replaced run's event file is gone, the new run's is there",
  );
  const starts = (await Deno.readTextFile(join(out, "log.jsonl")))
    .split("\n").filter((l) => l.includes('"event":"start"'));
  assert.equal(starts.length, 1);
  assert.equal(JSON.parse(starts[0]).args.seed, 1);
});

Deno.test("9: the demo run again replaces the last demo run in its own folder, and only there", async () => {
  const cwd = await Deno.makeTempDir({ dir: tmp, prefix: "demo_" });
  const demo = [
    "--width",
    "4",
    "--dim",
    "16",
    "--pred-dim",
    "8",
    "-b",
    "8",
    "--epochs",
    "1",
    "--warmup-epochs",
    "0",
    "--max-iters",
    "1",
  ];
  const first = await run("pretrain", demo, { cwd });
  assert.equal(first.code, 0, first.stderr);
  const again = await run("pretrain", demo, { cwd });
  assert.equal(again.code, 0, again.stderr);
  assert.match(
    again.stdout,
    /^Replacing the previous run: removed its events\.out\.tfevents\.\d{10}\.[^,]+, log\.jsonl from runs\/demo\.$/m,
  );
  // Named explicitly, the same folder is protected like any other.
  const named = await run("pretrain", [...demo, "--out", "runs/demo"], { cwd });
  assertSentence(named, 2, /^The folder runs\/demo already holds a run/);
});

Deno.test("10: stale temporary files of interrupted checkpoint writes are removed, and only those", async () => {
  const out = join(tmp, "stale");
  await Deno.mkdir(out);
  const minuteAgo = new Date(Date.now() - 60_000);
  const hourAgo = new Date(Date.now() - 3600_000);
  // Left by a killed writer: nobody holds its lock.
  const dead = ".checkpoint_0003.safetensors.4242-0123abcd.tmp";
  // Of the earlier naming, without a lock: stale only when long untouched.
  const legacy = ".checkpoint_0002_partial.safetensors.89abcdef.tmp";
  const recentLegacy = ".checkpoint_0005.safetensors.fedcba98.tmp";
  // Being written: its writer (this test) holds the lock.
  const live = `.checkpoint_0004.safetensors.${Deno.pid}-0123abcd.tmp`;
  // Not a file this tool writes.
  const foreign = ".notes.txt.4242-0123abcd.tmp";
  for (const name of [dead, legacy, recentLegacy, live, foreign]) {
    await Deno.writeFile(join(out, name), new Uint8Array(100));
  }
  for (const name of [dead, live, foreign]) {
    await Deno.utime(join(out, name), minuteAgo, minuteAgo);
  }
  await Deno.utime(join(out, legacy), hourAgo, hourAgo);
  using writer = await Deno.open(join(out, live), { write: true });
  await writer.lock(true);

  const r = await run("pretrain", [data, ...TINY, "--out", out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    new RegExp(
      `^Removed 2 stale temporary files of an interrupted checkpoint write from .*: ${
        [legacy, dead].sort().join(", ").replaceAll(".", "\\.")
      }\\.$`,
      "m",
    ),
  );
  const events = (await names(out)).filter((n) => n.startsWith("events.out."));
  assert.equal(events.length, 1);
  assert.deepEqual(
    await names(out),
    [
      live,
      recentLegacy,
      foreign,
      "checkpoint_0000.safetensors",
      events[0],
      "log.jsonl",
    ].sort(),
  );
});
