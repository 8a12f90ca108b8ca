import { Generator, mul, randn, scope, sum, tensor } from "../mod.ts";
import {
  type BasicBlock,
  Bottleneck,
  type ResNet,
  resnet101,
  resnet152,
  resnet18,
  resnet34,
  resnet50,
} from "../nn/resnet.ts";
import { assert } from "./assert.ts";
import { assertClose, randomValues } from "./check.ts";
import { batchNormRef, conv2dRef, matmulRef, maxPoolRef } from "./reference.ts";
import "./device.ts";

// Counts and key totals from torchvision (1000 classes).
const expected = [
  ["resnet18", resnet18, 11_689_512, 122],
  ["resnet34", resnet34, 21_797_672, 218],
  ["resnet50", resnet50, 25_557_032, 320],
  ["resnet101", resnet101, 44_549_160, 626],
  ["resnet152", resnet152, 60_192_808, 932],
] as const;

for (const [name, make, params, keys] of expected) {
  Deno.test(`${name} has torchvision's parameter count and state-dict keys, and the right output shapes`, () => {
    const net = make({ numClasses: 1000 });
    try {
      assert.equal(net.numParameters(), params);
      assert.equal(net.stateDict().size, keys);
      const out = scope(() =>
        net.eval().forward(randn([1, 3, 224, 224], new Generator(1))).shape
      );
      assert.deepEqual(out, [1, 1000]);
    } finally {
      net.dispose();
    }
  });
}

Deno.test("every ResNet with the small-image stem takes 32 px images", () => {
  // Full width for resnet18 and resnet50; narrower deep ones keep the test quick.
  for (
    const [make, width] of [[resnet18, 64], [resnet34, 16], [resnet50, 64], [
      resnet101,
      16,
    ], [resnet152, 16]] as const
  ) {
    const net = make({ numClasses: 10, smallStem: true, width });
    try {
      assert.deepEqual([...net.conv1.weight.shape], [width, 3, 3, 3]);
      assert.equal(net.child("maxpool").constructor.name, "Identity");
      const shape = scope(() =>
        net.train().forward(randn([2, 3, 32, 32], new Generator(2))).shape
      );
      assert.deepEqual(shape, [2, 10]);
      const features = scope(() =>
        net.features(randn([2, 3, 32, 32], new Generator(2))).shape
      );
      assert.deepEqual(features, [2, net.featureDim]);
      assert.equal(
        net.featureDim,
        width * 8 * (make === resnet18 || make === resnet34 ? 1 : 4),
      );
    } finally {
      net.dispose();
    }
  }
});

Deno.test("state-dict keys follow torchvision's names and order", () => {
  const net = resnet18({ numClasses: 10, width: 8 });
  const keys = [...net.stateDict().keys()];
  assert.deepEqual(keys.slice(0, 12), [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
    "layer1.0.bn1.running_var",
    "layer1.0.bn1.num_batches_tracked",
  ]);
  assert.ok(keys.includes("layer2.0.downsample.0.weight"));
  assert.ok(keys.includes("layer2.0.downsample.1.running_var"));
  assert.deepEqual(keys.slice(-2), ["fc.weight", "fc.bias"]);
  const b50 = resnet50({ width: 8 });
  assert.ok(b50.stateDict().has("layer4.2.bn3.weight"));
  assert.deepEqual([
    ...b50.stateDict().get("layer1.0.downsample.0.weight")!.shape,
  ], [32, 8, 1, 1]);
  net.dispose();
  b50.dispose();
});

Deno.test("initialisation: Kaiming-normal fan_out convs, BN 1/0, zero-init residual", () => {
  const net = resnet50({ zeroInitResidual: true, width: 16 });
  const w = net.stateDict().get("layer3.1.conv2.weight")!; // [64, 64, 3, 3]: std sqrt(2 / (64 * 9))
  const data = w.toArray();
  const std = Math.sqrt(data.reduce((s, v) => s + v * v, 0) / data.length);
  const expectedStd = Math.sqrt(2 / (64 * 9));
  // 36864 draws: the sample std is within 2 % with overwhelming probability.
  assert.ok(
    Math.abs(std / expectedStd - 1) < 0.02,
    `std ${std}, expected ${expectedStd}`,
  );
  const sd = net.stateDict();
  assert.ok(sd.get("layer1.0.bn3.weight")!.toArray().every((v) => v === 0));
  assert.ok(sd.get("layer1.0.bn2.weight")!.toArray().every((v) => v === 1));
  assert.ok(sd.get("layer1.0.bn2.bias")!.toArray().every((v) => v === 0));
  // The fc keeps PyTorch's default Linear init: U(-1/sqrt(in), 1/sqrt(in)).
  const bound = 1 / Math.sqrt(net.featureDim);
  assert.ok(sd.get("fc.weight")!.toArray().every((v) => Math.abs(v) <= bound));
  net.dispose();
  const basic = resnet18({ zeroInitResidual: true, width: 8 });
  assert.ok(
    basic.stateDict().get("layer2.1.bn2.weight")!.toArray().every((v) =>
      v === 0
    ),
  );
  basic.dispose();
});

