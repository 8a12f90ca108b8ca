/**
 * A run folder's `log.jsonl` read back: the records `deno task pretrain`
 * and `deno task lincls` append (one JSON object per line, see JsonLog in
 * progress.ts), gathered into the series a report plots.
 *
 * A resumed run appends a second `start` record and may repeat the steps
 * after its checkpoint; the later record of a step wins, as it is the one
 * the run continued from.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { UsageError } from "./cli.ts";

/** One point of a curve: x is an iteration (pretrain) or an epoch (probe). */
export interface Point {
  x: number;
  y: number;
}

/** The curves of a run, by metric name (see {@link METRICS}). */
export type Series = Map<string, Point[]>;

/** One probe evaluation: top-1 and top-k accuracy (k = min(5, classes)). */
export interface ProbeEval {
  epoch: number;
  acc1: number;
  k: number;
  accK: number;
  bestAcc1: number;
}

/** What one run folder's log holds. */
export interface RunLog {
  dir: string;
  kind: "pretrain" | "lincls";
  /** The flags of the latest start (a resumed run records them again). */
  args: Record<string, unknown>;
  /** How many times the run was started (1 + resumptions). */
  starts: number;
  /** The first start's time, as logged (ISO 8601). */
  startedAt: string | null;
  /** Images in the training set, as the latest start logged. */
  samples: number | null;
  series: Series;
  /** The probe's evaluations by epoch (lincls runs). */
  evals: ProbeEval[];
  /**
   * The final probe measured once on the test split, where the run held
   * out its validation images from the training split (the demo).
   */
  test: { epoch: number; acc1: number; k: number; accK: number } | null;
  /** Steady-state images/s and data-wait share, when the run logged them. */
  speed: { imagesPerSecond: number; dataShare: number } | null;
  /** Checkpoints written, in order. */
  checkpoints: string[];
}

/** A metric the report can plot. */
export interface Metric {
  key: string;
  title: string;
  /** The x axis: pretraining's iterations or the probe's epochs. */
  x: "iteration" | "epoch";
}

/** Every metric, in the report's order. */
export const METRICS: readonly Metric[] = [
  { key: "loss", title: "Loss (−MEC · λ⁻¹)", x: "iteration" },
  { key: "mec", title: "MEC (coding length per sample)", x: "iteration" },
  { key: "lr", title: "Learning rate", x: "iteration" },
  { key: "lambdaInv", title: "λ⁻¹", x: "iteration" },
  { key: "teacherMomentum", title: "Teacher momentum", x: "iteration" },
  { key: "knnTop1", title: "kNN top-1 (%)", x: "iteration" },
  { key: "imagesPerSecond", title: "Images per second", x: "iteration" },
  { key: "dataWait", title: "Time waiting for data (%)", x: "iteration" },
  { key: "probeLoss", title: "Probe loss", x: "epoch" },
  { key: "probeLr", title: "Probe learning rate", x: "epoch" },
  { key: "probeTop1", title: "Probe top-1 (%)", x: "epoch" },
  { key: "probeTopK", title: "Probe top-5 (%)", x: "epoch" },
];

type Json = Record<string, unknown>;

/**
 * Reads `<dir>/log.jsonl`. Bad input throws a UsageError of one sentence:
 * a missing folder, a folder without a log, a line that is not a JSON
 * object, a log without a start record. An unfinished last line (a run
 * writing it right now) is left out.
 */
export async function readRunLog(dir: string): Promise<RunLog> {
  const path = join(dir, "log.jsonl");
  let text: string;
  try {
    const info = await Deno.stat(dir);
    if (!info.isDirectory) {
      throw new UsageError(
        `${dir} is not a folder: give a run's --out folder.`,
      );
    }
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError(
        (await isFolder(dir))
          ? `${dir} holds no log.jsonl: give the --out folder of a pretrain or lincls run.`
          : `There is no run folder ${dir}.`,
      );
    }
    throw new UsageError(`Cannot read ${path}: ${errorText(e)}.`);
  }
  const lines = text.split("\n");
  const unfinished = !text.endsWith("\n");
  const records: Json[] = [];
  for (const [i, line] of lines.entries()) {
    if (line.trim() === "") continue;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      if (unfinished && i === lines.length - 1) break;
      throw new UsageError(
        `Line ${i + 1} of ${path} is not JSON: the log is corrupt.`,
      );
    }
    if (
      typeof record !== "object" || record === null || Array.isArray(record) ||
      typeof (record as Json).event !== "string"
    ) {
      throw new UsageError(
        `Line ${
          i + 1
        } of ${path} is not a log record (an object with an "event").`,
      );
    }
    records.push(record as Json);
  }
  return gather(dir, path, records);
}

