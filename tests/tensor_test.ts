import {
  add,
  batchNorm,
  conv2d,
  crossEntropy,
  defaultDevice,
  device,
  Generator,
  globalAvgPool2d,
  keep,
  linear,
  maxPool2d,
  memoryStats,
  mul,
  mulScalar,
  noGrad,
  normalize,
  ones,
  parseDeviceName,
  randn,
  relu,
  scope,
  setDefaultDevice,
  sum,
  type Tensor,
  tensor,
  useDevice,
  zeros,
} from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import { testDevice } from "./device.ts";

Deno.test("reshape() and flatten() are views that share storage and infer -1", () => {
  const x = tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  const y = x.reshape(3, -1);
  assert.deepEqual(y.shape, [3, 2]);
  assert.equal(y.storageRefs, 2);
  assert.deepEqual([...x.reshape(-1).toArray()], [1, 2, 3, 4, 5, 6]);
  const z = zeros([2, 3, 4, 5]);
  assert.deepEqual(z.flatten(1).shape, [2, 60]);
  assert.deepEqual(z.flatten().shape, [120]);
  assert.deepEqual(z.flatten(1, 2).shape, [2, 12, 5]);
  assertThrows(
    () => x.reshape(4, -1),
    /reshape: cannot reshape \[2, 3\] to \[4, -1\]/,
  );
  assertThrows(() => x.reshape(-1, -1), /only one dimension can be -1/);
  assertThrows(
    () => x.reshape(5),
    /view: cannot view a tensor of shape \[2, 3\] as \[5\]/,
  );
});

Deno.test("gradients flow through reshape and detach() cuts the graph", () => {
  const x = tensor([1, 2, 3, 4], [2, 2], { requiresGrad: true });
  sum(mul(x.reshape(4), tensor([1, 2, 3, 4]))).backward();
  assert.deepEqual([...x.grad!.toArray()], [1, 2, 3, 4]);
  const d = x.detach();
  assert.equal(d.requiresGrad, false);
  assert.equal(d.gradFn, null);
});

Deno.test("backward() accumulates into .grad over several calls, like PyTorch", () => {
  const x = tensor([1, 2, 3], [3], { requiresGrad: true });
  sum(mulScalar(x, 2)).backward();
  sum(mulScalar(x, 3)).backward();
  assert.deepEqual([...x.grad!.toArray()], [5, 5, 5]);
});

Deno.test("a gradient shared by two leaves is not corrupted by later accumulation", () => {
  const a = tensor([1, 2], [2], { requiresGrad: true });
  const b = tensor([3, 4], [2], { requiresGrad: true });
  sum(add(a, b)).backward(); // both leaves receive the same upstream gradient
  sum(mulScalar(a, 10)).backward(); // accumulates into a.grad only
  assert.deepEqual([...a.grad!.toArray()], [11, 11]);
  assert.deepEqual([...b.grad!.toArray()], [1, 1]);
});

Deno.test("backward() of a non-scalar needs a gradient; noGrad() records nothing", () => {
  const x = tensor([1, 2], [2], { requiresGrad: true });
  assertThrows(
    () => mulScalar(x, 2).backward(),
    /a gradient is needed for a non-scalar tensor of shape \[2\]/,
  );
  mulScalar(x, 2).backward(tensor([1, -1]));
  assert.deepEqual([...x.grad!.toArray()], [2, -2]);
  const y = noGrad(() => mulScalar(x, 2));
  assert.equal(y.requiresGrad, false);
  assertThrows(() => y.backward(), /does not require grad/);
});

Deno.test("item(), toArray() and toString() describe the tensor", () => {
  const s = sum(tensor([1.5, 2.5]));
  assert.equal(s.item(), 4);
  assert.equal(s.device, testDevice);
  assertThrows(() => tensor([1, 2]).item(), /item: the tensor has 2 elements/);
  assert.equal(
    String(zeros([2, 3], { requiresGrad: true })),
    `Tensor([2, 3], ${testDevice}, requiresGrad)`,
  );
  assertThrows(
    () => tensor([1, 2, 3], [2, 2]),
    /tensor: 3 values do not fill shape \[2, 2\]/,
  );
  assertThrows(() => zeros([2, -1]), /invalid shape \[2, -1\]/);
});

