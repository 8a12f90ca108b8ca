/**
 * SyncBN: batch normalisation whose training statistics cover the batches
 * of every rank, as PyTorch's `SyncBatchNorm` (which MEC's official code
 * applies to the whole model with `convert_sync_batchnorm`).
 *
 * Forward: each rank's per-channel mean and biased variance (from the
 * backend's own batch-norm kernel) become the sums of x and x^2, one
 * all-reduce adds them over ranks, and the output is normalised with the
 * global mean and biased variance; the running averages move towards the
 * global mean and unbiased variance, so they stay the same on every rank.
 * Backward: the local sums of dy and dy * xhat are all-reduced, and dx uses
 * the global ones; the gradients of gamma and beta stay local, as PyTorch's
 * do, and are averaged with the others afterwards.
 *
 * Every rank's batch must have the same number of samples: the global count
 * is the local one times the world size (the training step checks it).
 *
 * @module
 */

import type { Backend, BatchNormDesc, Dims3 } from "../nn/backend.ts";
import { BatchNorm1d, BatchNorm2d, type BatchNormSync } from "../nn/layers.ts";
import type { Module } from "../nn/module.ts";
import type { BatchNormOptions } from "../nn/ops/normalization.ts";
import { expectRank } from "../nn/ops/util.ts";
import { formatShape, recordGrad, Tensor } from "../nn/tensor.ts";
import type { Communicator } from "./communicator.ts";

/** The batch-norm op of every layer that {@linkcode convertSyncBatchNorm} converts. */
export class SyncBatchNorm implements BatchNormSync {
  constructor(readonly comm: Communicator) {}

  batchNorm(x: Tensor, opts: BatchNormOptions): Tensor {
    return syncBatchNorm(this.comm, x, opts);
  }
}

/**
 * Makes every BatchNorm1d and BatchNorm2d of a module (its children too)
 * compute training statistics over all ranks. Returns how many it converted.
 */
export function convertSyncBatchNorm(
  module: Module,
  comm: Communicator,
): number {
  const sync = new SyncBatchNorm(comm);
  let count = 0;
  for (const [, m] of module.namedModules()) {
    if (m instanceof BatchNorm1d || m instanceof BatchNorm2d) {
      m.sync = sync;
      count++;
    }
  }
  return count;
}

/** Writes `src` into `dst` at `offset` (whole source). */
function place(backend: Backend, src: Tensor, dst: Tensor, offset: number) {
  backend.copy({
    src: src.buffer,
    srcOffset: 0,
    dst: dst.buffer,
    dstOffset: offset,
    length: src.size,
  });
}

/** `length` elements of `src` from `offset` into a new tensor. */
function slice(
  backend: Backend,
  src: Tensor,
  offset: number,
  length: number,
): Tensor {
  const out = Tensor.empty(backend, [length]);
  backend.copy({
    src: src.buffer,
    srcOffset: offset,
    dst: out.buffer,
    dstOffset: 0,
    length,
  });
  return out;
}

/**
 * Training-mode batch norm with statistics over every rank's batch. The
 * options are those of `batchNorm` (`training` must be true).
 */