function gather(dir: string, path: string, records: Json[]): RunLog {
  const starts = records.filter((r) => r.event === "start");
  const last = starts.at(-1);
  if (last === undefined) {
    throw new UsageError(
      `${path} has no start record: it is not a log of deno task pretrain or lincls.`,
    );
  }
  const kind = "featureDim" in last ? "lincls" : "pretrain";
  const run: RunLog = {
    dir,
    kind,
    args: isObject(last.args) ? last.args : {},
    starts: starts.length,
    startedAt: typeof starts[0].time === "string" ? starts[0].time : null,
    samples: num(last.samples) ?? num(last.trainSamples),
    series: new Map(),
    evals: [],
    test: null,
    speed: null,
    checkpoints: [],
  };
  // Later records of the same x replace earlier ones (a resumed run's).
  const curves = new Map<string, Map<number, number>>();
  const put = (key: string, x: number, y: unknown) => {
    const value = num(y);
    if (value === null) return;
    if (!curves.has(key)) curves.set(key, new Map());
    curves.get(key)!.set(x, value);
  };
  // The probe's steps restart at 0 each epoch: x = epoch + fraction done.
  const probeSteps = new Map<number, Json[]>();
  const evals = new Map<number, ProbeEval>();
  for (const r of records) {
    const iteration = num(r.iteration);
    const epoch = num(r.epoch);
    if (kind === "pretrain" && r.event === "step" && iteration !== null) {
      put("loss", iteration, r.loss);
      put("mec", iteration, r.mec);
      put("lr", iteration, r.lr);
      put("lambdaInv", iteration, r.lambdaInv ?? r.lamdaInv);
      put("teacherMomentum", iteration, r.teacherMomentum);
      put("imagesPerSecond", iteration, r.imagesPerSecond);
      const time = num(r.time);
      const data = num(r.data);
      if (time !== null && data !== null && time > 0) {
        put("dataWait", iteration, 100 * data / time);
      }
    } else if (r.event === "knn" && iteration !== null) {
      put("knnTop1", iteration, r.top1 ?? r.acc1);
    } else if (kind === "lincls" && r.event === "step" && epoch !== null) {
      if (!probeSteps.has(epoch)) probeSteps.set(epoch, []);
      probeSteps.get(epoch)!.push(r);
    } else if (r.event === "eval" && epoch !== null) {
      const acc = accuracies(r);
      if (acc === null) continue;
      evals.set(epoch, {
        epoch,
        ...acc,
        bestAcc1: num(r.bestAcc1) ?? acc.acc1,
      });
    } else if (r.event === "test" && epoch !== null) {
      const acc = accuracies(r);
      if (acc !== null) run.test = { epoch, ...acc };
    } else if (r.event === "speed") {
      const ips = num(r.imagesPerSecond);
      const share = num(r.dataShare);
      if (ips !== null && share !== null) {
        run.speed = { imagesPerSecond: ips, dataShare: share };
      }
    } else if (r.event === "checkpoint" && typeof r.path === "string") {
      run.checkpoints.push(r.path);
    }
  }
  for (const [epoch, steps] of probeSteps) {
    // A resumed epoch starts again at iteration 0: keep its last attempt.
    const lastStart = steps.findLastIndex((s) => num(s.iteration) === 0);
    const attempt = steps.slice(Math.max(0, lastStart));
    for (const s of attempt) {
      const x = epoch + (num(s.iteration) ?? 0) / attempt.length;
      put("probeLoss", x, s.loss);
      put("probeLr", x, s.lr);
    }
  }
  run.evals = [...evals.values()].sort((a, b) => a.epoch - b.epoch);
  for (const e of run.evals) {
    // An evaluation follows its epoch: plot it at the epoch's end.
    put("probeTop1", e.epoch + 1, e.acc1);
    put("probeTopK", e.epoch + 1, e.accK);
  }
  for (const [key, points] of curves) {
    run.series.set(
      key,
      [...points].map(([x, y]) => ({ x, y })).sort((a, b) => a.x - b.x),
    );
  }
  return run;
}

/** Short names for runs: folder names, with parents added until unique. */
export function runNames(dirs: readonly string[]): string[] {
  const parts = dirs.map((d) => resolve(d).split("/").filter((p) => p !== ""));
  const deepest = Math.max(1, ...parts.map((p) => p.length));
  for (let depth = 1;; depth++) {
    const names = parts.map((p) => p.slice(-depth).join("/") || "/");
    if (new Set(names).size === names.length || depth >= deepest) return names;
  }
}

/** A record's top-1 and top-k (its `acc<k>` field other than acc1). */
function accuracies(
  r: Json,
): { acc1: number; k: number; accK: number } | null {
  const acc1 = num(r.acc1);
  if (acc1 === null) return null;
  const k = Object.keys(r).map((name) => /^acc(\d+)$/.exec(name)?.[1])
    .filter((d) => d !== undefined && d !== "1").map(Number)[0];
  return {
    acc1,
    k: k ?? 5,
    accK: k === undefined ? NaN : num(r[`acc${k}`]) ?? NaN,
  };
}

function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

async function isFolder(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

function errorText(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).replace(/\.$/, "");
}
