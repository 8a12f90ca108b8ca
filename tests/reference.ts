/**
 * Plain float64 reference implementations: straight loops, no tricks. They
 * are the specification that the backend's kernels are tested against.
 */

export type F64 = Float64Array;

export function matmulRef(
  a: F64,
  aShape: number[],
  b: F64,
  bShape: number[],
  transA = false,
  transB = false,
): F64 {
  const [m, k] = transA ? [aShape[1], aShape[0]] : aShape;
  const n = transB ? bShape[0] : bShape[1];
  const at = (i: number, p: number) =>
    transA ? a[p * aShape[1] + i] : a[i * aShape[1] + p];
  const bt = (p: number, j: number) =>
    transB ? b[j * bShape[1] + p] : b[p * bShape[1] + j];
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += at(i, p) * bt(p, j);
      out[i * n + j] = s;
    }
  }
  return out;
}

export interface ConvRefDesc {
  n: number;
  c: number;
  h: number;
  w: number;
  k: number;
  r: number;
  s: number;
  stride: [number, number];
  pad: [number, number];
}

export function conv2dRef(
  x: F64,
  w: F64,
  bias: F64 | null,
  d: ConvRefDesc,
): F64 {
  const oh = Math.floor((d.h + 2 * d.pad[0] - d.r) / d.stride[0]) + 1;
  const ow = Math.floor((d.w + 2 * d.pad[1] - d.s) / d.stride[1]) + 1;
  const out = new Float64Array(d.n * d.k * oh * ow);
  for (let n = 0; n < d.n; n++) {
    for (let k = 0; k < d.k; k++) {
      for (let i = 0; i < oh; i++) {
        for (let j = 0; j < ow; j++) {
          let s = bias ? bias[k] : 0;
          for (let c = 0; c < d.c; c++) {
            for (let r = 0; r < d.r; r++) {
              for (let q = 0; q < d.s; q++) {
                const y = i * d.stride[0] + r - d.pad[0];
                const xx = j * d.stride[1] + q - d.pad[1];
                if (y < 0 || y >= d.h || xx < 0 || xx >= d.w) continue;
                s += x[((n * d.c + c) * d.h + y) * d.w + xx] *
                  w[((k * d.c + c) * d.r + r) * d.s + q];
              }
            }
          }
          out[((n * d.k + k) * oh + i) * ow + j] = s;
        }
      }
    }
  }
  return out;
}

/** Batch norm over [n, c, spatial]; returns y and the batch mean / biased var. */
export function batchNormRef(
  x: F64,
  shape: number[],
  gamma: F64 | null,
  beta: F64 | null,
  eps: number,
  stats: { mean: F64; variance: F64 } | null,
): { y: F64; mean: F64; variance: F64 } {
  const [n, c] = shape;
  const s = x.length / (n * c);
  const mean = new Float64Array(c);
  const variance = new Float64Array(c);
  for (let ch = 0; ch < c; ch++) {
    if (stats) {
      mean[ch] = stats.mean[ch];
      variance[ch] = stats.variance[ch];
      continue;
    }
    let sum = 0;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < s; j++) sum += x[(i * c + ch) * s + j];
    }
    mean[ch] = sum / (n * s);
    let sq = 0;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < s; j++) {
        sq += (x[(i * c + ch) * s + j] - mean[ch]) ** 2;
      }
    }
    variance[ch] = sq / (n * s);
  }
  const y = new Float64Array(x.length);
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      for (let j = 0; j < s; j++) {
        const at = (i * c + ch) * s + j;
        const xhat = (x[at] - mean[ch]) / Math.sqrt(variance[ch] + eps);
        y[at] = xhat * (gamma ? gamma[ch] : 1) + (beta ? beta[ch] : 0);
      }
    }
  }
  return { y, mean, variance };
}

export function maxPoolRef(
  x: F64,
  shape: number[],
  k: [number, number],
  stride: [number, number],
  pad: [number, number],
): F64 {
  const [n, c, h, w] = shape;
  const oh = Math.floor((h + 2 * pad[0] - k[0]) / stride[0]) + 1;
  const ow = Math.floor((w + 2 * pad[1] - k[1]) / stride[1]) + 1;
  const out = new Float64Array(n * c * oh * ow);
  for (let p = 0; p < n * c; p++) {
    for (let i = 0; i < oh; i++) {
      for (let j = 0; j < ow; j++) {
        let best = -Infinity;
        for (let r = 0; r < k[0]; r++) {
          for (let q = 0; q < k[1]; q++) {
            const y = i * stride[0] + r - pad[0];
            const xx = j * stride[1] + q - pad[1];
            if (y >= 0 && y < h && xx >= 0 && xx < w) {
              best = Math.max(best, x[(p * h + y) * w + xx]);
            }
          }
        }
        out[(p * oh + i) * ow + j] = best;
      }
    }
  }
  return out;
}

export function normalizeRef(
  x: F64,
  rows: number,
  cols: number,
  eps: number,
): F64 {
  const out = new Float64Array(x.length);
  for (let i = 0; i < rows; i++) {
    let sq = 0;
    for (let j = 0; j < cols; j++) sq += x[i * cols + j] ** 2;
    const d = Math.max(Math.sqrt(sq), eps);
    for (let j = 0; j < cols; j++) out[i * cols + j] = x[i * cols + j] / d;
  }
  return out;
}

export function crossEntropyRef(
  x: F64,
  rows: number,
  cols: number,
  labels: number[],
): F64 {
  const out = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let max = -Infinity;
    for (let j = 0; j < cols; j++) max = Math.max(max, x[i * cols + j]);
    let sum = 0;
    for (let j = 0; j < cols; j++) sum += Math.exp(x[i * cols + j] - max);
    out[i] = Math.log(sum) + max - x[i * cols + labels[i]];
  }
  return out;
}