Deno.test("useDevice() opens a device once, normalises its name and rejects unknown names", async () => {
  const [a, b] = await Promise.all([
    useDevice(testDevice),
    useDevice(testDevice),
  ]);
  assert.equal(a, b);
  assert.equal(a, device(testDevice));
  assert.equal(a, device());
  assert.equal(a.name, testDevice);
  assert.equal(defaultDevice(), testDevice);
  assert.deepEqual(parseDeviceName("cuda"), { name: "cuda:0", kind: "cuda" });
  assert.deepEqual(parseDeviceName("cuda:3"), { name: "cuda:3", kind: "cuda" });
  await assert.rejects(useDevice("tpu"), (e: Error) => {
    assert.equal(
      e.message,
      'unknown device "tpu"; valid names are "cpu", "cuda" (the same as "cuda:0") and "cuda:N"',
    );
    return true;
  });
  assertThrows(() => device("gpu"), /unknown device "gpu"; valid names are/);
  assertThrows(
    () => device("cuda:7"),
    /^device "cuda:7" is not loaded; call await useDevice\("cuda:7"\) first$/,
  );
  assertThrows(() => setDefaultDevice("cuda:7"), /is not loaded/);
  assert.equal(defaultDevice(), testDevice);
});

Deno.test("dispose() frees the storage once the last view goes; use after dispose throws", () => {
  const before = memoryStats();
  const x = zeros([4, 4]);
  const v = x.reshape(16);
  assert.equal(memoryStats().bytes - before.bytes, 64);
  assert.equal(memoryStats().tensors - before.tensors, 2);
  x.dispose();
  assert.equal(memoryStats().bytes - before.bytes, 64); // the view keeps it
  v[Symbol.dispose]();
  assert.deepEqual(memoryStats(), before);
  assertThrows(() => v.toArray(), /a disposed tensor of shape \[16\] was used/);
  x.dispose(); // twice is fine
});

Deno.test("scope() frees intermediates, keeps returned and kept tensors, and nests", () => {
  const before = memoryStats();
  let kept: Tensor | null = null;
  const result = scope(() => {
    const a = ones([8]);
    const b = mulScalar(a, 2);
    kept = keep(mulScalar(b, 3));
    const inner = scope(() => ({ value: add(a, b), list: [mulScalar(a, 5)] }));
    return inner.value;
  });
  assert.deepEqual([...result.toArray()], new Array(8).fill(3));
  assert.deepEqual([...kept!.toArray()], new Array(8).fill(6));
  assert.equal(memoryStats().tensors - before.tensors, 2);
  result.dispose();
  kept!.dispose();
  assert.deepEqual(memoryStats(), before);
});

Deno.test("scope() releases everything when its function throws", () => {
  const before = memoryStats();
  assert.throws(() =>
    scope(() => {
      ones([16]);
      throw new Error("boom");
    })
  );
  assert.deepEqual(memoryStats(), before);
});

Deno.test("live tensors and bytes are the same before and after 20 training steps in a scope", () => {
  const gen = new Generator(11);
  const params = [
    randn([8, 3, 3, 3], gen, { requiresGrad: true }),
    ones([8], { requiresGrad: true }),
    zeros([8], { requiresGrad: true }),
    randn([5, 8], gen, { requiresGrad: true }),
    zeros([5], { requiresGrad: true }),
  ];
  const runningMean = zeros([8]);
  const runningVar = ones([8]);
  const x = randn([4, 3, 12, 12], gen);
  const step = () =>
    scope(() => {
      for (const p of params) {
        p.grad?.dispose();
        p.grad = null;
      }
      const [w, g, b, fw, fb] = params;
      let h = conv2d(x, w, null, { stride: 1, padding: 1 });
      h = relu(
        batchNorm(h, {
          weight: g,
          bias: b,
          runningMean,
          runningVar,
          training: true,
        }),
      );
      h = globalAvgPool2d(
        maxPool2d(h, { kernelSize: 3, stride: 2, padding: 1 }),
      ).flatten(1);
      const loss = crossEntropy(linear(normalize(h), fw, fb), [0, 1, 2, 3]);
      loss.backward();
      return loss.item();
    });
  step(); // the first step creates the gradients, which persist
  const before = memoryStats();
  const allocated = device().memory().allocated;
  const losses = [];
  for (let i = 0; i < 20; i++) losses.push(step());
  assert.deepEqual(memoryStats(), before);
  assert.equal(device().memory().allocated, allocated);
  assert.ok(losses.every(Number.isFinite));
});