Deno.test("the same generator seed gives the same weights", () => {
  const a = resnet18({ width: 8, gen: new Generator(5) });
  const b = resnet18({ width: 8, gen: new Generator(5) });
  const c = resnet18({ width: 8, gen: new Generator(6) });
  const w = (
    m: ResNet,
  ) => [...m.stateDict().get("layer3.0.conv1.weight")!.toArray()];
  assert.deepEqual(w(a), w(b));
  assert.notDeepEqual(w(a), w(c));
  for (const m of [a, b, c]) m.dispose();
});

// --- a float64 reference ResNet forward, for the gradient check -------------

type F64Dict = Map<string, { data: Float64Array; shape: number[] }>;
/** An activation and its shape. */
type Act = { x: Float64Array; shape: number[] };

function refConv(
  d: F64Dict,
  key: string,
  x: Float64Array,
  shape: number[],
  stride: number,
  pad: number,
) {
  const w = d.get(key)!;
  const [n, c, h, wd] = shape;
  const [k, , r, s] = w.shape;
  const y = conv2dRef(x, w.data, null, {
    n,
    c,
    h,
    w: wd,
    k,
    r,
    s,
    stride: [stride, stride],
    pad: [pad, pad],
  });
  const oh = Math.floor((h + 2 * pad - r) / stride) + 1;
  const ow = Math.floor((wd + 2 * pad - s) / stride) + 1;
  return { x: y, shape: [n, k, oh, ow] };
}

function refBn(
  d: F64Dict,
  key: string,
  a: { x: Float64Array; shape: number[] },
) {
  return {
    x: batchNormRef(
      a.x,
      a.shape,
      d.get(`${key}.weight`)!.data,
      d.get(`${key}.bias`)!.data,
      1e-5,
      null,
    ).y,
    shape: a.shape,
  };
}

const reluRef = (a: Act): Act => ({
  x: a.x.map((v) => Math.max(v, 0)),
  shape: a.shape,
});

function refForward(
  net: ResNet,
  d: F64Dict,
  input: Float64Array,
  inShape: number[],
): Float64Array {
  const small = net.conv1.weight.shape[2] === 3;
  let a = reluRef(
    refBn(
      d,
      "bn1",
      refConv(d, "conv1.weight", input, inShape, small ? 1 : 2, small ? 1 : 3),
    ),
  );
  if (!small) {
    const [n, c, h, w] = a.shape;
    const oh = Math.floor((h + 2 - 3) / 2) + 1;
    const ow = Math.floor((w + 2 - 3) / 2) + 1;
    a = {
      x: maxPoolRef(a.x, a.shape, [3, 3], [2, 2], [1, 1]),
      shape: [n, c, oh, ow],
    };
  }
  net.layers.forEach((layer, li) => {
    layer.layers.forEach((block, bi) => {
      const p = `layer${li + 1}.${bi}`;
      // torchvision v1.5: the stride sits on the 3x3 conv.
      const stride = block instanceof Bottleneck
        ? block.conv2.stride[0]
        : (block as BasicBlock).conv1.stride[0];
      let out: Act;
      if (block instanceof Bottleneck) {
        out = reluRef(
          refBn(
            d,
            `${p}.bn1`,
            refConv(d, `${p}.conv1.weight`, a.x, a.shape, 1, 0),
          ),
        );
        out = reluRef(
          refBn(
            d,
            `${p}.bn2`,
            refConv(d, `${p}.conv2.weight`, out.x, out.shape, stride, 1),
          ),
        );
        out = refBn(
          d,
          `${p}.bn3`,
          refConv(d, `${p}.conv3.weight`, out.x, out.shape, 1, 0),
        );
      } else {
        out = reluRef(
          refBn(
            d,
            `${p}.bn1`,
            refConv(d, `${p}.conv1.weight`, a.x, a.shape, stride, 1),
          ),
        );
        out = refBn(
          d,
          `${p}.bn2`,
          refConv(d, `${p}.conv2.weight`, out.x, out.shape, 1, 1),
        );
      }
      const identity = d.has(`${p}.downsample.0.weight`)
        ? refBn(
          d,
          `${p}.downsample.1`,
          refConv(d, `${p}.downsample.0.weight`, a.x, a.shape, stride, 0),
        )
        : a;
      a = reluRef({
        x: out.x.map((v, i) => v + identity.x[i]),
        shape: out.shape,
      });
    });
  });
  const [n, c, h, w] = a.shape;
  const pooled = new Float64Array(n * c);
  for (let i = 0; i < n * c; i++) {
    for (let j = 0; j < h * w; j++) pooled[i] += a.x[i * h * w + j] / (h * w);
  }
  const fcW = d.get("fc.weight")!;
  const logits = matmulRef(pooled, [n, c], fcW.data, fcW.shape, false, true);
  const bias = d.get("fc.bias")!.data;
  return logits.map((v, i) => v + bias[i % bias.length]);
}

