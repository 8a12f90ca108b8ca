/**
 * Checks shared by the ops: same device, expected ranks, shape folding for
 * broadcasts. Errors name the op and the shapes, and are thrown before any
 * native call.
 *
 * @module
 */

import type { Backend, Dims3 } from "../backend.ts";
import { formatShape, type Tensor } from "../tensor.ts";

/** The one backend of the inputs; throws if they live on different devices. */
export function backendOf(op: string, ...tensors: Tensor[]): Backend {
  const backend = tensors[0].backend;
  for (const t of tensors) {
    if (t.backend !== backend) {
      throw new Error(
        `${op}: tensors are on different devices (${
          tensors.map((u) => u.device).join(", ")
        })`,
      );
    }
  }
  return backend;
}

export function shapesOf(...tensors: Tensor[]): string {
  return tensors.map((t) => formatShape(t.shape)).join(" and ");
}

export function expectRank(
  op: string,
  t: Tensor,
  ranks: number[],
  what = "input",
): void {
  if (!ranks.includes(t.ndim)) {
    throw new RangeError(
      `${op}: expected a ${ranks.join("-D or ")}-D ${what}, got shape ${
        formatShape(t.shape)
      }`,
    );
  }
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** PyTorch's broadcast of two shapes, or null when they do not broadcast. */
export function broadcastShapes(
  a: readonly number[],
  b: readonly number[],
): number[] | null {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const da = a[a.length - n + i] ?? 1;
    const db = b[b.length - n + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) return null;
    out.push(da === 1 ? db : da);
  }
  return out;
}

/**
 * Folds a broadcast of `small` into `full` into the backend's three-dimension
 * form: runs of dimensions that are kept or broadcast merge into one. Returns
 * null when more than three runs are needed.
 */
export function foldBroadcast(
  full: readonly number[],
  small: readonly number[],
): { shape: Dims3; smallShape: Dims3 } | null {
  const padded = [...new Array(full.length - small.length).fill(1), ...small];
  const runs: { size: number; kept: boolean }[] = [];
  full.forEach((d, i) => {
    if (d === 1) return; // size-1 dims fold into any run
    const kept = padded[i] === d;
    const last = runs.at(-1);
    if (last && last.kept === kept) last.size *= d;
    else runs.push({ size: d, kept });
  });
  if (runs.length > 3) return null;
  while (runs.length < 3) runs.unshift({ size: 1, kept: true });
  const shape = runs.map((r) => r.size) as unknown as Dims3;
  const smallShape = runs.map((r) => (r.kept ? r.size : 1)) as unknown as Dims3;
  return { shape, smallShape };
}

export function pair(v: number | readonly [number, number]): [number, number] {
  return typeof v === "number" ? [v, v] : [v[0], v[1]];
}
