import {
  device,
  Generator,
  MEC,
  mecStep,
  memoryStats,
  NonFiniteLossError,
  randn,
  scope,
  SGD,
} from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";
import { assertClose } from "./check.ts";
import "./device.ts";
import { counts, only, recordCalls } from "./spy.ts";

/** A small MEC: resnet18 of width 4 with the small stem, d = 16. */
const small = (seed = 0) =>
  new MEC({
    arch: "resnet18",
    width: 4,
    smallStem: true,
    dim: 16,
    predDim: 8,
    gen: new Generator(seed),
  });

const settings = (iteration: number) => ({
  iteration,
  lr: 0.05,
  teacherMomentum: 0.9,
  lamdaInv: 2,
  mu: (8 + 16) / 2,
});

Deno.test("MEC names its modules as the official model and starts the teacher as a copy", () => {
  const model = small();
  const keys = [...model.stateDict().keys()];
  for (
    const key of [
      "encoder.conv1.weight",
      "encoder.layer4.1.bn2.weight",
      "encoder.fc.0.weight",
      "encoder.fc.1.running_var",
      "encoder.fc.3.weight",
      "encoder.fc.6.weight",
      "encoder.fc.6.bias",
      "encoder.fc.7.running_mean",
      "predictor.0.weight",
      "predictor.1.weight",
      "predictor.3.weight",
      "predictor.3.bias",
      "teacher.conv1.weight",
      "teacher.fc.6.bias",
    ]
  ) assert.ok(keys.includes(key), key);
  assert.ok(
    !keys.includes("encoder.fc.7.weight"),
    "the last BN has no affine parameters",
  );
  assert.ok(!keys.includes("predictor.0.bias"));
  const sd = model.stateDict();
  for (const [key, t] of model.encoder.stateDict()) {
    assert.deepEqual(
      [...sd.get(`teacher.${key}`)!.toArray()],
      [...t.toArray()],
      key,
    );
  }
  assert.ok(model.teacher.parameters().every((p) => !p.requiresGrad));
  assert.equal(model.encoder.stateDict().get("fc.6.bias")!.requiresGrad, false);
  // zero_init_residual on the student encoder.
  assert.ok(
    sd.get("encoder.layer1.0.bn2.weight")!.toArray().every((v) => v === 0),
  );
  model.dispose();
});

Deno.test("a step leaves teacher = m * teacher + (1 - m) * student; no teacher gradient; the frozen bias stays", () => {
  const model = small(1);
  const opt = new SGD(model.trainableParameters(), {
    lr: 0.05,
    momentum: 0.9,
    weightDecay: 1e-5,
  });
  const gen = new Generator(2);
  const [x1, x2] = [randn([8, 3, 8, 8], gen), randn([8, 3, 8, 8], gen)];
  // One step first so that teacher and student differ.
  mecStep(model, opt, x1, x2, settings(0));
  const before = model.teacher.parameters().map((p) => p.toArray());
  const bias = model.encoder.stateDict().get("fc.6.bias")!.toArray();
  const m = 0.9;
  mecStep(model, opt, x1, x2, settings(1));
  const student = model.encoder.parameters().map((p) => p.toArray());
  model.teacher.parameters().forEach((t, i) => {
    const expected = before[i].map((v, j) => m * v + (1 - m) * student[i][j]);
    assertClose(t.toArray(), expected, `teacher parameter ${i}`, {
      rtol: 1e-6,
      atol: 1e-7,
    });
    assert.equal(t.grad, null);
  });
  assert.deepEqual([...model.encoder.stateDict().get("fc.6.bias")!.toArray()], [
    ...bias,
  ]);
  // The teacher's BN statistics come from its own forward passes (2 per step).
  assert.equal(
    model.teacher.stateDict().get("bn1.num_batches_tracked")!.item(),
    4,
  );
  model.dispose();
});

Deno.test("repeated steps on one fixed batch make the loss go down", () => {
  const model = small(3);
  const opt = new SGD(model.trainableParameters(), {
    lr: 0.05,
    momentum: 0.9,
    weightDecay: 1e-5,
  });
  const gen = new Generator(4);
  const [x1, x2] = [randn([8, 3, 8, 8], gen), randn([8, 3, 8, 8], gen)];
  const losses: number[] = [];
  for (let i = 0; i < 12; i++) {
    losses.push(mecStep(model, opt, x1, x2, settings(i)).loss);
  }
  assert.ok(losses.every(Number.isFinite));
  const first = (losses[0] + losses[1]) / 2;
  const last = (losses[10] + losses[11]) / 2;
  assert.ok(last < first, `loss went from ${first} to ${last}`);
  model.dispose();
});

