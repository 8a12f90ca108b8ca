/**
 * Weighted k-nearest-neighbour classification of embeddings: the online
 * monitor of self-supervised training introduced by InstDisc (Wu et al.,
 * 2018) and computed the same way by solo-learn and lightly. Features are
 * L2-normalised, so the similarity is the cosine; each query's k most
 * similar bank samples vote for their labels with weight exp(sim / T); the
 * class with the largest total is the prediction.
 *
 * ```ts
 * import { knnAccuracy, tensor } from "../mod.ts";
 *
 * const bank = tensor([1, 0, 0.9, 0.1, 0, 1, 0.1, 0.9], [4, 2]);
 * const queries = tensor([1, 0.2, 0.2, 1], [2, 2]);
 * const top1 = knnAccuracy(queries, [0, 1], bank, [0, 0, 1, 1], 2, { k: 2 });
 * console.log(top1); // 100
 * ```
 *
 * @module
 */

import { matmul } from "../nn/ops/linalg.ts";
import { normalize } from "../nn/ops/normalization.ts";
import { noGrad, scope, Tensor } from "../nn/tensor.ts";

/** The monitor's settings; the defaults are solo-learn's and lightly's. */
export interface KnnOptions {
  /** Neighbours that vote (default 200; fewer when the bank is smaller). */
  k?: number;
  /** Temperature T of the vote weights exp(sim / T) (default 0.1). */
  temperature?: number;
}

/** k = 200 and T = 0.1, as InstDisc, solo-learn and lightly use. */
export const KNN_DEFAULTS: Required<KnnOptions> = { k: 200, temperature: 0.1 };

/**
 * Rows of queries compared with the bank at a time: bounds the similarity
 * block (rows x bank size floats), not the result.
 */
const QUERY_CHUNK = 256;

/**
 * The indices of the k largest values of `row`, largest first; among equal
 * values the lower index comes first, so the choice never depends on order
 * of evaluation. Writes into `out` (length k), returns it.
 */
export function topK(row: ArrayLike<number>, k: number, out: Int32Array) {
  const n = row.length;
  if (k > n || out.length !== k) {
    throw new RangeError(
      `topK: ${k} of ${n} values into an output of ${out.length}`,
    );
  }
  // A min-heap of the k best so far, its root the worst of them: most
  // values are rejected by one comparison with the root.
  const worse = (a: number, b: number) =>
    row[a] < row[b] || (row[a] === row[b] && a > b);
  const heap = out;
  for (let i = 0; i < k; i++) {
    heap[i] = i;
    let c = i;
    while (c > 0) {
      const p = (c - 1) >> 1;
      if (!worse(heap[c], heap[p])) break;
      [heap[c], heap[p]] = [heap[p], heap[c]];
      c = p;
    }
  }
  for (let i = k; i < n; i++) {
    if (!worse(heap[0], i)) continue;
    heap[0] = i;
    siftDown(heap, k, worse);
  }
  // Pop the worst to the end, k times: the array ends sorted best first.
  for (let end = k - 1; end > 0; end--) {
    [heap[0], heap[end]] = [heap[end], heap[0]];
    siftDown(heap, end, worse);
  }
  return out;
}

function siftDown(
  heap: Int32Array,
  size: number,
  worse: (a: number, b: number) => boolean,
): void {
  let p = 0;
  while (true) {
    const l = 2 * p + 1;
    if (l >= size) return;
    const r = l + 1;
    const c = r < size && worse(heap[r], heap[l]) ? r : l;
    if (!worse(heap[c], heap[p])) return;
    [heap[c], heap[p]] = [heap[p], heap[c]];
    p = c;
  }
}

/**
 * The vote of one query: class scores sum(exp(sim_j / T)) over its
 * neighbours j of each class, in float64. Returns the scores (length
 * `classes`).
 */
export function knnVote(
  similarities: ArrayLike<number>,
  labels: ArrayLike<number>,
  classes: number,
  temperature: number,
): Float64Array {
  const scores = new Float64Array(classes);
  for (let j = 0; j < similarities.length; j++) {
    scores[labels[j]] += Math.exp(similarities[j] / temperature);
  }
  return scores;
}

