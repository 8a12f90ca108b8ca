import {
  add,
  addReluInPlace,
  batchNorm,
  conv2d,
  forwardScope,
  Generator,
  memoryStats,
  mul,
  noGrad,
  ones,
  randn,
  relu,
  reluInPlace,
  resnet18,
  scope,
  sum,
} from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose } from "./check.ts";
import "./device.ts";

const gen = new Generator(21);

Deno.test("a graph survives its intermediates being disposed: backward reads the views the ops saved", () => {
  const before = memoryStats();
  const grads = scope(() => {
    const x = randn([2, 3, 5, 5], gen, { requiresGrad: true });
    const w = randn([4, 3, 3, 3], gen, { requiresGrad: true });
    const reference = () => sum(mul(relu(conv2d(x, w)), relu(conv2d(x, w))));
    reference().backward();
    const want = [x.grad!.toArray(), w.grad!.toArray()];
    x.grad!.dispose();
    w.grad!.dispose();
    x.grad = w.grad = null;
    // The same graph, each intermediate disposed as soon as it is used.
    const h = forwardScope(() => {
      const c = conv2d(x, w);
      const r = relu(c);
      c.dispose();
      return r;
    });
    const loss = sum(mul(h, h));
    h.dispose();
    loss.backward();
    assertClose(x.grad!.toArray(), want[0], "x.grad", {
      rtol: 1e-6,
      atol: 1e-6,
    });
    assertClose(w.grad!.toArray(), want[1], "w.grad", {
      rtol: 1e-6,
      atol: 1e-6,
    });
    return [x.grad!.toArray().length, w.grad!.toArray().length];
  });
  assert.deepEqual(grads, [150, 108]);
  assert.deepEqual(memoryStats(), before);
});

Deno.test("backward frees each op's saved tensors as it goes; a second backward through the graph says why it cannot", () => {
  scope(() => {
    const x = randn([4, 6], gen, { requiresGrad: true });
    const loss = sum(relu(mul(x, x)));
    const live = memoryStats().bytes;
    loss.backward();
    // relu's output and mul's two operands (views of x) were released; the
    // gradient of x is new.
    assert.ok(memoryStats().bytes <= live + 4 * x.size);
    assertThrows(
      () => loss.backward(),
      /sum backward|relu backward: the tensors it saved were already freed/,
    );
  });
});

Deno.test("noGrad saves nothing: a module's forward scope leaves only its output", () => {
  const net = resnet18({ smallStem: true, width: 4, numClasses: 3, gen });
  const x = randn([2, 3, 8, 8], gen);
  const before = memoryStats();
  noGrad(() =>
    scope(() => {
      const out = net.forward(x);
      // The logits alone are live: every activation was freed on the way.
      assert.equal(memoryStats().tensors - before.tensors, 1);
      assert.equal(memoryStats().bytes - before.bytes, 4 * out.size);
    })
  );
  assert.deepEqual(memoryStats(), before);
});

Deno.test("with autograd on, a ResNet's backward frees every activation its forward kept", () => {
  const net = resnet18({ smallStem: true, width: 4, numClasses: 3, gen });
  const x = randn([2, 3, 8, 8], gen);
  const before = memoryStats();
  scope(() => {
    const out = net.forward(x);
    const loss = sum(out);
    const held = memoryStats().bytes - before.bytes;
    loss.backward();
    const afterBackward = memoryStats().bytes - before.bytes;
    // After backward only the parameters' gradients, the logits and the
    // loss remain: every saved activation was freed by its op's backward.
    const gradBytes = net.parameters().reduce((s, p) => s + 4 * p.size, 0);
    assert.equal(afterBackward, gradBytes + 4 * (out.size + 1));
    assert.ok(held > 0);
  });
  for (const p of net.parameters()) {
    p.grad?.dispose();
    p.grad = null;
  }
  assert.deepEqual(memoryStats(), before);
});

Deno.test("reluInPlace() and addReluInPlace() overwrite their input and differentiate like relu(x) and relu(a + b)", () => {
  scope(() => {
    const a = randn([3, 4], gen, { requiresGrad: true });
    const b = randn([3, 4], gen, { requiresGrad: true });
    const up = randn([3, 4], gen);
    // Reference: out-of-place ops.
    sum(mul(relu(add(a, b)), up)).backward();
    const want = [a.grad!.toArray(), b.grad!.toArray()];
    a.grad = b.grad = null;
    const t = mul(a, ones([3, 4])); // a non-leaf copy to overwrite
    const y = addReluInPlace(t, b);
    assert.equal(y.storageRefs, 3); // t, y and the view y saved
    assert.ok(y.version > 0);
    sum(mul(y, up)).backward();
    assertClose(a.grad!.toArray(), want[0], "a.grad", { rtol: 0, atol: 0 });
    assertClose(b.grad!.toArray(), want[1], "b.grad", { rtol: 0, atol: 0 });

    const u = mul(a, ones([3, 4]));
    const r = reluInPlace(u);
    assert.deepEqual(
      [...r.toArray()],
      [...a.toArray()].map((v) => Math.max(v, 0)),
    );
    assertThrows(() => mul(u, up), /was overwritten by reluInPlace/);
    assertThrows(
      () => reluInPlace(a),
      /a leaf tensor that requires grad cannot be changed in place/,
    );
  });
});

Deno.test("an in-place write to a tensor an op saved makes that op's backward throw (the version counter)", () => {
  scope(() => {
    const x = randn([2, 3, 4, 4], gen, { requiresGrad: true });
    const c = mul(x, ones([2, 3, 4, 4]));
    // batchNorm saves its input c; overwriting c afterwards is caught.
    const y = batchNorm(c, { training: true });
    reluInPlace(c);
    assertThrows(
      () => sum(y).backward(),
      /batchNorm backward: a tensor of shape \[2, 3, 4, 4\] that it saved was modified by an in-place operation \(version 1, saved at version 0\)/,
    );
  });
});

Deno.test("reluInPlace() after batchNorm (what the ResNets do) is allowed: batch norm saved its input, not its output", () => {
  scope(() => {
    const x = randn([2, 3, 4, 4], gen, { requiresGrad: true });
    const up = randn([2, 3, 4, 4], gen);
    sum(mul(relu(batchNorm(x, { training: true })), up)).backward();
    const want = x.grad!.toArray();
    x.grad = null;
    sum(mul(reluInPlace(batchNorm(x, { training: true })), up)).backward();
    assertClose(x.grad!.toArray(), want, "x.grad", { rtol: 0, atol: 0 });
  });
});
