import { accuracy, crossEntropy, Generator, tensor, zeros } from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose, checkGradients, randomValues } from "./check.ts";
import { crossEntropyRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(5);

for (const reduction of ["mean", "sum", "none"] as const) {
  Deno.test(`crossEntropy() with reduction "${reduction}" matches the reference`, () => {
    const [rows, cols] = [6, 5];
    const labels = [0, 4, 2, 2, 1, 3];
    checkGradients(`crossEntropy ${reduction}`, {
      inputs: [{
        data: randomValues(gen, rows * cols, -3, 3),
        shape: [rows, cols],
      }],
      op: (x) => crossEntropy(x, labels, { reduction }),
      ref: (x) => {
        const l = crossEntropyRef(x, rows, cols, labels);
        const total = l.reduce((p, q) => p + q, 0);
        return reduction === "none"
          ? l
          : Float64Array.of(reduction === "sum" ? total : total / rows);
      },
    });
  });
}

Deno.test("crossEntropy() stays finite for large logits and accepts labels as a tensor", () => {
  const x = tensor([1000, 0, -1000, 0, 1000, 0], [2, 3]);
  const loss = crossEntropy(x, tensor([0, 2], [2]), { reduction: "none" });
  assertClose(loss.toArray(), [0, 1000], "large logits");
});

Deno.test("crossEntropy() rejects labels that are not class indices", () => {
  assertThrows(
    () => crossEntropy(zeros([2, 3]), [0, 3]),
    /crossEntropy: label 3 at position 1 is not a class index in \[0, 3\)/,
  );
  assertThrows(
    () => crossEntropy(zeros([2, 3]), [0.5, 1]),
    /label 0.5 at position 0/,
  );
  assertThrows(
    () => crossEntropy(zeros([2, 3]), [0]),
    /crossEntropy: 1 labels for 2 rows of logits \[2, 3\]/,
  );
  assertThrows(
    () => crossEntropy(zeros([2, 3]), tensor([0, -1], [2])),
    /label -1 of row 1 is not a class index/,
  );
});

Deno.test("accuracy() counts top-1 and top-5 hits in percent, ties broken by position", () => {
  const logits = tensor([
    0.1,
    0.9,
    0.0,
    0.0,
    0.0,
    0.0, // label 1: top-1
    0.9,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5, // label 1: rank 6 (last)
    0.5,
    0.5,
    0.0,
    0.0,
    0.0,
    0.0, // label 1: tie with 0, ranks second
    0.0,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5, // label 1: rank 5
  ], [4, 6]);
  const [top1, top5] = accuracy(logits, [1, 1, 1, 1], [1, 5]);
  assert.equal(top1, 25);
  assert.equal(top5, 75);
});
