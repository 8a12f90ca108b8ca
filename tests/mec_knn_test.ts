import "./device.ts";
import {
  Generator,
  KNN_DEFAULTS,
  knnAccuracy,
  knnPredict,
  knnVote,
  tensor,
} from "../mod.ts";
import { topK } from "../mec/knn.ts";
import { assert, assertThrows } from "./assert.ts";

/** Rows drawn around one random centre per class: [count * classes, dim]. */
function clusters(
  gen: Generator,
  classes: number,
  perClass: number,
  dim: number,
  spread: number,
  centres = randomRows(gen, classes, dim),
) {
  const x = new Float32Array(classes * perClass * dim);
  const labels = new Int32Array(classes * perClass);
  for (let i = 0; i < classes * perClass; i++) {
    const c = i % classes;
    labels[i] = c;
    for (let j = 0; j < dim; j++) {
      x[i * dim + j] = centres[c * dim + j] + spread * gen.normal();
    }
  }
  return { x, labels, centres };
}

function randomRows(gen: Generator, rows: number, dim: number) {
  return gen.fillNormal(new Float32Array(rows * dim));
}

/**
 * The float64 reference: cosine of every query with every bank row by
 * straight loops, all bank rows sorted by similarity (ties to the lower
 * index), the first k vote with exp(sim / T), the largest score wins
 * (ties to the lower class).
 */
function knnReference(
  q: Float32Array,
  bank: Float32Array,
  bankLabels: Int32Array,
  dim: number,
  classes: number,
  k: number,
  temperature: number,
): Int32Array {
  const norm = (v: Float32Array, i: number) => {
    let s = 0;
    for (let j = 0; j < dim; j++) s += v[i * dim + j] ** 2;
    return Math.sqrt(s);
  };
  const n = bankLabels.length;
  const rows = q.length / dim;
  const out = new Int32Array(rows);
  for (let i = 0; i < rows; i++) {
    const sims: [number, number][] = [];
    for (let b = 0; b < n; b++) {
      let dot = 0;
      for (let j = 0; j < dim; j++) dot += q[i * dim + j] * bank[b * dim + j];
      sims.push([dot / (norm(q, i) * norm(bank, b)), b]);
    }
    sims.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const scores = new Array(classes).fill(0);
    for (const [s, b] of sims.slice(0, k)) {
      scores[bankLabels[b]] += Math.exp(s / temperature);
    }
    out[i] = scores.indexOf(Math.max(...scores));
  }
  return out;
}

Deno.test("knnAccuracy() is 100 % on well-separated clusters", () => {
  const gen = new Generator(1);
  const bank = clusters(gen, 10, 30, 16, 0.05);
  const queries = clusters(gen, 10, 20, 16, 0.05, bank.centres);
  const top1 = knnAccuracy(
    tensor(queries.x, [200, 16]),
    queries.labels,
    tensor(bank.x, [300, 16]),
    bank.labels,
    10,
  );
  assert.equal(top1, 100);
});

Deno.test("knnAccuracy() is at chance when the labels carry no information", () => {
  const gen = new Generator(2);
  const classes = 4;
  const dim = 16;
  const bank = randomRows(gen, 1000, dim);
  const queries = randomRows(gen, 2000, dim);
  const label = () => gen.integer(0, classes);
  const bankLabels = Int32Array.from({ length: 1000 }, label);
  const queryLabels = Int32Array.from({ length: 2000 }, label);
  const top1 = knnAccuracy(
    tensor(queries, [2000, dim]),
    queryLabels,
    tensor(bank, [1000, dim]),
    bankLabels,
    classes,
  );
  // Chance is 25 %; 2,000 independent queries have a standard deviation
  // of sqrt(0.25 * 0.75 / 2000) = 0.97 points, so 5 points is 5 sigma.
  assert.ok(Math.abs(top1 - 25) < 5, `top-1 ${top1} % is not near 25 %`);
});

