/**
 * The report's charts: one Vega-Lite line chart per metric with the runs
 * overlaid, rendered headless to SVG by Vega (no browser, no canvas, no
 * network), so the page carries its charts inline.
 *
 * Vega-Lite was chosen over hand-made SVG after trying it here: the
 * axes, ticks, legend and number formats come out as in any Vega chart,
 * and rendering a chart of a few thousand points takes about 0.1 s.
 *
 * @module
 */

import * as vega from "vega";
import * as vl from "vega-lite";
import type { TopLevelSpec } from "vega-lite";
import type { Metric, Point } from "./run_log.ts";

/** Points per run and chart beyond which consecutive points are averaged. */
export const MAX_POINTS = 800;

/** One run's curve of a metric. */
export interface Curve {
  run: string;
  points: Point[];
}

/**
 * At most `max` points: consecutive points averaged in equal groups (x and
 * y alike), so that a 100-epoch run's curve stays a few hundred kilobytes
 * of SVG and its noise reads as the mean it wanders around.
 */
export function downsample(
  points: readonly Point[],
  max = MAX_POINTS,
): { points: Point[]; group: number } {
  if (points.length <= max) return { points: [...points], group: 1 };
  const group = Math.ceil(points.length / max);
  const out: Point[] = [];
  for (let start = 0; start < points.length; start += group) {
    const part = points.slice(start, start + group);
    out.push({
      x: part.reduce((s, p) => s + p.x, 0) / part.length,
      y: part.reduce((s, p) => s + p.y, 0) / part.length,
    });
  }
  return { points: out, group };
}

/** The Vega-Lite specification of one metric's chart. */
export function chartSpec(
  metric: Metric,
  curves: readonly Curve[],
  title = metric.title,
): TopLevelSpec {
  const values: { run: string; x: number; y: number }[] = [];
  let group = 1;
  let longest = 0;
  for (const c of curves) {
    const d = downsample(c.points);
    group = Math.max(group, d.group);
    longest = Math.max(longest, d.points.length);
    for (const p of d.points) values.push({ run: c.run, x: p.x, y: p.y });
  }
  const unit = metric.x === "iteration" ? "iterations" : "epochs";
  // A constant curve (a probe at 100 %) would get a zero-width scale.
  const ys = values.map((v) => v.y);
  const [lo, hi] = [Math.min(...ys), Math.max(...ys)];
  const pad = Math.max(Math.abs(hi) * 0.05, 1e-6);
  const domain = lo === hi ? { domain: [lo - pad, hi + pad] } : {};
  return {
    // The whole chart, axes and legend included, takes the same room.
    width: 540,
    height: 250,
    autosize: { type: "fit", contains: "padding" },
    title: {
      text: title,
      subtitle: group > 1 ? `each point: the mean of ${group} ${unit}` : "",
      anchor: "start",
    },
    data: { values },
    // Few points (one per epoch): mark each, so a single one still shows.
    mark: { type: "line", strokeWidth: 1.5, point: longest <= 40 },
    encoding: {
      x: { field: "x", type: "quantitative", title: metric.x },
      y: {
        field: "y",
        type: "quantitative",
        title: null,
        scale: { zero: false, ...domain },
      },
      color: {
        field: "run",
        type: "nominal",
        title: null,
        legend: { orient: "bottom", labelLimit: 400 },
      },
    },
    config: { font: "sans-serif", background: "white" },
  };
}

/** The chart as an `<svg>` element. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), {
    renderer: "none",
  });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
