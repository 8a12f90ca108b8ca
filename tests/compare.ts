/**
 * Comparing two backends op by op: the same host data written to each, the
 * same op run on each, and checks of the other backend's results against the
 * reference backend's, with stated tolerances and the worst element named.
 *
 * Outputs an op should only write start as NaN on both sides (`nan`), so an
 * op that reads one shows up as a NaN where the reference has a number.
 *
 * @module
 */

import { AssertionError } from "node:assert/strict";
import type { Backend, DataBuffer } from "../nn/backend.ts";
import type { Tolerance } from "./check.ts";

/** One buffer on each backend of a pair. */
export interface Twin {
  readonly ref: DataBuffer;
  readonly other: DataBuffer;
  readonly length: number;
}

/** How close the other backend's values must be to the reference's. */
export interface Closeness extends Tolerance {
  /**
   * An absolute allowance added to the others, for results whose error is
   * bounded by something other than their own size (a dot product's by the
   * sum of its terms' magnitudes).
   */
  abs?: number;
}

/** Which elements a check looks at (all when omitted). */
export type Selection = (index: number) => boolean;

/** Float32 values as JSON would print them, NaN and infinities by name. */
function show(v: number): string {
  return Number.isNaN(v) ? "NaN" : String(v);
}

/**
 * Asserts |actual - expected| <= abs + atol * max|expected| + rtol *
 * |expected| on the selected elements (the maximum taken over them). The
 * reference's selected values must be finite: a non-finite one means the
 * test fed the op inputs outside its domain.
 */
export function assertNear(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  { rtol = 1e-5, atol = 1e-5, abs = 0 }: Closeness = {},
  only: Selection = () => true,
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError({
      message: `${what}: ${actual.length} values, expected ${expected.length}`,
    });
  }
  let scale = 0;
  let selected = 0;
  for (let i = 0; i < expected.length; i++) {
    if (!only(i)) continue;
    selected++;
    if (!Number.isFinite(expected[i])) {
      throw new AssertionError({
        message: `${what}: the reference's element ${i} is ${
          show(expected[i])
        }; the test's inputs are outside the op's domain`,
      });
    }
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  if (selected === 0) {
    throw new AssertionError({ message: `${what}: no element selected` });
  }
  let worst = -1;
  let worstExcess = 0;
  let failures = 0;
  for (let i = 0; i < expected.length; i++) {
    if (!only(i)) continue;
    const err = Math.abs(actual[i] - expected[i]);
    const allowed = abs + atol * scale + rtol * Math.abs(expected[i]);
    if (err <= allowed) continue;
    failures++;
    // A NaN error is the worst there is.
    const excess = Number.isNaN(err) ? Infinity : err - allowed;
    if (worst < 0 || excess > worstExcess) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    const nan = Number.isNaN(actual[worst])
      ? " (a NaN: did the op read an output that starts as NaN?)"
      : "";
    throw new AssertionError({
      message:
        `${what}: ${failures} of ${selected} elements differ; element ${worst} is ${
          show(actual[worst])
        }, the reference ${
          show(expected[worst])
        }${nan} (scale ${scale}, rtol ${rtol}, atol ${atol}, abs ${abs})`,
    });
  }
}

/**
 * Asserts that the selected elements are equal as numbers (NaN equals NaN,
 * and -0 equals +0, which no later op can tell apart by value).
 */
export function assertSame(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  only: Selection = () => true,
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError({
      message: `${what}: ${actual.length} values, expected ${expected.length}`,
    });
  }
  let first = -1;
  let failures = 0;
  for (let i = 0; i < expected.length; i++) {
    if (!only(i)) continue;
    const a = actual[i];
    const e = expected[i];
    if (a === e || (Number.isNaN(a) && Number.isNaN(e))) continue;
    failures++;
    if (first < 0) first = i;
  }
  if (first >= 0) {
    throw new AssertionError({
      message:
        `${what}: ${failures} elements differ; the first, element ${first}, is ${
          show(actual[first])
        }, the reference ${show(expected[first])} (exact equality expected)`,
    });
  }
}

/**
 * Two backends side by side: `ref`, whose results are taken as right, and
 * `other`, the one under test. Every buffer made through the pair is freed by
 * `dispose()` (or by `using`).
 */
export class BackendPair {
  #made: Twin[] = [];

  constructor(readonly ref: Backend, readonly other: Backend) {}

  /** A twin holding `data` (rounded to float32) on each backend. */
  input(data: ArrayLike<number>): Twin {
    const values = data instanceof Float32Array
      ? data
      : Float32Array.from(data);
    const twin: Twin = {
      ref: this.ref.alloc(values.length),
      other: this.other.alloc(values.length),
      length: values.length,
    };
    this.#made.push(twin);
    this.ref.write(twin.ref, values);
    this.other.write(twin.other, values);
    return twin;
  }

  /** A twin of NaN on each backend: an output that must not be read. */
  nan(length: number): Twin {
    return this.input(new Float32Array(length).fill(NaN));
  }

  /**
   * Runs the op on each backend in turn; `on` gives a twin's buffer on the
   * backend that runs.
   */
  run(op: (backend: Backend, on: (t: Twin) => DataBuffer) => void): void {
    op(this.ref, (t) => t.ref);
    op(this.other, (t) => t.other);
  }

  /** Both sides of a twin read back. */
  read(t: Twin): { expected: Float32Array; actual: Float32Array } {
    return { expected: this.ref.read(t.ref), actual: this.other.read(t.other) };
  }

  /** The other backend's values are near the reference's (`assertNear`). */
  expectNear(
    t: Twin,
    what: string,
    tol: Closeness,
    only?: Selection,
  ): void {
    const { expected, actual } = this.read(t);
    assertNear(actual, expected, what, tol, only);
  }

  /** The other backend's values equal the reference's (`assertSame`). */
  expectSame(t: Twin, what: string, only?: Selection): void {
    const { expected, actual } = this.read(t);
    assertSame(actual, expected, what, only);
  }

  /** Frees every buffer the pair made. */
  dispose(): void {
    for (const t of this.#made) {
      this.ref.free(t.ref);
      this.other.free(t.other);
    }
    this.#made = [];
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
