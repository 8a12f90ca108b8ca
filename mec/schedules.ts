/**
 * MEC's schedules as pure functions of the global iteration, matching the
 * official numpy code point by point: a linear warm-up made with
 * `np.linspace(start, base, warmupIters)` (end point included), then a
 * half-cosine from `base` to `final` over the remaining iterations.
 *
 * @module
 */

export interface ScheduleShape {
  epochs: number;
  itersPerEpoch: number;
  warmupEpochs?: number;
}

function check(
  at: number,
  s: ScheduleShape,
): { total: number; warmup: number } {
  const total = s.epochs * s.itersPerEpoch;
  const warmup = (s.warmupEpochs ?? 0) * s.itersPerEpoch;
  if (!Number.isInteger(at) || at < 0 || at >= total) {
    throw new RangeError(
      `schedule: iteration ${at} is outside 0..${total - 1}`,
    );
  }
  if (warmup > total) {
    throw new RangeError(
      `schedule: ${warmup} warm-up iterations exceed the ${total} in all`,
    );
  }
  return { total, warmup };
}

/** Element i of np.linspace(start, end, count). */
function linspace(
  start: number,
  end: number,
  count: number,
  i: number,
): number {
  return count === 1 ? start : start + (end - start) * (i / (count - 1));
}

/**
 * The official `cosine_scheduler(base, final, epochs, niter, warmup_epochs,
 * start_warmup_value)` at iteration `at`: used for the learning rate
 * (0 -> lr over the warm-up, then cosine to 0) and for the teacher's
 * momentum (0.996 -> 1, no warm-up).
 */
export function cosineSchedule(
  at: number,
  base: number,
  final: number,
  s: ScheduleShape & { startWarmupValue?: number },
): number {
  const { total, warmup } = check(at, s);
  if (at < warmup) return linspace(s.startWarmupValue ?? 0, base, warmup, at);
  const i = at - warmup;
  return final +
    0.5 * (base - final) * (1 + Math.cos((Math.PI * i) / (total - warmup)));
}

/**
 * The official warm-up-then-constant schedule at iteration `at`: linear
 * from `start` to `base` over the warm-up (np.linspace), then `base`.
 */
export function warmupSchedule(
  at: number,
  start: number,
  base: number,
  s: ScheduleShape,
): number {
  const { warmup } = check(at, s);
  return at < warmup ? linspace(start, base, warmup, at) : base;
}

/** The MEC constants for a batch of m samples, output dimension d and eps. */
export interface MecConstants {
  /** eps / d, the per-dimension squared error bound. */
  epsD: number;
  /** lambda = 1 / (m * epsD). */
  lamda: number;
  /** mu = (m + d) / 2, which turns the loss into a coding length. */
  mu: number;
}

export function mecConstants(m: number, d: number, eps = 64): MecConstants {
  const epsD = eps / d;
  return { epsD, lamda: 1 / (m * epsD), mu: (m + d) / 2 };
}

/**
 * lamdaInv at iteration `at`: from 8 / lambda down to 1 / lambda over the
 * warm-up epochs (10 in the paper), then 1 / lambda.
 */
export function lamdaInvSchedule(
  at: number,
  lamda: number,
  s: ScheduleShape,
): number {
  return warmupSchedule(at, 8 / lamda, 1 / lamda, s);
}