/** The class with the largest score; the lowest such class on a tie. */
export function argmax(scores: ArrayLike<number>): number {
  let best = 0;
  for (let c = 1; c < scores.length; c++) {
    if (scores[c] > scores[best]) best = c;
  }
  return best;
}

/**
 * The weighted kNN prediction of every query: `queries` [q, d] against a
 * memory bank `bank` [n, d] with one label per bank row. Both are
 * L2-normalised here; similarities come from one GEMM per chunk of queries
 * on the tensors' device, the top-k and the vote on the host.
 *
 * @throws {RangeError} on mismatched shapes, labels outside `classes`, or
 * a temperature that is not positive.
 */
export function knnPredict(
  queries: Tensor,
  bank: Tensor,
  bankLabels: ArrayLike<number>,
  classes: number,
  options: KnnOptions = {},
): Int32Array {
  const { temperature } = { ...KNN_DEFAULTS, ...options };
  const [q, d] = queries.shape;
  const [n, bd] = bank.shape;
  if (queries.shape.length !== 2 || bank.shape.length !== 2 || d !== bd) {
    throw new RangeError(
      `knnPredict: queries [${queries.shape}] and bank [${bank.shape}] must be [q, d] and [n, d]`,
    );
  }
  if (bankLabels.length !== n) {
    throw new RangeError(
      `knnPredict: ${bankLabels.length} labels for a bank of ${n}`,
    );
  }
  for (let i = 0; i < n; i++) {
    const l = bankLabels[i];
    if (!Number.isInteger(l) || l < 0 || l >= classes) {
      throw new RangeError(
        `knnPredict: bank label ${l} is not one of ${classes} classes`,
      );
    }
  }
  if (!(temperature > 0)) {
    throw new RangeError(
      `knnPredict: the temperature must be positive, not ${temperature}`,
    );
  }
  const k = Math.min(options.k ?? KNN_DEFAULTS.k, n);
  if (!(k >= 1) || !Number.isInteger(k)) {
    throw new RangeError(`knnPredict: k must be a whole number of at least 1`);
  }
  const predictions = new Int32Array(q);
  const nearest = new Int32Array(k);
  const sims = new Float64Array(k);
  const labels = new Int32Array(k);
  noGrad(() =>
    scope(() => {
      const b = normalize(bank);
      for (let start = 0; start < q; start += QUERY_CHUNK) {
        const rows = Math.min(QUERY_CHUNK, q - start);
        const block = scope(() => {
          const part = Tensor.empty(queries.backend, [rows, d]);
          queries.backend.copy({
            src: queries.buffer,
            srcOffset: start * d,
            dst: part.buffer,
            dstOffset: 0,
            length: rows * d,
          });
          return matmul(normalize(part), b, { transB: true }).toArray();
        });
        for (let r = 0; r < rows; r++) {
          const row = block.subarray(r * n, (r + 1) * n);
          topK(row, k, nearest);
          for (let j = 0; j < k; j++) {
            sims[j] = row[nearest[j]];
            labels[j] = bankLabels[nearest[j]];
          }
          predictions[start + r] = argmax(
            knnVote(sims, labels, classes, temperature),
          );
        }
      }
    })
  );
  return predictions;
}

/**
 * Weighted kNN top-1 accuracy in percent of `queries` with their true
 * labels, against the labelled bank (see {@link knnPredict}).
 */
export function knnAccuracy(
  queries: Tensor,
  queryLabels: ArrayLike<number>,
  bank: Tensor,
  bankLabels: ArrayLike<number>,
  classes: number,
  options: KnnOptions = {},
): number {
  if (queryLabels.length !== queries.shape[0]) {
    throw new RangeError(
      `knnAccuracy: ${queryLabels.length} labels for ${
        queries.shape[0]
      } queries`,
    );
  }
  const predicted = knnPredict(queries, bank, bankLabels, classes, options);
  let right = 0;
  for (let i = 0; i < predicted.length; i++) {
    if (predicted[i] === queryLabels[i]) right++;
  }
  return 100 * right / predicted.length;
}
