/**
 * `deno task report` on real runs of pretrain and lincls (a tiny network
 * on a few real JPEGs), the log reader on hand-written logs, and one
 * sentence with exit code 2 for each kind of bad input.
 */

import { join } from "node:path";
import { downsample } from "../tools/report_charts.ts";
import { readRunLog } from "../tools/run_log.ts";
import { makeImageFolders, runDeno } from "./tool_runs.ts";
import { assert } from "./assert.ts";
import { decodeEvent, readRecords } from "./tfevents.ts";
import { testDevice } from "./device.ts";

const report = (args: string[]) => runDeno("tools/report.ts", args);

const tmp = await Deno.makeTempDir({ prefix: "mec_report_" });
globalThis.addEventListener("unload", () => {
  Deno.removeSync(tmp, { recursive: true });
});

/** The pages' figures: `<figure data-metric="KEY"><svg ...></svg></figure>`. */
function figures(html: string): Map<string, string> {
  const found = new Map<string, string>();
  for (
    const m of html.matchAll(
      /<figure data-metric="(\w+)">([\s\S]*?)<\/figure>/g,
    )
  ) {
    found.set(m[1], m[2]);
  }
  return found;
}

/**
 * The run folder's event files, one per start, each beginning with the
 * file version and a start at the step given, hold `tag` at every step
 * the log records `field` for (float32, as TensorBoard keeps scalars),
 * the later process's value where a resumed run repeated a step.
 */
async function assertEventFiles(
  dir: string,
  startSteps: number[],
  tag: string,
  event: string,
  field: string,
): Promise<void> {
  const names = [...Deno.readDirSync(dir)].map((e) => e.name)
    .filter((n) => n.startsWith("events.out.tfevents.")).sort();
  assert.equal(names.length, startSteps.length, `event files in ${dir}`);
  const logged = new Map<number, number>();
  const isProbe = event === "eval";
  for (
    const line of (await Deno.readTextFile(join(dir, "log.jsonl"))).trim()
      .split("\n")
  ) {
    const r = JSON.parse(line);
    if (r.event === event) {
      logged.set(isProbe ? r.epoch + 1 : r.iteration, Math.fround(r[field]));
    }
  }
  const written = new Map<number, number>();
  for (const [i, name] of names.entries()) {
    const events = readRecords(await Deno.readFile(join(dir, name))).map(
      decodeEvent,
    );
    assert.equal(events[0].fileVersion, "brain.Event:2");
    assert.deepEqual(events[1], {
      ...events[1],
      step: startSteps[i],
      sessionStatus: 1,
    });
    for (const e of events.slice(2)) {
      const value = e.values?.find(([t]) => t === tag)?.[1];
      if (value !== undefined) written.set(e.step, value);
    }
  }
  assert.ok(logged.size > 0);
  assert.deepEqual(written, logged);
}

