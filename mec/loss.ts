/**
 * The Maximum Entropy Coding objective (Liu et al., NeurIPS 2022).
 *
 * Eqn. 2 of the paper: the coding length of the views is
 * L = -mu log det(I + lambda Z1^T Z2); with C = p z^T / lamdaInv for
 * L2-normalised rows p, z (m x d), log det(I + C) = tr log(I + C), and the
 * Taylor series tr(sum_{k=1..n} (-1)^(k+1) C^k / k) approximates it
 * (Eqn. 6). By Sylvester's identity the d x d matrix p^T z / lamdaInv has
 * the same traces of every power, so the "feature" form is cheaper when the
 * batch is larger than the dimension.
 *
 * @module
 */

import { formatShape, recordGrad, Tensor } from "../nn/tensor.ts";
import { add, mulScalar } from "../nn/ops/elementwise.ts";
import { matmul, trace } from "../nn/ops/linalg.ts";
import { normalize } from "../nn/ops/normalization.ts";

export interface MecLossOptions {
  /** 1 / lambda: C = p z^T / lamdaInv. */
  lamdaInv: number;
  /** Terms of the Taylor series (default 4, the paper's). */
  order?: number;
  /** "batch": the m x m matrix p z^T; "feature": the d x d matrix p^T z. */
  form?: "batch" | "feature";
}

function checkPair(op: string, p: Tensor, z: Tensor): void {
  if (
    p.ndim !== 2 || z.ndim !== 2 || p.shape[0] !== z.shape[0] ||
    p.shape[1] !== z.shape[1]
  ) {
    throw new RangeError(
      `${op}: expected two matrices of the same shape [m, d], got ${
        formatShape(p.shape)
      } and ${formatShape(z.shape)}`,
    );
  }
}

/** C = normalize(p) normalize(z)^T / lamdaInv (batch) or its d x d twin (feature). */
function correlation(
  p: Tensor,
  z: Tensor,
  lamdaInv: number,
  form: "batch" | "feature",
): Tensor {
  const pn = normalize(p);
  const zn = normalize(z);
  const c = form === "batch"
    ? matmul(pn, zn, { transB: true })
    : matmul(pn, zn, { transA: true });
  return mulScalar(c, 1 / lamdaInv);
}

/**
 * tr(sum_{k=1..order} (-1)^(k+1) C^k / k) for C built from the rows of p and
 * z (normalised inside), differentiable with respect to both. A 0-D tensor.
 */
export function mecLoss(p: Tensor, z: Tensor, opts: MecLossOptions): Tensor {
  checkPair("mecLoss", p, z);
  const order = opts.order ?? 4;
  if (!Number.isInteger(order) || order < 1) {
    throw new RangeError(
      `mecLoss: order must be a positive integer, got ${order}`,
    );
  }
  if (!(opts.lamdaInv > 0)) {
    throw new RangeError(
      `mecLoss: lamdaInv must be positive, got ${opts.lamdaInv}`,
    );
  }
  const c = correlation(p, z, opts.lamdaInv, opts.form ?? "batch");
  let power = c;
  let total = trace(c);
  for (let k = 2; k <= order; k++) {
    power = matmul(power, c);
    total = add(total, mulScalar(trace(power), (k % 2 === 0 ? -1 : 1) / k));
  }
  return total;
}

/**
 * The exact log det(I + C) of the same C (batch form by default), by LU
 * factorisation with partial pivoting in float64 on the host: for checking
 * the series, and as an untruncated objective on small problems (it costs
 * O(m^3) in TypeScript). Differentiable: d log det(I + C) = (I + C)^-T.
 */
export function logDetLoss(
  p: Tensor,
  z: Tensor,
  opts: Omit<MecLossOptions, "order">,
): Tensor {
  checkPair("logDetLoss", p, z);
  if (!(opts.lamdaInv > 0)) {
    throw new RangeError(
      `logDetLoss: lamdaInv must be positive, got ${opts.lamdaInv}`,
    );
  }
  return logDetOnePlus(correlation(p, z, opts.lamdaInv, opts.form ?? "batch"));
}

/** log det(I + c) for a square c, with its gradient (I + c)^-T. */
function logDetOnePlus(c: Tensor): Tensor {
  const n = c.shape[0];
  const a = Float64Array.from(c.toArray());
  for (let i = 0; i < n; i++) a[i * n + i] += 1;
  const lu = luFactor(a, n);
  // det = sign(P) * prod(diag U): sum the logs of |U_ii|, track the sign.
  let logDet = 0;
  let sign = lu.sign;
  for (let i = 0; i < n; i++) {
    const d = lu.a[i * n + i];
    logDet += Math.log(Math.abs(d));
    if (d < 0) sign = -sign;
  }
  if (sign < 0) {
    throw new RangeError(
      "logDetLoss: det(I + C) is not positive, so its logarithm is undefined (lamdaInv too small?)",
    );
  }
  const out = Tensor.empty(c.backend, []);
  out.backend.write(out.buffer, Float32Array.of(logDet));
  return recordGrad(out, "logDetLoss", [c], (g) => {
    const inv = luInverseTransposed(lu, n);
    const scale = g.item();
    const gc = Tensor.empty(c.backend, c.shape);
    gc.backend.write(gc.buffer, Float32Array.from(inv, (v) => v * scale));
    return [gc];
  });
}

interface LU {
  /** L (unit diagonal, below) and U (on and above) packed, row-major. */
  a: Float64Array;
  /** Row i of the factors is row perm[i] of the input. */
  perm: Int32Array;
  /** Sign of the permutation. */
  sign: number;
}

function luFactor(a: Float64Array, n: number): LU {
  const perm = new Int32Array(n).map((_, i) => i);
  let sign = 1;
  for (let k = 0; k < n; k++) {
    let pivot = k;
    for (let i = k + 1; i < n; i++) {
      if (Math.abs(a[i * n + k]) > Math.abs(a[pivot * n + k])) pivot = i;
    }
    if (a[pivot * n + k] === 0) {
      throw new RangeError("logDetLoss: I + C is singular");
    }
    if (pivot !== k) {
      for (let j = 0; j < n; j++) {
        const t = a[k * n + j];
        a[k * n + j] = a[pivot * n + j];
        a[pivot * n + j] = t;
      }
      const t = perm[k];
      perm[k] = perm[pivot];
      perm[pivot] = t;
      sign = -sign;
    }
    const d = a[k * n + k];
    for (let i = k + 1; i < n; i++) {
      const f = (a[i * n + k] /= d);
      if (f === 0) continue;
      for (let j = k + 1; j < n; j++) a[i * n + j] -= f * a[k * n + j];
    }
  }
  return { a, perm, sign };
}

/** (A^-1)^T from A's LU factors: column j of A^-1 solves A x = e_j. */
function luInverseTransposed(lu: LU, n: number): Float64Array {
  const { a, perm } = lu;
  const out = new Float64Array(n * n);
  const x = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    // P A = L U, so A x = e_j becomes L U x = P e_j.
    for (let i = 0; i < n; i++) x[i] = perm[i] === j ? 1 : 0;
    for (let i = 0; i < n; i++) {
      let s = x[i];
      for (let k = 0; k < i; k++) s -= a[i * n + k] * x[k];
      x[i] = s;
    }
    for (let i = n - 1; i >= 0; i--) {
      let s = x[i];
      for (let k = i + 1; k < n; k++) s -= a[i * n + k] * x[k];
      x[i] = s / a[i * n + i];
    }
    // x is column j of the inverse, i.e. row j of its transpose.
    out.set(x, j * n);
  }
  return out;
}