export function syncBatchNorm(
  comm: Communicator,
  x: Tensor,
  opts: BatchNormOptions,
): Tensor {
  expectRank("syncBatchNorm", x, [2, 3, 4]);
  if (!opts.training) {
    throw new Error("syncBatchNorm: only training mode is synchronised");
  }
  const { weight = null, bias = null, runningMean = null, runningVar = null } =
    opts;
  const [n, c] = x.shape;
  const spatial = x.size / (n * c);
  const local = n * spatial;
  const total = local * comm.size;
  if (total < 2) {
    throw new RangeError(
      `syncBatchNorm: expected more than 1 value per channel when training, got input ${
        formatShape(x.shape)
      } on ${comm.size} rank(s)`,
    );
  }
  const backend = x.backend;
  const eps = opts.eps ?? 1e-5;
  const momentum = opts.momentum ?? 0.1;
  const desc: BatchNormDesc = { n, c, spatial, eps, momentum };
  const full: Dims3 = [n, c, spatial];
  const perChannel: Dims3 = [1, c, 1];
  const out = Tensor.empty(backend, x.shape);

  // This rank's mean and 1/sqrt(var + eps) from the backend's own kernel
  // (its output is overwritten below).
  const localMean = Tensor.empty(backend, [c]);
  const localInv = Tensor.empty(backend, [c]);
  backend.batchNormForwardTraining({
    x: x.buffer,
    y: out.buffer,
    scale: null,
    bias: null,
    runningMean: null,
    runningVar: null,
    saveMean: localMean.buffer,
    saveInvStd: localInv.buffer,
    desc,
  });
  // E[x^2] = var + mean^2, var = 1 / inv^2 - eps (rsqrt(inv^4) = 1 / inv^2).
  const ex2 = Tensor.empty(backend, [c]);
  backend.unary({ op: "square", x: localInv.buffer, y: ex2.buffer, length: c });
  backend.unary({ op: "square", x: ex2.buffer, y: ex2.buffer, length: c });
  backend.unary({ op: "rsqrt", x: ex2.buffer, y: ex2.buffer, length: c });
  const meanSq = Tensor.empty(backend, [c]);
  backend.unary({
    op: "square",
    x: localMean.buffer,
    y: meanSq.buffer,
    length: c,
  });
  backend.opTensor({
    op: "add",
    alpha1: 1,
    a: ex2.buffer,
    alpha2: 1,
    b: meanSq.buffer,
    bShape: [1, 1, c],
    beta: 0,
    c: ex2.buffer,
    shape: [1, 1, c],
  });
  backend.scaleShift({
    x: ex2.buffer,
    y: ex2.buffer,
    length: c,
    scale: 1,
    shift: -eps,
  });
  // [sum of x | sum of x^2] over this rank, then over all ranks.
  const sums = Tensor.empty(backend, [2 * c]);
  place(backend, localMean, sums, 0);
  place(backend, ex2, sums, c);
  backend.scaleShift({
    x: sums.buffer,
    y: sums.buffer,
    length: 2 * c,
    scale: local,
    shift: 0,
  });
  localMean.dispose();
  localInv.dispose();
  comm.allReduce(sums.buffer, 0, 2 * c);

  const mean = slice(backend, sums, 0, c);
  backend.scaleShift({
    x: mean.buffer,
    y: mean.buffer,
    length: c,
    scale: 1 / total,
    shift: 0,
  });
  // Biased variance E[x^2] - mean^2, clamped at 0 against rounding.
  const variance = slice(backend, sums, c, c);
  backend.unary({ op: "square", x: mean.buffer, y: meanSq.buffer, length: c });
  backend.opTensor({
    op: "add",
    alpha1: 1 / total,
    a: variance.buffer,
    alpha2: -1,
    b: meanSq.buffer,
    bShape: [1, 1, c],
    beta: 0,
    c: variance.buffer,
    shape: [1, 1, c],
  });
  backend.opTensor({
    op: "max",
    alpha1: 1,
    a: variance.buffer,
    alpha2: 0,
    b: variance.buffer,
    bShape: [1, 1, c],
    beta: 0,
    c: variance.buffer,
    shape: [1, 1, c],
  });
  sums.dispose();
  meanSq.dispose();
  ex2.dispose();

  if (runningMean && runningVar) {
    backend.axpby({
      n: c,
      alpha: momentum,
      x: mean.buffer,
      beta: 1 - momentum,
      y: runningMean.buffer,
    });
    // The running variance is unbiased over the global count, as PyTorch's.
    backend.axpby({
      n: c,
      alpha: momentum * total / (total - 1),
      x: variance.buffer,
      beta: 1 - momentum,
      y: runningVar.buffer,
    });
  }
  backend.batchNormForwardInference({
    x: x.buffer,
    y: out.buffer,
    scale: weight?.buffer ?? null,
    bias: bias?.buffer ?? null,
    estimatedMean: mean.buffer,
    estimatedVariance: variance.buffer,
    desc,
  });
  const invStd = variance;
  backend.scaleShift({
    x: invStd.buffer,
    y: invStd.buffer,
    length: c,
    scale: 1,
    shift: eps,
  });
  backend.unary({ op: "rsqrt", x: invStd.buffer, y: invStd.buffer, length: c });

  const inputs = [x, weight, bias].filter((t): t is Tensor => t !== null);
  // The input, the global statistics and gamma: backward reads these views
  // (the output may be overwritten by an in-place ReLU).
  const saved = [x, mean, invStd, ...(weight ? [weight] : [])];
  return recordGrad(
    out,
    "syncBatchNorm",
    inputs,
    saved,
    (g, [sx, sm, si, sw]) => {
      // Local sum(dy * xhat) and sum(dy) from the backend's kernel, given the
      // global statistics (its dx is overwritten below). With a scale of
      // ones, so that every backend computes both (oneDNN computes no scale
      // gradient for a norm without a scale); neither depends on gamma.
      const ones = Tensor.empty(backend, [c]);
      backend.fill({ y: ones.buffer, value: 1 });
      const gx = Tensor.empty(backend, x.shape);
      const dScale = Tensor.empty(backend, [c]);
      const dBias = Tensor.empty(backend, [c]);
      backend.batchNormBackward({
        x: sx.buffer,
        dy: g.buffer,
        dx: gx.buffer,
        scale: ones.buffer,
        dScale: dScale.buffer,
        dBias: dBias.buffer,
        saveMean: sm.buffer,
        saveInvStd: si.buffer,
        desc,
      });
      ones.dispose();
      const reduced = Tensor.empty(backend, [2 * c]);
      place(backend, dScale, reduced, 0);
      place(backend, dBias, reduced, c);
      comm.allReduce(reduced.buffer, 0, 2 * c);
      const sumDyXhat = slice(backend, reduced, 0, c);
      const sumDy = slice(backend, reduced, c, c);
      reduced.dispose();

      // dx = k * (dy - sumDy / N - xhat * sumDyXhat / N), k = gamma * invStd,
      // xhat = (x - mean) * invStd, written as k * dy - coef * x + shift.
      const k = Tensor.empty(backend, [c]);
      if (sw) {
        backend.opTensor({
          op: "mul",
          alpha1: 1,
          a: si.buffer,
          alpha2: 1,
          b: sw.buffer,
          bShape: [1, 1, c],
          beta: 0,
          c: k.buffer,
          shape: [1, 1, c],
        });
      } else {
        place(backend, si, k, 0);
      }
      const coef = Tensor.empty(backend, [c]);
      backend.opTensor({
        op: "mul",
        alpha1: 1 / total,
        a: sumDyXhat.buffer,
        alpha2: 1,
        b: si.buffer,
        bShape: [1, 1, c],
        beta: 0,
        c: coef.buffer,
        shape: [1, 1, c],
      });
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: coef.buffer,
        alpha2: 1,
        b: k.buffer,
        bShape: [1, 1, c],
        beta: 0,
        c: coef.buffer,
        shape: [1, 1, c],
      });
      // shift = coef * mean - k * sumDy / N.
      const shift = Tensor.empty(backend, [c]);
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: coef.buffer,
        alpha2: 1,
        b: sm.buffer,
        bShape: [1, 1, c],
        beta: 0,
        c: shift.buffer,
        shape: [1, 1, c],
      });
      backend.opTensor({
        op: "mul",
        alpha1: -1 / total,
        a: k.buffer,
        alpha2: 1,
        b: sumDy.buffer,
        bShape: [1, 1, c],
        beta: 1,
        c: shift.buffer,
        shape: [1, 1, c],
      });
      backend.opTensor({
        op: "mul",
        alpha1: 1,
        a: g.buffer,
        alpha2: 1,
        b: k.buffer,
        bShape: perChannel,
        beta: 0,
        c: gx.buffer,
        shape: full,
      });
      backend.opTensor({
        op: "mul",
        alpha1: -1,
        a: sx.buffer,
        alpha2: 1,
        b: coef.buffer,
        bShape: perChannel,
        beta: 1,
        c: gx.buffer,
        shape: full,
      });
      backend.addTensor({
        alpha: 1,
        a: shift.buffer,
        aShape: perChannel,
        beta: 1,
        c: gx.buffer,
        shape: full,
      });
      for (const t of [sumDyXhat, sumDy, k, coef, shift]) t.dispose();
      const grads: (Tensor | null)[] = [gx];
      if (weight) {
        grads.push(weight.requiresGrad ? dScale : null);
      }
      if (bias) grads.push(bias.requiresGrad ? dBias : null);
      if (!weight?.requiresGrad) dScale.dispose();
      if (!bias?.requiresGrad) dBias.dispose();
      return grads;
    },
  );
}
