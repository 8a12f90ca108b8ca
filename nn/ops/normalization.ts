/**
 * Batch normalisation and row-wise L2 normalisation.
 *
 * @module
 */

import type { BatchNormDesc } from "../backend.ts";
import { formatShape, needsGrad, recordGrad, Tensor } from "../tensor.ts";
import { reluGrad, reluInPlace } from "./activation.ts";
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
  /**
   * Then a ReLU, as `relu(batchNorm(x))` computes it: in training mode in
   * one op, which needs neither the normalised tensor nor a pass of its own.
   */
  relu?: boolean;
}

/**
 * PyTorch's `F.batch_norm` for inputs [n, c], [n, c, l] or [n, c, h, w]. In
 * training mode the output uses the batch's biased variance and the running
 * averages move by `momentum` towards the batch mean and unbiased variance.
 */
export function batchNorm(x: Tensor, opts: BatchNormOptions): Tensor {
  if (opts.relu && !opts.training) {
    return reluInPlace(batchNorm(x, { ...opts, relu: false }));
  }
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
    const relu = opts.relu ?? false;
    // Where the backend can take the ReLU's gradient inside the batch
    // norm's backward, the mask it needs for that, kept for the backward.
    const reserveLength = relu && needsGrad(inputs)
      ? backend.batchNormReluReserve?.(x.buffer, d) ?? 0
      : 0;
    const reserve = reserveLength > 0
      ? Tensor.empty(backend, [reserveLength])
      : null;
    backend.batchNormForwardTraining({
      x: x.buffer,
      y: out.buffer,
      scale: gammaBuf,
      bias: betaBuf,
      runningMean: runningMean?.buffer ?? null,
      runningVar: runningVar?.buffer ?? null,
      saveMean: saveMean.buffer,
      saveInvStd: saveInvStd.buffer,
      desc: d,
      relu,
      reserve: reserve?.buffer ?? null,
    });
    // The input and the batch statistics: the output is not needed (it may
    // be overwritten by an in-place ReLU), nor a normalised copy. With the
    // ReLU, its output: where it is positive is the ReLU's gradient; and
    // the reserve, where the backend keeps that as a mask.
    const saved = [
      x,
      saveMean,
      saveInvStd,
      ...(weight ? [weight] : []),
      ...(relu ? [out] : []),
      ...(reserve ? [reserve] : []),
    ];
    return recordGrad(
      out,
      relu ? "batchNormRelu" : "batchNorm",
      inputs,
      saved,
      (g, [sx, sm, si, ...rest]) => {
        const sw = weight ? rest[0] : null;
        const sy = relu ? rest[weight ? 1 : 0] : null;
        const sr = reserve ? rest.at(-1)! : null;
        // Through the ReLU first, g where the output is positive, unless
        // the backend does that in the batch norm's pass.
        const dy = sy && !sr ? reluGrad(g, sy) : g;
        const gx = Tensor.empty(backend, x.shape);
        const gw = weight?.requiresGrad ? Tensor.empty(backend, [c]) : null;
        const gb = bias?.requiresGrad ? Tensor.empty(backend, [c]) : null;
        backend.batchNormBackward({
          x: sx.buffer,
          dy: dy.buffer,
          dx: gx.buffer,
          scale: sw?.buffer ?? null,
          dScale: gw?.buffer ?? null,
          dBias: gb?.buffer ?? null,
          saveMean: sm.buffer,
          saveInvStd: si.buffer,
          desc: d,
          relu: sy && sr ? { y: sy.buffer, reserve: sr.buffer } : undefined,
        });
        if (dy !== g) dy.dispose();
        return withParamGrads(gx, weight, gw, bias, gb);
      },
    );
  }

  if (!runningMean || !runningVar) {
    throw new Error("batchNorm: eval mode needs runningMean and runningVar");
  }
  backend.batchNormForwardInference({
    x: x.buffer,
    y: out.buffer,
    scale: gammaBuf,
    bias: betaBuf,
    estimatedMean: runningMean.buffer,
    estimatedVariance: runningVar.buffer,
    desc: d,
  });
  // The running statistics as they are now, and the input only when the
  // weight's gradient needs it.
  const evalSaved = [
    runningMean,
    runningVar,
    ...(weight ? [weight] : []),
    ...(weight?.requiresGrad ? [x] : []),
  ];
  return recordGrad(out, "batchNorm", inputs, evalSaved, (g, saved) => {
    const [rm, rv, sw, sx] = saved;
    // With fixed statistics the op is affine per channel:
    // dx = g * gamma * invStd, dgamma = sum(g * xhat), dbeta = sum(g).
    const invStd = Tensor.empty(backend, [c]);
    backend.scaleShift({
      x: rv.buffer,
      y: invStd.buffer,
      length: c,
      scale: 1,
      shift: d.eps,
    });
    backend.unary({
      op: "rsqrt",
      x: invStd.buffer,
      y: invStd.buffer,
      length: c,
    });
    if (weight) {
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: invStd.buffer,
        alpha2: 1,
        b: sw.buffer,
        bShape: [1, 1, c],
        beta: 0,
        c: invStd.buffer,
        shape: [1, 1, c],
      });
    }
    const gx = Tensor.empty(backend, x.shape);
    backend.opTensor({
      op: "mul",
      alpha1: 1,
      a: g.buffer,
      alpha2: 1,
      b: invStd.buffer,
      bShape: perChannel,
      beta: 0,
      c: gx.buffer,
      shape: full,
    });
    invStd.dispose();
    let gw: Tensor | null = null;
    if (weight?.requiresGrad) {
      const xhat = Tensor.empty(backend, x.shape);
      backend.batchNormForwardInference({
        x: sx.buffer,
        y: xhat.buffer,
        scale: null,
        bias: null,
        estimatedMean: rm.buffer,
        estimatedVariance: rv.buffer,
        desc: d,
      });
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: xhat.buffer,
        alpha2: 1,
        b: g.buffer,
        bShape: full,
        beta: 0,
        c: xhat.buffer,
        shape: full,
      });
      gw = Tensor.empty(backend, [c]);
      backend.reduceSum({
        alpha: 1,
        x: xhat.buffer,
        shape: full,
        beta: 0,
        y: gw.buffer,
        yShape: perChannel,
      });
      xhat.dispose();
    }
    let gb: Tensor | null = null;
    if (bias?.requiresGrad) {
      gb = Tensor.empty(backend, [c]);
      backend.reduceSum({
        alpha: 1,
        x: g.buffer,
        shape: full,
        beta: 0,
        y: gb.buffer,
        yShape: perChannel,
      });
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
  backend.l2NormalizeForward({
    x: x.buffer,
    y: out.buffer,
    norms: norms.buffer,
    rows,
    cols,
    eps,
  });
  return recordGrad(out, "normalize", [x], [out, norms], (g, [y, sn]) => {
    const gx = Tensor.empty(backend, x.shape);
    backend.l2NormalizeBackward({
      y: y.buffer,
      norms: sn.buffer,
      dy: g.buffer,
      dx: gx.buffer,
      rows,
      cols,
      eps,
    });
    return [gx];
  });
}