Deno.test("report draws a chart per logged metric of a real pretraining and its probe, on a page that loads nothing", async () => {
  const data = join(tmp, "data");
  await makeImageFolders(data);
  const pretrain = join(tmp, "pretrain");
  const probe = join(tmp, "probe");
  const tiny = ["--device", testDevice, "-b", "4", "-j", "1", "--epochs", "2"];
  const p = await runDeno("tools/pretrain.ts", [
    data,
    ...tiny,
    ...["--arch", "resnet18", "--width", "4", "--small-stem"],
    ...["--image-size", "16", "--dim", "16", "--pred-dim", "8"],
    ...["--warmup-epochs", "1", "--out", pretrain],
  ]);
  assert.equal(p.code, 0, p.stderr);
  // Resumed after the first epoch: iterations 2 and 3 run again, into a
  // second event file that starts there.
  const resumed = await runDeno("tools/pretrain.ts", [
    ...["--resume", join(pretrain, "checkpoint_0000.safetensors")],
    ...["--device", testDevice],
  ]);
  assert.equal(resumed.code, 0, resumed.stderr);
  await assertEventFiles(pretrain, [0, 2], "train/loss", "step", "loss");
  const l = await runDeno("tools/lincls.ts", [
    data,
    ...tiny,
    ...["--pretrained", join(pretrain, "checkpoint_0001.safetensors")],
    ...["--out", probe],
  ]);
  assert.equal(l.code, 0, l.stderr);
  await assertEventFiles(probe, [1], "probe/top1", "eval", "acc1");

  const out = join(tmp, "both.html");
  const r = await report([pretrain, probe, "--out", out]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Wrote .*both\.html: 2 runs, 11 charts\.\n$/);
  const html = await Deno.readTextFile(out);

  // Self-contained: no scripts, styles, images or frames from elsewhere;
  // the only URLs are SVG's XML namespace names, which are never fetched.
  assert.doesNotMatch(html, /<(script|link|img|iframe|object|embed)\b/i);
  assert.doesNotMatch(html, /\b(src|href)\s*=|url\(|@import/i);
  const names = html.replaceAll(/xmlns(:\w+)?="[^"]*"/g, "");
  assert.doesNotMatch(names, /https?:|\/\/[a-z]/i);

  const charts = figures(html);
  assert.deepEqual([...charts.keys()], [
    "loss",
    "mec",
    "lr",
    "lambdaInv",
    "teacherMomentum",
    "imagesPerSecond",
    "dataWait",
    "probeLoss",
    "probeLr",
    "probeTop1",
    "probeTopK",
  ]);
  for (const [metric, svg] of charts) {
    assert.match(svg, /^<svg [^>]*class="marks"/, metric);
    // One line per run that logged the metric: these are one run's each.
    assert.equal(svg.match(/class="mark-line/g)?.length, 1, metric);
  }
  // Pretraining's 4 iterations and the probe's 2 evaluations: one symbol
  // per point in the chart's symbol marks (the legend has its own).
  const symbols = (svg: string) =>
    svg.split('<g class="mark-symbol role-mark')[1].split("</g>")[0]
      .match(/<path /g)?.length;
  assert.equal(symbols(charts.get("loss")!), 4);
  assert.equal(symbols(charts.get("probeTop1")!), 2);
  assert.match(charts.get("loss")!, />iteration</);
  assert.match(charts.get("probeTop1")!, />epoch</);
  // Two classes: the probe reports top-2, and says so.
  assert.match(charts.get("probeTopK")!, />Probe top-2 \(%\)</);

  // The probe's results and both tools' flags, as logged.
  const records = (await Deno.readTextFile(join(probe, "log.jsonl")))
    .trim().split("\n").map((line) => JSON.parse(line));
  const last = records.filter((r) => r.event === "eval").at(-1);
  assert.match(
    html,
    new RegExp(
      `<td class="num">2 / 2</td><td class="num">${
        last.acc1.toFixed(2)
      }</td><td class="num">${last.acc2.toFixed(2)} \\(top-2\\)</td>`,
    ),
  );
  assert.match(html, /<h2>Pretraining flags<\/h2>/);
  assert.match(html, /<td><code>--pred-dim<\/code><\/td><td>8<\/td>/);
  assert.match(html, /<h2>Probe flags<\/h2>/);
  assert.match(html, /checkpoint_0001\.safetensors/);

  // One run alone, the page beside its log by default.
  const alone = await report([pretrain]);
  assert.equal(alone.code, 0, alone.stderr);
  const page = await Deno.readTextFile(join(pretrain, "report.html"));
  assert.equal(figures(page).size, 7);
  assert.doesNotMatch(page, /Probe/);
});

Deno.test("the log reader keeps a resumed run's later steps and leaves out an unfinished last line", async () => {
  const dir = join(tmp, "resumed");
  await Deno.mkdir(dir);
  const step = (iteration: number, loss: number) => ({
    event: "step",
    epoch: 0,
    batch: iteration,
    iteration,
    loss,
    mec: 2 * loss,
    lr: 0.1,
    lamdaInv: 8,
    teacherMomentum: 0.996,
    time: 0.5,
    data: 0.125,
    imagesPerSecond: 64,
  });
  const lines = [
    { event: "start", args: { lr: 0.5 }, itersPerEpoch: 4, samples: 16 },
    step(0, 10),
    step(1, 9),
    step(2, 8),
    // Killed after iteration 2; resumed from the checkpoint at iteration 1.
    { event: "start", args: { lr: 0.5, resume: "c.safetensors" } },
    step(1, 7),
    step(2, 6),
    { event: "knn", epoch: 0, iteration: 2, top1: 12.5 },
  ].map((r) => JSON.stringify(r));
  await Deno.writeTextFile(
    join(dir, "log.jsonl"),
    `${lines.join("\n")}\n{"event":"step","iter`,
  );
  const run = await readRunLog(dir);
  assert.equal(run.kind, "pretrain");
  assert.equal(run.starts, 2);
  assert.deepEqual(run.args, { lr: 0.5, resume: "c.safetensors" });
  assert.deepEqual(run.series.get("loss"), [
    { x: 0, y: 10 },
    { x: 1, y: 7 },
    { x: 2, y: 6 },
  ]);
  assert.deepEqual(run.series.get("mec")?.map((p) => p.y), [20, 14, 12]);
  assert.deepEqual(run.series.get("lambdaInv")?.map((p) => p.y), [8, 8, 8]);
  assert.deepEqual(run.series.get("dataWait")?.map((p) => p.y), [25, 25, 25]);
  assert.deepEqual(run.series.get("knnTop1"), [{ x: 2, y: 12.5 }]);
});

Deno.test("the log reader places the probe's steps within their epoch, its evaluations at the epoch's end, and reads its test", async () => {
  const dir = join(tmp, "probe-log");
  await Deno.mkdir(dir);
  const records = [
    { event: "start", args: { epochs: 2 }, trainSamples: 8, featureDim: 32 },
    { event: "step", epoch: 0, iteration: 0, loss: 4, lr: 0.2 },
    { event: "step", epoch: 0, iteration: 1, loss: 3, lr: 0.2 },
    { event: "eval", epoch: 0, acc1: 50, acc5: 90, bestAcc1: 50 },
    { event: "step", epoch: 1, iteration: 0, loss: 2, lr: 0.1 },
    { event: "step", epoch: 1, iteration: 1, loss: 1, lr: 0.1 },
    { event: "eval", epoch: 1, acc1: 40, acc5: 95, bestAcc1: 50 },
    { event: "test", epoch: 1, acc1: 45, acc5: 96 },
  ];
  await Deno.writeTextFile(
    join(dir, "log.jsonl"),
    records.map((r) => JSON.stringify(r) + "\n").join(""),
  );
  const run = await readRunLog(dir);
  assert.equal(run.kind, "lincls");
  assert.equal(run.samples, 8);
  assert.deepEqual(run.series.get("probeLoss"), [
    { x: 0, y: 4 },
    { x: 0.5, y: 3 },
    { x: 1, y: 2 },
    { x: 1.5, y: 1 },
  ]);
  assert.deepEqual(run.series.get("probeTop1"), [
    { x: 1, y: 50 },
    { x: 2, y: 40 },
  ]);
  assert.deepEqual(run.evals.at(-1), {
    epoch: 1,
    acc1: 40,
    k: 5,
    accK: 95,
    bestAcc1: 50,
  });
  assert.deepEqual(run.test, { epoch: 1, acc1: 45, k: 5, accK: 96 });
});

Deno.test("downsample() averages equal groups of consecutive points, x and y alike", () => {
  const points = Array.from({ length: 10 }, (_, i) => ({ x: i, y: i * i }));
  assert.deepEqual(downsample(points, 10), { points, group: 1 });
  assert.deepEqual(downsample(points, 4), {
    group: 3,
    points: [
      { x: 1, y: 5 / 3 },
      { x: 4, y: 50 / 3 },
      { x: 7, y: 149 / 3 },
      { x: 9, y: 81 },
    ],
  });
});

Deno.test("report gives bad input one sentence and exit code 2", async () => {
  const empty = join(tmp, "empty");
  await Deno.mkdir(empty);
  const bad = async (name: string, content: string) => {
    const dir = join(tmp, name);
    await Deno.mkdir(dir);
    await Deno.writeTextFile(join(dir, "log.jsonl"), content);
    return dir;
  };
  const start = JSON.stringify({ event: "start", args: {} });
  const cases: [string[], RegExp][] = [
    [[], /^Give at least one run folder/],
    [["--colour", empty], /^Unknown option '--colour'; see --help\.$/],
    [[join(tmp, "missing")], /^There is no run folder .*missing\.$/],
    [[empty], /empty holds no log\.jsonl: give the --out folder/],
    [
      [await bad("corrupt", `${start}\n{"event": "st\n${start}\n`)],
      /^Line 2 of .*corrupt\/log\.jsonl is not JSON: the log is corrupt\.$/,
    ],
    [
      [await bad("array", `${start}\n[1, 2]\n`)],
      /^Line 2 of .*is not a log record/,
    ],
    [
      [await bad("nostart", `{"event":"step","iteration":0}\n`)],
      /nostart\/log\.jsonl has no start record/,
    ],
  ];
  for (const [args, pattern] of cases) {
    const r = await report(args);
    assert.equal(r.code, 2, `${args}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, `one line for ${args}: ${r.stderr}`);
    assert.match(lines[0], pattern);
  }
});
