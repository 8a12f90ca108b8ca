/**
 * Batch normalisation and row-wise L2 normalisation.
 *
 * @module
 */

import type { BatchNormDesc } from "../backend.ts";
import { formatShape, recordGrad, Tensor } from "../tensor.ts";
import { backendOf, expectRank } from "./util.ts";

export interface BatchNormOptions {
  /** Per-channel scale (gamma); omitted for a non-affine norm. */
  weight?: Tensor | null;
  /** Per-channel shift (beta); omitted for a non-affine norm. */
  bias?: Tensor | null;
  /** Running statistics, updated in place in training mode. */
  runningMean?: Tensor | null;
  runningVar?: Tensor | null;
  /** Batch statistics (true) or running statistics (false). */
  training: boolean;
  momentum?: number;
  eps?: number;
}

/**
 * PyTorch's `F.batch_norm` for inputs [n, c], [n, c, l] or [n, c, h, w]. In
 * training mode the output uses the batch's biased variance and the running
 * averages move by `momentum` towards the batch mean and unbiased variance.
 */
export function batchNorm(x: Tensor, opts: BatchNormOptions): Tensor {
  expectRank("batchNorm", x, [2, 3, 4]);
  const { weight = null, bias = null, runningMean = null, runningVar = null } =
    opts;
  const [n, c] = x.shape;
  const spatial = x.size / (n * c);
  for (
    const [name, t] of [["weight", weight], ["bias", bias], [
      "runningMean",
      runningMean,
    ], ["runningVar", runningVar]] as const
  ) {
    if (t && (t.ndim !== 1 || t.shape[0] !== c)) {
      throw new RangeError(
        `batchNorm: ${name} of shape ${
          formatShape(t.shape)
        } does not match ${c} channels of input ${formatShape(x.shape)}`,
      );
    }
  }
  if ((runningMean === null) !== (runningVar === null)) {
    throw new Error(
      "batchNorm: give both runningMean and runningVar, or neither",
    );
  }
  const inputs = [x, weight, bias].filter((t): t is Tensor => t !== null);
  const backend = backendOf(
    "batchNorm",
    ...inputs,
    ...(runningMean && runningVar ? [runningMean, runningVar] : []),
  );
  const d: BatchNormDesc = {
    n,
    c,
    spatial,
    eps: opts.eps ?? 1e-5,
    momentum: opts.momentum ?? 0.1,
  };
  const out = Tensor.empty(backend, x.shape);
  const gammaBuf = weight?.buffer ?? null;
  const betaBuf = bias?.buffer ?? null;
  const full = [n, c, spatial] as const;
  const perChannel = [1, c, 1] as const;

  if (opts.training) {
    if (n * spatial < 2) {
      throw new RangeError(
        `batchNorm: expected more than 1 value per channel when training, got input ${
          formatShape(x.shape)
        }`,
      );
    }
    const saveMean = Tensor.empty(backend, [c]);
    const saveInvStd = Tensor.empty(backend, [c]);
    backend.batchNormForwardTraining(
      x.buffer,
      out.buffer,
      gammaBuf,
      betaBuf,
      runningMean?.buffer ?? null,
      runningVar?.buffer ?? null,
      saveMean.buffer,
      saveInvStd.buffer,
      d,
    );
    return recordGrad(out, "batchNorm", inputs, (g) => {
      const gx = Tensor.empty(backend, x.shape);
      const gw = weight?.requiresGrad ? Tensor.empty(backend, [c]) : null;
      const gb = bias?.requiresGrad ? Tensor.empty(backend, [c]) : null;
      backend.batchNormBackward(
        x.buffer,
        g.buffer,
        gx.buffer,
        gammaBuf,
        gw?.buffer ?? null,
        gb?.buffer ?? null,
        saveMean.buffer,
        saveInvStd.buffer,
        d,
      );
      return withParamGrads(gx, weight, gw, bias, gb);
    });
  }

  if (!runningMean || !runningVar) {
    throw new Error("batchNorm: eval mode needs runningMean and runningVar");
  }
  backend.batchNormForwardInference(
    x.buffer,
    out.buffer,
    gammaBuf,
    betaBuf,
    runningMean.buffer,
    runningVar.buffer,
    d,
  );
  return recordGrad(out, "batchNorm", inputs, (g) => {
    // With fixed statistics the op is affine per channel:
    // dx = g * gamma * invStd, dgamma = sum(g * xhat), dbeta = sum(g).
    const invStd = Tensor.empty(backend, [c]);
    backend.scaleShift(runningVar.buffer, invStd.buffer, c, 1, d.eps);
    backend.unary("rsqrt", invStd.buffer, invStd.buffer, c);
    if (gammaBuf) {
      backend.opTensor(
        "mul",
        1,
        invStd.buffer,
        1,
        gammaBuf,
        [1, 1, c],
        0,
        invStd.buffer,
        [1, 1, c],
      );
    }
    const gx = Tensor.empty(backend, x.shape);
    backend.opTensor(
      "mul",
      1,
      g.buffer,
      1,
      invStd.buffer,
      perChannel,
      0,
      gx.buffer,
      full,
    );
    invStd.dispose();
    let gw: Tensor | null = null;
    if (weight?.requiresGrad) {
      const xhat = Tensor.empty(backend, x.shape);
      backend.batchNormForwardInference(
        x.buffer,
        xhat.buffer,
        null,
        null,
        runningMean.buffer,
        runningVar.buffer,
        d,
      );
      backend.opTensor(
        "mul",
        1,
        xhat.buffer,
        1,
        g.buffer,
        full,
        0,
        xhat.buffer,
        full,
      );
      gw = Tensor.empty(backend, [c]);
      backend.reduceSum(1, xhat.buffer, full, 0, gw.buffer, perChannel);
      xhat.dispose();
    }
    let gb: Tensor | null = null;
    if (bias?.requiresGrad) {
      gb = Tensor.empty(backend, [c]);
      backend.reduceSum(1, g.buffer, full, 0, gb.buffer, perChannel);
    }
    return withParamGrads(gx, weight, gw, bias, gb);
  });
}

/** Gradients in the order of the op's inputs [x, weight?, bias?]. */
function withParamGrads(
  gx: Tensor,
  weight: Tensor | null,
  gw: Tensor | null,
  bias: Tensor | null,
  gb: Tensor | null,
): (Tensor | null)[] {
  const grads: (Tensor | null)[] = [gx];
  if (weight) grads.push(gw);
  if (bias) grads.push(gb);
  return grads;
}

/**
 * PyTorch's `F.normalize(x, dim=1)` for a 2-D x: each row divided by
 * max(||row||, eps).
 */
export function normalize(x: Tensor, eps = 1e-12): Tensor {
  expectRank("normalize", x, [2]);
  const [rows, cols] = x.shape;
  const backend = x.backend;
  const out = Tensor.empty(backend, x.shape);
  const norms = Tensor.empty(backend, [rows]);
  backend.l2NormalizeForward(
    x.buffer,
    out.buffer,
    norms.buffer,
    rows,
    cols,
    eps,
  );
  return recordGrad(out, "normalize", [x], (g) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.l2NormalizeBackward(
      out.buffer,
      norms.buffer,
      g.buffer,
      gx.buffer,
      rows,
      cols,
      eps,
    );
    return [gx];
  });
}
