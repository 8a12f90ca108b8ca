/**
 * The tools under `mpirun` on CPU processes: a 2-rank pretraining run
 * against one process, resuming across world sizes, and a rank that dies or
 * hangs. Skipped, in one line, where Open MPI's `mpirun` is not installed.
 */

import { join } from "node:path";
import { assert } from "./assert.ts";
import { loadCheckpoint } from "../mod.ts";
import { haveMpirun, mpirun, startMpirun } from "./dist/mpirun.ts";
import { makeImageFolders, runDeno, TINY as TINY_TOOLS } from "./tool_runs.ts";

const MPI = await haveMpirun();
if (!MPI) {
  console.log(
    "dist_tools_test: mpirun is not installed; data-parallel tool runs skipped",
  );
}

/** Two epochs of two iterations of a tiny network, on the main thread. */
const TINY = [...TINY_TOOLS, "-j", "0"];

/** `deno task pretrain args` as one process. */
function pretrainAlone(args: string[]) {
  return runDeno("tools/pretrain.ts", args, { MEC_THREADS: "1" });
}

/** The loss of every logged step, by iteration (each logged once). */
async function stepLosses(log: string): Promise<Map<number, number>> {
  const losses = new Map<number, number>();
  for (const line of (await Deno.readTextFile(log)).split("\n")) {
    if (line === "") continue;
    const r = JSON.parse(line);
    if (r.event !== "step") continue;
    assert.ok(
      !losses.has(r.iteration),
      `iteration ${r.iteration} logged twice`,
    );
    losses.set(r.iteration, r.loss);
  }
  return losses;
}

/**
 * The same losses up to float32 rounding: both sides sum the same products
 * in other orders (SyncBN's statistics, the gathered batch); losses of
 * 0.004 to 0.16 were measured within 2e-6 of each other, bounded at 1e-4.
 */
function assertSameLosses(
  got: Map<number, number>,
  want: Map<number, number>,
  iterations: number[],
): void {
  assert.deepEqual([...got.keys()], iterations);
  for (const [it, loss] of got) {
    const ref = want.get(it)!;
    assert.ok(
      Math.abs(loss - ref) <= 1e-4,
      `iteration ${it}: ${loss} vs ${ref}`,
    );
  }
}

const tmp = MPI ? await Deno.makeTempDir({ prefix: "mec_dist_" }) : "";
if (MPI) {
  await makeImageFolders(join(tmp, "data"));
  globalThis.addEventListener("unload", () => {
    Deno.removeSync(tmp, { recursive: true });
  });
}
const data = join(tmp, "data");

Deno.test({
  name:
    "pretrain on 2 ranks repeats the single-process losses; its checkpoint resumes as 1 rank and a 1-rank checkpoint resumes on 2",
  ignore: !MPI,
  fn: async () => {
    const alone = join(tmp, "alone");
    const one = await pretrainAlone([data, ...TINY, "--out", alone]);
    assert.equal(one.code, 0, one.stderr);
    const want = await stepLosses(join(alone, "log.jsonl"));
    assert.deepEqual([...want.keys()], [0, 1, 2, 3]);

    const two = join(tmp, "two");
    const run = await mpirun(2, "tools/pretrain.ts", [
      data,
      ...TINY,
      "--out",
      two,
    ]);
    assert.equal(run.code, 0, run.stderr);
    // Rank 0 alone prints: one progress line per iteration shown.
    assert.equal(run.stdout.match(/^Epoch: \[1\]\[1\/2\]/gm)?.length, 1);
    assert.match(
      run.stdout,
      /2 ranks \(Open MPI, CPU processes\); global batch 4 = 2 x 2/,
    );
    assertSameLosses(await stepLosses(join(two, "log.jsonl")), want, [
      0,
      1,
      2,
      3,
    ]);

    // 2 ranks -> 1 process.
    const back = join(tmp, "back");
    const r1 = await pretrainAlone([
      "--resume",
      join(two, "checkpoint_0000.safetensors"),
      "--out",
      back,
    ]);
    assert.equal(r1.code, 0, r1.stderr);
    assertSameLosses(await stepLosses(join(back, "log.jsonl")), want, [2, 3]);

    // 1 process -> 2 ranks.
    const forth = join(tmp, "forth");
    const r2 = await mpirun(2, "tools/pretrain.ts", [
      "--resume",
      join(alone, "checkpoint_0000.safetensors"),
      "--out",
      forth,
    ]);
    assert.equal(r2.code, 0, r2.stderr);
    assertSameLosses(await stepLosses(join(forth, "log.jsonl")), want, [2, 3]);
  },
});

/**
 * The pid of rank `rank` of the job whose command line holds `marker`:
 * found by a shell (the tests may not read /proc themselves), by the
 * OMPI_COMM_WORLD_RANK that mpirun puts in each rank's environment.
 */
async function rankPid(marker: string, rank: number): Promise<number | null> {
  const script = `for p in $(pgrep -f -- "$1"); do
    tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null |
      grep -qx "OMPI_COMM_WORLD_RANK=$2" && echo $p
  done; true`;
  const out = await new Deno.Command("sh", {
    args: ["-c", script, "sh", marker, String(rank)],
    stdout: "piped",
  }).output();
  const pids = new TextDecoder().decode(out.stdout).trim().split("\n")
    .filter((l) => l !== "").map(Number);
  return pids.length === 1 ? pids[0] : null;
}