Deno.test("the batch and feature forms give the same step; the logged MEC is mec * mu", () => {
  const run = (form: "batch" | "feature") => {
    const model = small(5);
    const opt = new SGD(model.trainableParameters(), {
      lr: 0.05,
      momentum: 0.9,
    });
    const gen = new Generator(6);
    const r = mecStep(
      model,
      opt,
      randn([8, 3, 8, 8], gen),
      randn([8, 3, 8, 8], gen),
      { ...settings(0), form },
    );
    model.dispose();
    return r;
  };
  const a = run("batch");
  const b = run("feature");
  assert.ok(Math.abs(a.loss - b.loss) < 1e-5 * Math.abs(a.loss));
  // loss = -mec * lamdaInv and MEC = mec * mu.
  assert.ok(Math.abs(a.mec - (-a.loss / 2) * 12) < 1e-5 * Math.abs(a.mec));
});

Deno.test("a non-finite loss stops the step with the iteration, before any weight moves", () => {
  const model = small(7);
  const opt = new SGD(model.trainableParameters(), { lr: 0.05, momentum: 0.9 });
  const gen = new Generator(8);
  const x = randn([8, 3, 8, 8], gen);
  const bad = randn([8, 3, 8, 8], gen);
  bad.backend.fill({ y: bad.buffer, value: NaN, offset: 0, count: 1 });
  const w = model.encoder.conv1.weight.toArray();
  assertThrows(
    () => mecStep(model, opt, x, bad, settings(7)),
    /the MEC loss is NaN at iteration 7/,
  );
  // The tools tell it from other failures by its class, not its message.
  assert.throws(
    () => mecStep(model, opt, x, bad, settings(7)),
    (e: unknown) => e instanceof NonFiniteLossError && Number.isNaN(e.value),
  );
  assert.deepEqual([...model.encoder.conv1.weight.toArray()], [...w]);
  model.dispose();
});

Deno.test("the MEC step keeps live tensors and bytes flat over 20 steps", () => {
  const model = small(9);
  const opt = new SGD(model.trainableParameters(), { lr: 0.05, momentum: 0.9 });
  const gen = new Generator(10);
  const [x1, x2] = [randn([8, 3, 8, 8], gen), randn([8, 3, 8, 8], gen)];
  mecStep(model, opt, x1, x2, settings(0)); // creates gradients and momentum buffers
  const before = memoryStats();
  const allocated = device().memory().allocated;
  for (let i = 1; i <= 20; i++) {
    scope(() => mecStep(model, opt, x1, x2, settings(i)));
  }
  // Gradients are replaced each step, not added to: the counts stay put.
  assert.deepEqual(memoryStats(), before);
  assert.equal(device().memory().allocated, allocated);
  model.dispose();
});

Deno.test("updateTeacher() is one axpbyMany over every teacher parameter, each as one axpby would leave it; a step fuses SGD and the EMA", () => {
  const model = small(7);
  const opt = new SGD(model.trainableParameters(), {
    lr: 0.05,
    momentum: 0.9,
    weightDecay: 1e-5,
  });
  const gen = new Generator(8);
  const [x1, x2] = [randn([8, 3, 8, 8], gen), randn([8, 3, 8, 8], gen)];
  const backend = device();
  // One step first so that teacher and student differ; then each step is
  // one sgdUpdateMany and one axpbyMany (axpby also adds up gradients).
  for (let i = 0; i < 2; i++) {
    const calls = recordCalls(
      [backend],
      () => mecStep(model, opt, x1, x2, settings(i)),
    ).get(backend)!;
    const c = counts(calls);
    assert.deepEqual(
      [c.sgdUpdateMany, c.axpbyMany, c.sgdUpdate],
      [1, 1, 0],
      `step ${i}`,
    );
  }
  // The EMA on copies of the teacher, one axpby per parameter.
  const m = 0.99;
  const teacher = model.teacher.parameters();
  const student = model.encoder.parameters();
  const copies = teacher.map((t) => {
    const b = backend.alloc(t.size);
    backend.write(b, t.toArray());
    return b;
  });
  teacher.forEach((t, i) =>
    backend.axpby({
      n: t.size,
      alpha: 1 - m,
      x: student[i].buffer,
      beta: m,
      y: copies[i],
    })
  );
  const calls = recordCalls([backend], () => model.updateTeacher(m)).get(
    backend,
  )!;
  assert.deepEqual(counts(calls), only({ axpbyMany: 1 }));
  const ema = calls[0].op === "axpbyMany" ? calls[0].args : null;
  assert.deepEqual(
    [ema?.alpha, ema?.beta, ema?.lengths],
    [1 - m, m, teacher.map((t) => t.size)],
  );
  teacher.forEach((t, i) => {
    const want = new Uint32Array(backend.read(copies[i]).buffer);
    const got = new Uint32Array(t.toArray().buffer);
    assert.deepEqual([...got], [...want], `teacher parameter ${i}`);
    backend.free(copies[i]);
  });
  opt.dispose();
  model.dispose();
});