for (
  const [label, make, inShape] of [
    [
      "BasicBlock, small stem",
      (g: Generator) =>
        resnet18({ width: 2, numClasses: 3, smallStem: true, gen: g }),
      [2, 3, 8, 8],
    ],
    [
      "Bottleneck, 7x7 stem and max-pool",
      (g: Generator) => resnet50({ width: 2, numClasses: 3, gen: g }),
      [2, 3, 32, 32],
    ],
  ] as const
) {
  Deno.test(`gradients through a small ResNet (${label}) match float64 finite differences`, () => {
    const gen = new Generator(21);
    const net = make(gen);
    // Random BN affine parameters, so that the check covers them too.
    for (const [key, t] of net.stateDict()) {
      if (/bn\d?\.(weight|bias)$|downsample\.1\.(weight|bias)$/.test(key)) {
        t.backend.write(
          t.buffer,
          Float32Array.from(randomValues(gen, t.size, 0.5, 1.5)),
        );
      }
    }
    const input = randomValues(gen, inShape.reduce((a, b) => a * b, 1));
    const f64 = (): F64Dict =>
      new Map(
        [...net.stateDict()].map((
          [k, t],
        ) => [k, {
          data: Float64Array.from(t.toArray()),
          shape: [...t.shape],
        }]),
      );
    const dict = f64();
    const logits = refForward(net, dict, input, [...inShape]);
    const dy = randomValues(gen, logits.length);

    const { out, grads, inputGrad } = scope(() => {
      const x = tensor(Float32Array.from(input), inShape, {
        requiresGrad: true,
      });
      const y = net.train().forward(x);
      sum(mul(y, tensor(Float32Array.from(dy), y.shape))).backward();
      const grads = new Map(
        net.namedParameters().map(([k, p]) => [k, p.grad!.toArray()]),
      );
      return { out: y.toArray(), grads, inputGrad: x.grad!.toArray() };
    });
    // Deep float32 forward: errors of a few ulps per layer add up.
    assertClose(out, logits, "logits", { rtol: 1e-4, atol: 1e-4 });

    const objective = (d: F64Dict, x: Float64Array) => {
      const y = refForward(net, d, x, [...inShape]);
      return y.reduce((s, v, i) => s + v * dy[i], 0);
    };
    const h = 1e-6;
    const pick = new Generator(3);
    const checked: string[] = [];
    for (const [key, g] of grads) {
      const entry = dict.get(key)!;
      // Two coordinates of every parameter tensor.
      for (let trial = 0; trial < 2; trial++) {
        const i = pick.integer(0, entry.data.length);
        const v = entry.data[i];
        entry.data[i] = v + h;
        const up = objective(dict, input);
        entry.data[i] = v - h;
        const down = objective(dict, input);
        entry.data[i] = v;
        const numeric = (up - down) / (2 * h);
        // Absolute floor: batch statistics over 2 samples amplify float32 noise.
        const tol = 2e-3 * Math.abs(numeric) + 2e-3;
        assert.ok(
          Math.abs(g[i] - numeric) <= tol,
          `${key}[${i}]: autograd ${g[i]}, finite difference ${numeric}`,
        );
        checked.push(key);
      }
    }
    for (let trial = 0; trial < 6; trial++) {
      const i = pick.integer(0, input.length);
      const v = input[i];
      input[i] = v + h;
      const up = objective(dict, input);
      input[i] = v - h;
      const down = objective(dict, input);
      input[i] = v;
      const numeric = (up - down) / (2 * h);
      assert.ok(
        Math.abs(inputGrad[i] - numeric) <= 2e-3 * Math.abs(numeric) + 2e-3,
        `input[${i}]`,
      );
    }
    assert.equal(new Set(checked).size, net.namedParameters().length);
    net.dispose();
  });
}
