/**
 * `deno task report RUN_DIR [RUN_DIR...]`: one self-contained HTML page
 * of one run or several overlaid: a chart per metric the logs hold
 * (inline SVG, see report_charts.ts), a summary per run, the probe's
 * results and the flags each run was started with. The page loads
 * nothing: it opens offline and can be mailed or archived as one file.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { EXIT, runMain, UsageError } from "./cli.ts";
import { fmt } from "./progress.ts";
import { chartSpec, type Curve, renderSvg } from "./report_charts.ts";
import { METRICS, readRunLog, type RunLog, runNames } from "./run_log.ts";

const HELP = `Usage: deno task report RUN_DIR [RUN_DIR...] [--out FILE]

Writes one HTML page with the curves of the runs in the given folders
(the --out folders of deno task pretrain and lincls), overlaid: loss, MEC,
learning rate, lambda_inv, teacher momentum, kNN top-1, throughput, the
probe's loss and accuracy; each run's summary and flags; the probe results.

  -o, --out FILE   the page (default RUN_DIR/report.html of the first folder)
  -h, --help       this help
`;

/** A run with its display name. */
interface Named extends RunLog {
  name: string;
}

/** Writes the report; returns the exit code. */
export async function report(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        out: { type: "string", short: "o" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    // parseArgs's first sentence names the flag; the rest is a hint about
    // positionals that start with a dash.
    const text = e instanceof Error ? e.message : String(e);
    throw new UsageError(`${text.split(/\.( |$)/)[0]}; see --help.`);
  }
  if (parsed.values.help) {
    console.log(HELP);
    return EXIT.ok;
  }
  const dirs = parsed.positionals;
  if (dirs.length === 0) {
    throw new UsageError(
      "Give at least one run folder: deno task report RUN_DIR [RUN_DIR...].",
    );
  }
  const logs = [];
  for (const dir of dirs) logs.push(await readRunLog(dir));
  const names = runNames(dirs);
  const runs: Named[] = logs.map((r, i) => ({ ...r, name: names[i] }));
  const out = parsed.values.out ?? join(dirs[0], "report.html");
  const html = await reportPage(runs, new Date());
  try {
    await Deno.writeTextFile(out, html);
  } catch (e) {
    throw new UsageError(
      `Cannot write ${out}: ${
        (e instanceof Error ? e.message : String(e)).replace(/\.$/, "")
      }.`,
    );
  }
  const charts = (html.match(/<figure/g) ?? []).length;
  console.log(
    `Wrote ${out}: ${runs.length} run${
      runs.length === 1 ? "" : "s"
    }, ${charts} chart${charts === 1 ? "" : "s"}.`,
  );
  return EXIT.ok;
}