Deno.test("knnPredict() matches the float64 reference vote for k = 200 and T = 0.1", () => {
  const gen = new Generator(3);
  const dim = 8;
  const classes = 5;
  // Overlapping clusters, so that the vote, not the nearest row, decides.
  const bank = clusters(gen, classes, 80, dim, 1.0);
  const queries = clusters(gen, classes, 60, dim, 1.0, bank.centres);
  const { k, temperature } = KNN_DEFAULTS;
  const expected = knnReference(
    queries.x,
    bank.x,
    bank.labels,
    dim,
    classes,
    k,
    temperature,
  );
  const got = knnPredict(
    tensor(queries.x, [300, dim]),
    tensor(bank.x, [400, dim]),
    bank.labels,
    classes,
  );
  assert.deepEqual(Array.from(got), Array.from(expected));
  // The check has teeth: a plain majority of the same 200 neighbours, or
  // the single nearest one, predicts differently for some of these queries.
  const nearest = knnPredict(
    tensor(queries.x, [300, dim]),
    tensor(bank.x, [400, dim]),
    bank.labels,
    classes,
    { k: 1 },
  );
  const majority = knnPredict(
    tensor(queries.x, [300, dim]),
    tensor(bank.x, [400, dim]),
    bank.labels,
    classes,
    { temperature: 1e6 },
  );
  assert.ok(nearest.some((p, i) => p !== expected[i]));
  assert.ok(majority.some((p, i) => p !== expected[i]));
});

Deno.test("knnPredict() weighs neighbours by exp(sim / T): T decides between one close and two far", () => {
  // The query is (1, 0). Bank: one row of class 0 at cosine 0.9, two rows
  // of class 1 at cosine 0.5. T = 0.1: e^9 = 8103 > 2 e^5 = 297, class 0.
  // T = 10: e^0.09 = 1.09 < 2 e^0.05 = 2.10, class 1.
  const s = Math.sqrt(1 - 0.81);
  const h = Math.sqrt(0.75);
  const bank = tensor([0.9, s, 0.5, h, 0.5, -h], [3, 2]);
  const query = tensor([1, 0], [1, 2]);
  const labels = [0, 1, 1];
  assert.equal(knnPredict(query, bank, labels, 2, { temperature: 0.1 })[0], 0);
  assert.equal(knnPredict(query, bank, labels, 2, { temperature: 10 })[0], 1);
  // With k = 2 only the class-0 row and one class-1 row vote.
  assert.equal(
    knnPredict(query, bank, labels, 2, { k: 2, temperature: 10 })[0],
    0,
  );
});

Deno.test("knnVote() sums exp(sim / T) per class in float64", () => {
  const scores = knnVote([0.5, 0.25, -1], [2, 0, 2], 3, 0.1);
  assert.deepEqual(Array.from(scores), [
    Math.exp(2.5),
    0,
    Math.exp(5) + Math.exp(-10),
  ]);
});

Deno.test("topK() returns the k largest, largest first, lower index first on ties", () => {
  const gen = new Generator(4);
  const row = Float32Array.from({ length: 500 }, () => gen.integer(0, 50));
  const k = 37;
  const got = topK(row, k, new Int32Array(k));
  const expected = Array.from(row.keys())
    .sort((a, b) => row[b] - row[a] || a - b)
    .slice(0, k);
  assert.deepEqual(Array.from(got), expected);
  assert.deepEqual(Array.from(topK([3, 1, 3], 3, new Int32Array(3))), [
    0,
    2,
    1,
  ]);
});

Deno.test("knnPredict() lets the whole bank vote when it has fewer than k rows", () => {
  const bank = tensor([1, 0, 0, 1, 0, 1], [3, 2]);
  // k = 200 > 3: all three vote. One row of class 0 at cosine 1 beats two
  // of class 1 at cosine 0 when T = 0.1 (e^10 > 2), not when T = 100
  // (e^0.01 < 2): the third row took part.
  const query = tensor([1, 0], [1, 2]);
  assert.equal(knnPredict(query, bank, [0, 1, 1], 2)[0], 0);
  assert.equal(
    knnPredict(query, bank, [0, 1, 1], 2, { temperature: 100 })[0],
    1,
  );
});

Deno.test("knnPredict() refuses mismatched shapes, labels and settings", () => {
  const bank = tensor([1, 0, 0, 1], [2, 2]);
  const q = tensor([1, 0, 0], [1, 3]);
  assertThrows(() => knnPredict(q, bank, [0, 1], 2), /must be \[q, d\]/);
  const q2 = tensor([1, 0], [1, 2]);
  assertThrows(() => knnPredict(q2, bank, [0], 2), /1 labels for a bank of 2/);
  assertThrows(() => knnPredict(q2, bank, [0, 2], 2), /not one of 2 classes/);
  assertThrows(
    () => knnPredict(q2, bank, [0, 1], 2, { temperature: 0 }),
    /temperature must be positive/,
  );
  assertThrows(() => knnPredict(q2, bank, [0, 1], 2, { k: 0 }), /k must be/);
  assertThrows(
    () => knnAccuracy(q2, [0, 1], bank, [0, 1], 2),
    /2 labels for 1 queries/,
  );
});
