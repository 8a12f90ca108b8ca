/**
 * Classification: softmax cross-entropy and top-k accuracy, and the error a
 * non-finite training loss raises.
 *
 * @module
 */

import { formatShape, recordGrad, Tensor } from "../tensor.ts";
import { mean, sum } from "./elementwise.ts";
import { backendOf, expectRank } from "./util.ts";

/**
 * A training loss that came out NaN or infinite: the step's weights would be
 * ruined, so training stops before the optimiser touches them. `what` names
 * the loss ("the MEC loss"), `where` the step ("at iteration 7").
 */
export class NonFiniteLossError extends Error {
  constructor(
    readonly what: string,
    readonly value: number,
    readonly where: string,
  ) {
    super(`${what} is ${value} ${where}`);
    this.name = "NonFiniteLossError";
  }
}

/** Class indices: a host array, or a tensor of integral floats. */
export type Labels = Tensor | Int32Array | readonly number[];

function labelTensor(op: string, logits: Tensor, labels: Labels): Tensor {
  const [rows, cols] = logits.shape;
  if (labels instanceof Tensor) {
    if (labels.size !== rows) {
      throw new RangeError(
        `${op}: ${labels.size} labels for ${rows} rows of logits ${
          formatShape(logits.shape)
        }`,
      );
    }
    return labels.viewAs([rows]);
  }
  if (labels.length !== rows) {
    throw new RangeError(
      `${op}: ${labels.length} labels for ${rows} rows of logits ${
        formatShape(logits.shape)
      }`,
    );
  }
  const data = new Float32Array(rows);
  for (let i = 0; i < rows; i++) {
    const t = labels[i];
    if (!Number.isInteger(t) || t < 0 || t >= cols) {
      throw new RangeError(
        `${op}: label ${t} at position ${i} is not a class index in [0, ${cols})`,
      );
    }
    data[i] = t;
  }
  const t = Tensor.empty(logits.backend, [rows]);
  t.backend.write(t.buffer, data);
  return t;
}

export interface CrossEntropyOptions {
  reduction?: "mean" | "sum" | "none";
}

/**
 * PyTorch's `F.cross_entropy(logits, labels)` for logits [n, classes] and
 * integer labels: mean (default), sum or per-row losses.
 */
export function crossEntropy(
  logits: Tensor,
  labels: Labels,
  opts: CrossEntropyOptions = {},
): Tensor {
  expectRank("crossEntropy", logits, [2], "logits");
  const [rows, cols] = logits.shape;
  const target = labelTensor("crossEntropy", logits, labels);
  const backend = backendOf("crossEntropy", logits, target);
  const probs = Tensor.empty(backend, logits.shape);
  const losses = Tensor.empty(backend, [rows]);
  backend.softmaxCrossEntropyForward({
    logits: logits.buffer,
    labels: target.buffer,
    probs: probs.buffer,
    losses: losses.buffer,
    rows,
    cols,
  });
  recordGrad(losses, "crossEntropy", [logits], [probs, target], (g, saved) => {
    const [p, t] = saved;
    const gx = Tensor.empty(backend, logits.shape);
    backend.softmaxCrossEntropyBackward({
      probs: p.buffer,
      labels: t.buffer,
      dLosses: g.buffer,
      dx: gx.buffer,
      rows,
      cols,
    });
    return [gx];
  });
  switch (opts.reduction ?? "mean") {
    case "none":
      return losses;
    case "sum":
      return sum(losses);
    case "mean":
      return mean(losses);
  }
}

/**
 * Top-k accuracies in percent for each k (the ImageNet example's `accuracy`):
 * a row counts when its label is among its k largest logits. Ties are broken
 * by position, as a stable sort would: a row is right at k when fewer than k
 * logits rank above its label.
 */
export function accuracy(
  logits: Tensor,
  labels: Int32Array | readonly number[],
  ks: readonly number[] = [1],
): number[] {
  expectRank("accuracy", logits, [2], "logits");
  const [rows, cols] = logits.shape;
  if (labels.length !== rows) {
    throw new RangeError(
      `accuracy: ${labels.length} labels for ${rows} rows of logits ${
        formatShape(logits.shape)
      }`,
    );
  }
  const data = logits.toArray();
  const hits = ks.map(() => 0);
  for (let i = 0; i < rows; i++) {
    const t = labels[i];
    if (!Number.isInteger(t) || t < 0 || t >= cols) {
      throw new RangeError(
        `accuracy: label ${t} at position ${i} is not a class index in [0, ${cols})`,
      );
    }
    const v = data[i * cols + t];
    let above = 0;
    for (let j = 0; j < cols; j++) {
      // Equal logits earlier in the row rank first, as a stable sort would.
      const u = data[i * cols + j];
      if (u > v || (u === v && j < t)) above++;
    }
    ks.forEach((k, q) => {
      if (above < k) hits[q]++;
    });
  }
  return hits.map((h) => (100 * h) / rows);
}