/** Waits until the run's log has a step record (or `seconds` pass). */
async function firstStep(log: string, seconds: number): Promise<void> {
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    try {
      if ((await Deno.readTextFile(log)).includes('"event":"step"')) return;
    } catch {
      // Not written yet.
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no step was logged in ${log} within ${seconds} s`);
}

for (
  const [signal, why] of [
    ["SIGKILL", /process rank 1 .*exited on signal 9/],
    // A stopped rank is alive but silent: the others' next collective
    // times out (MEC_DIST_TIMEOUT=3) and rank 0 stops the job.
    [
      "SIGSTOP",
      /^rank 0 of 2: .* did not complete within 3 s, so another rank has stopped or is stuck\.$/m,
    ],
  ] as const
) {
  Deno.test({
    name:
      `a rank sent ${signal} mid-run ends the whole job with a sentence naming the rank, within a bounded time`,
    ignore: !MPI,
    fn: async () => {
      const out = join(tmp, `failure-${signal}`);
      // Slow reads keep the run going long enough to be interrupted.
      const running = mpirun(
        2,
        "tools/pretrain.ts",
        [data, ...TINY, "--epochs", "100", "--out", out],
        120,
        {
          MEC_TEST_SLOW_DATA_MS: "50",
          MEC_DIST_TIMEOUT: "3",
        },
      );
      await firstStep(join(out, "log.jsonl"), 60);
      const pid = await rankPid(out, 1);
      assert.ok(pid !== null, "rank 1's process");
      const t0 = performance.now();
      Deno.kill(pid, signal);
      const run = await running;
      const seconds = (performance.now() - t0) / 1000;
      assert.notEqual(run.code, 0);
      assert.match(run.stdout + run.stderr, why);
      // The SIGKILL is seen by mpirun at once; the stop waits for the
      // 3 s timeout, then MPI_Abort and mpirun's 1 s grace.
      assert.ok(seconds < 30, `the job took ${seconds.toFixed(1)} s to end`);
      // The last good checkpoint, if any, is whole (none is half-written).
      for await (const e of Deno.readDir(out)) {
        assert.doesNotMatch(e.name, /\.tmp/);
      }
    },
  });
}

/** `deno task lincls args` as one process. */
function linclsAlone(args: string[]) {
  return runDeno("tools/lincls.ts", args, { MEC_THREADS: "1" });
}

/** The validation Acc@1 lines of a probe's output. */
function accuracies(stdout: string): string[] {
  return stdout.split("\n").filter((l) => l.startsWith(" * Epoch"));
}

Deno.test({
  name:
    "lincls on 2 ranks trains the same head as one process and counts top-1 over every rank",
  ignore: !MPI,
  fn: async () => {
    const backbone = join(tmp, "backbone");
    const pre = await pretrainAlone([data, ...TINY, "--out", backbone]);
    assert.equal(pre.code, 0, pre.stderr);
    const probeArgs = [
      "--pretrained",
      join(backbone, "checkpoint_0001.safetensors"),
      data,
      "-b",
      "4",
      "--epochs",
      "2",
      "-j",
      "0",
    ];
    const one = await linclsAlone([...probeArgs, "--out", join(tmp, "p1")]);
    assert.equal(one.code, 0, one.stderr);
    const two = await mpirun(2, "tools/lincls.ts", [
      ...probeArgs,
      "--out",
      join(tmp, "p2"),
    ]);
    assert.equal(two.code, 0, two.stderr);
    // Top-1 over the 8 validation images counted on both ranks together.
    assert.deepEqual(accuracies(two.stdout), accuracies(one.stdout));
    assert.equal(accuracies(two.stdout).length, 2);
    const a = await loadCheckpoint(join(tmp, "p1", "probe_last.safetensors"));
    const b = await loadCheckpoint(join(tmp, "p2", "probe_last.safetensors"));
    for (const [key, t] of a.model) {
      const other = b.model.get(key)!.data;
      // The head after 4 SGD steps on the same batches: measured within
      // 1e-9 of weights near 0.03; the backbone is bit for bit the same.
      const tolerance = key.startsWith("fc.") ? 1e-6 : 0;
      t.data.forEach((v, i) =>
        assert.ok(
          Math.abs(v - other[i]) <= tolerance,
          `${key}[${i}]: ${v} vs ${other[i]}`,
        )
      );
    }
  },
});

for (
  const [signal, mpirunArgs] of [
    // Forwarded by mpirun to every rank; the job is not killed.
    ["SIGUSR2", []],
    // Ctrl-C: mpirun waits the timeout, sends SIGTERM, kills as long after.
    ["SIGINT", ["--mca", "odls_base_sigkill_timeout", "3"]],
  ] as const
) {
  Deno.test({
    name:
      `${signal} to mpirun stops every rank at the same step and rank 0 saves it`,
    ignore: !MPI,
    fn: async () => {
      const out = join(tmp, `stopped-${signal}`);
      const job = startMpirun(
        2,
        "tools/pretrain.ts",
        [data, ...TINY, "--epochs", "100", "--out", out],
        { env: { MEC_TEST_SLOW_DATA_MS: "50" }, mpirunArgs: [...mpirunArgs] },
      );
      await firstStep(join(out, "log.jsonl"), 60);
      job.child.kill(signal);
      const run = await job.result;
      assert.notEqual(run.code, 0);
      assert.match(
        run.stdout,
        /Stopped by Ctrl-C at epoch \d+, batch \d+; saved /,
        run.stdout + run.stderr,
      );
      const saved = /saved (\S+) \(continue/.exec(run.stdout)![1];
      const ckpt = await loadCheckpoint(saved);
      assert.equal(ckpt.metadata.kind, "mec-pretrain");
      // The log's last step is the one before the saved position.
      const steps = await stepLosses(join(out, "log.jsonl"));
      const meta = ckpt.metadata as { iteration: number };
      assert.equal(Math.max(...steps.keys()) + 1, meta.iteration);
    },
  });
}
