/**
 * One MEC training step: both views through student and teacher, the
 * symmetric loss, backward, SGD with the iteration's learning rate, and the
 * teacher's EMA with the iteration's momentum. Every intermediate is freed.
 *
 * @module
 */

import type { SGD } from "../nn/optim.ts";
import { add, mulScalar } from "../nn/ops/elementwise.ts";
import { NonFiniteLossError } from "../nn/ops/loss.ts";
import { envProfiler, formatProfile } from "../nn/profile.ts";
import { type BackwardOptions, scope, Tensor } from "../nn/tensor.ts";
import { mecLoss } from "./loss.ts";
import type { MEC } from "./model.ts";

export interface StepSettings {
  /** Global iteration, for error messages. */
  iteration: number;
  lr: number;
  teacherMomentum: number;
  lamdaInv: number;
  /** mu = (m + d) / 2, which turns the loss into a coding length. */
  mu: number;
  order?: number;
  form?: "batch" | "feature";
}

/**
 * What a data-parallel step needs from the ranks (dist/ implements it):
 * the loss runs over the gathered global batch, as in the official code,
 * and the gradients are averaged over ranks before the optimiser step.
 * The model's batch norms are synchronised separately (SyncBN).
 */
export interface StepParallel {
  /** Number of ranks; the global batch is the local one times this. */
  readonly worldSize: number;
  /** Every rank's rows in rank order, the gradient flowing back. */
  gather(x: Tensor): Tensor;
  /** Checks that every rank's batch has `rows` samples (SyncBN needs it). */
  checkBatch(rows: number): void;
  /** Passed to backward: starts averaging gradients while it runs. */
  backwardOptions(): BackwardOptions;
  /** Completes the averaging; every gradient then holds the mean. */
  finishGradients(): void;
}

export interface StepResult {
  /** The minimised loss: -mec * lamdaInv. */
  loss: number;
  /** The per-sample coding length: mec * mu. */
  mec: number;
}

/**
 * One optimisation step on a pair of views (each [m, 3, h, w]). Reads the
 * device once, after the backward pass. Throws, before touching any weight,
 * when the loss is NaN or infinite. With `MEC_PROFILE` set, prints where the
 * step's time and memory went to stderr (see nn/profile.ts). With
 * `parallel`, the views are this rank's share and m is the global batch:
 * every rank computes the same loss and, after averaging, the same update.
 */
export function mecStep(
  model: MEC,
  optimizer: SGD,
  x1: Tensor,
  x2: Tensor,
  s: StepSettings,
  parallel?: StepParallel,
): StepResult {
  const profiler = envProfiler();
  if (profiler === null) return step(model, optimizer, x1, x2, s, parallel);
  profiler.begin();
  const result = step(model, optimizer, x1, x2, s, parallel);
  console.error(
    formatProfile(profiler.end(), `MEC step, iteration ${s.iteration}`),
  );
  return result;
}

function step(
  model: MEC,
  optimizer: SGD,
  x1: Tensor,
  x2: Tensor,
  s: StepSettings,
  parallel?: StepParallel,
): StepResult {
  const result = scope(() => {
    optimizer.lr = s.lr;
    optimizer.zeroGrad();
    parallel?.checkBatch(x1.shape[0]);
    const out = model.forward(x1, x2);
    const views = [out.z1, out.z2, out.p1, out.p2];
    const [z1, z2, p1, p2] = parallel === undefined
      ? views
      : views.map((t) => parallel.gather(t));
    const m = x1.shape[0] * (parallel?.worldSize ?? 1);
    const opts = {
      lamdaInv: s.lamdaInv,
      order: s.order ?? 4,
      form: s.form ?? "batch",
    };
    // mec = (L(p1, z2) + L(p2, z1)) * 0.5 / m; loss = -mec * lamdaInv.
    const mec = mulScalar(
      add(mecLoss(p1, z2, opts), mecLoss(p2, z1, opts)),
      0.5 / m,
    );
    const loss = mulScalar(mec, -s.lamdaInv);
    loss.backward(undefined, parallel?.backwardOptions());
    parallel?.finishGradients();
    // The step's one read from the device, after backward so that it does
    // not stall the queue in between. A non-finite loss stops here, before
    // the optimizer and the teacher touch any weight.
    const [value, mecValue] = readScalars([loss, mec]);
    if (!Number.isFinite(value)) {
      throw new NonFiniteLossError(
        "the MEC loss",
        value,
        `at iteration ${s.iteration}`,
      );
    }
    optimizer.step();
    model.updateTeacher(s.teacherMomentum);
    return { loss: value, mec: mecValue * s.mu };
  });
  // The cache keeps what this step reused and gives back the rest; the CPU
  // backend's thread count follows the load.
  x1.backend.endStep?.();
  return result;
}

/** The values of one-element tensors, gathered on the device, read at once. */
function readScalars(scalars: Tensor[]): number[] {
  const backend = scalars[0].backend;
  const packed = Tensor.empty(backend, [scalars.length]);
  scalars.forEach((t, i) =>
    backend.copy({
      src: t.buffer,
      srcOffset: 0,
      dst: packed.buffer,
      dstOffset: i,
      length: 1,
    })
  );
  return Array.from(packed.toArray());
}