/** The page: summary, one chart per metric with data, probe results, flags. */
export async function reportPage(
  runs: readonly Named[],
  now: Date,
): Promise<string> {
  const figures: string[] = [];
  for (const metric of METRICS) {
    const curves: Curve[] = runs
      .map((r) => ({ run: r.name, points: r.series.get(metric.key) ?? [] }))
      .filter((c) => c.points.length > 0);
    if (curves.length === 0) continue;
    let title = metric.title;
    if (metric.key === "probeTopK") {
      const ks = new Set(runs.flatMap((r) => r.evals.map((e) => e.k)));
      if (ks.size === 1) title = `Probe top-${[...ks][0]} (%)`;
    }
    const svg = await renderSvg(chartSpec(metric, curves, title));
    figures.push(
      `<figure data-metric="${metric.key}">${svg}</figure>`,
    );
  }
  const title = runs.length === 1
    ? `Run report: ${runs[0].name}`
    : `Run report: ${runs.length} runs`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>
body { font: 14px/1.4 sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
.note { color: #666; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td { background: #fff6dc; }
.charts { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; border: 1px solid #eee; }
code { font-size: 13px; }
</style>
</head>
<body>
<h1>${esc(title)}</h1>
<p class="note">${
    esc(`Written by deno task report on ${now.toISOString()}.`)
  }</p>
<h2>Runs</h2>
${summaryTable(runs)}
<h2>Curves</h2>
<div class="charts">
${figures.join("\n")}
</div>
${probeTable(runs)}
${flagsSection("Pretraining flags", runs.filter((r) => r.kind === "pretrain"))}
${flagsSection("Probe flags", runs.filter((r) => r.kind === "lincls"))}
</body>
</html>
`;
}

function summaryTable(runs: readonly Named[]): string {
  const rows = runs.map((r) => {
    const loss = r.series.get("loss") ?? r.series.get("probeLoss") ?? [];
    const x = r.kind === "pretrain" ? "iterations" : "epochs";
    const extent = r.kind === "pretrain" ? loss.length : r.evals.length;
    return `<tr><td>${esc(r.name)}</td><td>${r.kind}</td><td><code>${
      esc(r.dir)
    }</code></td><td>${esc(r.startedAt ?? "—")}</td><td class="num">${
      r.starts - 1
    }</td><td class="num">${
      r.samples ?? "—"
    }</td><td class="num">${extent} ${x}</td><td class="num">${
      loss.length > 0 ? fmt(loss.at(-1)!.y) : "—"
    }</td><td class="num">${
      r.speed === null ? "—" : r.speed.imagesPerSecond.toFixed(1)
    }</td><td class="num">${
      r.speed === null ? "—" : `${(100 * r.speed.dataShare).toFixed(1)} %`
    }</td></tr>`;
  });
  return `<table>
<tr><th>run</th><th>tool</th><th>folder</th><th>started</th><th>resumed</th><th>images</th><th>logged</th><th>last loss</th><th>steady images/s</th><th>data wait</th></tr>
${rows.join("\n")}
</table>`;
}

function probeTable(runs: readonly Named[]): string {
  const probes = runs.filter((r) => r.kind === "lincls");
  if (probes.length === 0) return "";
  const pct = (v: number | undefined) =>
    v === undefined || !Number.isFinite(v) ? "—" : v.toFixed(2);
  const topK = (acc: { k: number; accK: number } | undefined) =>
    acc === undefined
      ? "—"
      : acc.k === 5
      ? pct(acc.accK)
      : `${pct(acc.accK)} (top-${acc.k})`;
  const tested = probes.some((r) => r.test !== null);
  const rows = probes.map((r) => {
    const last = r.evals.at(-1);
    const epochs = typeof r.args.epochs === "number" ? r.args.epochs : "?";
    const backbone = typeof r.args.pretrained === "string"
      ? r.args.pretrained
      : r.args.randomInit
      ? "random initialisation"
      : r.args.rawPixels
      ? "raw pixels"
      : "—";
    const test = tested
      ? `<td class="num">${pct(r.test?.acc1)}</td><td class="num">${
        topK(r.test ?? undefined)
      }</td>`
      : "";
    return `<tr><td>${esc(r.name)}</td><td><code>${
      esc(String(backbone))
    }</code></td><td class="num">${r.evals.length} / ${epochs}</td><td class="num">${
      pct(last?.acc1)
    }</td><td class="num">${topK(last)}</td><td class="num">${
      pct(last?.bestAcc1)
    }</td>${test}</tr>`;
  });
  return `<h2>Probe results</h2>
<table>
<tr><th>run</th><th>backbone</th><th>epochs</th><th>top-1 (%)</th><th>top-5 (%)</th><th>best top-1 (%)</th>${
    tested ? "<th>test top-1 (%)</th><th>test top-5 (%)</th>" : ""
  }</tr>
${rows.join("\n")}
</table>
<p class="note">Top-1 and top-5 of the last epoch on the validation split${
    tested ? "; the test columns measure that probe once on the test split" : ""
  }.</p>`;
}

/**
 * One tool's flags: flags as rows, runs as columns, rows whose values
 * differ between runs marked.
 */
function flagsSection(heading: string, runs: readonly Named[]): string {
  if (runs.length === 0) return "";
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.args)))].sort();
  const show = (v: unknown) =>
    v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v);
  const rows = keys.map((k) => {
    const values = runs.map((r) => show(r.args[k]));
    const differs = runs.length > 1 && new Set(values).size > 1;
    return `<tr${differs ? ' class="differs"' : ""}><td><code>--${
      esc(k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`))
    }</code></td>${values.map((v) => `<td>${esc(v)}</td>`).join("")}</tr>`;
  });
  return `<h2>${esc(heading)}</h2>
<table>
<tr><th>flag</th>${runs.map((r) => `<th>${esc(r.name)}</th>`).join("")}</tr>
${rows.join("\n")}
</table>${
    runs.length > 1
      ? `\n<p class="note">Marked rows differ between runs.</p>`
      : ""
  }`;
}

function esc(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

if (import.meta.main) runMain(() => report(Deno.args));
