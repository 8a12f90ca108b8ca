import { Generator, randn, scope, sum, tensor } from "../mod.ts";
import {
  AdaptiveAvgPool2d,
  BatchNorm1d,
  BatchNorm2d,
  Conv2d,
  Flatten,
  Identity,
  Linear,
  MaxPool2d,
  ReLU,
  Sequential,
} from "../nn/layers.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import { batchNormRef } from "./reference.ts";
import "./device.ts";

const gen = new Generator(31);

Deno.test("Sequential names its layers 0, 1, ... and nests names with dots", () => {
  const head = new Sequential(
    new Linear(4, 6, { bias: false, gen }),
    new BatchNorm1d(6),
    new ReLU(),
    new Linear(6, 3, { gen }),
    new BatchNorm1d(3, { affine: false }),
  );
  assert.deepEqual([...head.stateDict().keys()], [
    "0.weight",
    "1.weight",
    "1.bias",
    "1.running_mean",
    "1.running_var",
    "1.num_batches_tracked",
    "3.weight",
    "3.bias",
    "4.running_mean",
    "4.running_var",
    "4.num_batches_tracked",
  ]);
  assert.deepEqual(head.namedParameters().map(([k]) => k), [
    "0.weight",
    "1.weight",
    "1.bias",
    "3.weight",
    "3.bias",
  ]);
  assert.equal(head.numParameters(), 24 + 12 + 18 + 3);
  const y = scope(() => head.forward(randn([5, 4], gen)).shape);
  assert.deepEqual(y, [5, 3]);
});

Deno.test("BatchNorm2d running statistics after three training steps equal a hand computation; eval uses them", () => {
  const bn = new BatchNorm2d(3, { momentum: 0.2 });
  const shape = [4, 3, 2, 5];
  const batches = [0, 1, 2].map(() => randomValues(gen, 120, -1, 3));
  const mean = [0, 0, 0];
  const variance = [1, 1, 1];
  for (const b of batches) {
    scope(() => bn.train().forward(tensor(Float32Array.from(b), shape)));
    const stats = batchNormRef(b, shape, null, null, 1e-5, null);
    for (let c = 0; c < 3; c++) {
      mean[c] = 0.8 * mean[c] + 0.2 * stats.mean[c];
      variance[c] = 0.8 * variance[c] + 0.2 * stats.variance[c] * 40 / 39; // unbiased, 40 values per channel
    }
  }
  assertClose(bn.runningMean!.toArray(), mean, "running mean");
  assertClose(bn.runningVar!.toArray(), variance, "running var");
  assert.equal(bn.numBatchesTracked!.item(), 3);
  const x = randomValues(gen, 120);
  const y = scope(() =>
    bn.eval().forward(tensor(Float32Array.from(x), shape)).toArray()
  );
  const expected = batchNormRef(x, shape, null, null, 1e-5, {
    mean: Float64Array.from(mean),
    variance: Float64Array.from(variance),
  }).y;
  assertClose(y, expected, "eval output");
  assert.equal(bn.numBatchesTracked!.item(), 3); // eval does not count
});

Deno.test("BatchNorm without running statistics uses batch statistics in eval too", () => {
  const bn = new BatchNorm1d(2, { trackRunningStats: false, affine: false });
  assert.equal(bn.stateDict().size, 0);
  const x = randomValues(gen, 8);
  const y = scope(() =>
    bn.eval().forward(tensor(Float32Array.from(x), [4, 2])).toArray()
  );
  assertClose(
    y,
    batchNormRef(x, [4, 2], null, null, 1e-5, null).y,
    "batch statistics",
  );
});

Deno.test("train() and eval() reach every sub-module; a frozen parameter gets no gradient", () => {
  const net = new Sequential(
    new Conv2d(3, 4, 3, { padding: 1, gen }),
    new BatchNorm2d(4),
    new ReLU(),
  );
  net.eval();
  assert.ok(net.namedModules().every(([, m]) => !m.training));
  net.train();
  assert.ok(net.namedModules().every(([, m]) => m.training));
  const conv = net.layers[0] as Conv2d;
  conv.weight.requiresGrad = false;
  scope(() => sum(net.forward(randn([2, 3, 5, 5], gen))).backward());
  assert.equal(conv.weight.grad, null);
  assert.notEqual(conv.bias!.grad, null);
});

Deno.test("layers check their input rank and Conv2d/Linear use PyTorch's default init bounds", () => {
  assertThrows(
    () => new BatchNorm2d(3).forward(randn([2, 3], gen)),
    /BatchNorm2d: expected a 4-D input/,
  );
  assertThrows(
    () => new BatchNorm1d(3).forward(randn([2, 3, 4, 4], gen)),
    /BatchNorm1d: expected a 2-D or 3-D input/,
  );
  assertThrows(
    () => new AdaptiveAvgPool2d(2),
    /only output size 1 is supported/,
  );
  const conv = new Conv2d(8, 4, 3, { gen });
  const bound = 1 / Math.sqrt(8 * 9);
  assert.ok(conv.weight.toArray().every((v) => Math.abs(v) <= bound));
  assert.ok(conv.bias!.toArray().every((v) => Math.abs(v) <= bound));
  const fc = new Linear(50, 2, { gen });
  assert.ok(fc.weight.toArray().every((v) => Math.abs(v) <= 1 / Math.sqrt(50)));
});

Deno.test("MaxPool2d, AdaptiveAvgPool2d, Flatten and Identity compose like torchvision's stem and head", () => {
  const net = new Sequential(
    new MaxPool2d(3, 2, 1),
    new AdaptiveAvgPool2d(1),
    new Flatten(),
    new Identity(),
  );
  const shape = scope(() => net.forward(randn([2, 5, 9, 9], gen)).shape);
  assert.deepEqual(shape, [2, 5]);
});
