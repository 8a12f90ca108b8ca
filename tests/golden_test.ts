/**
 * Three MEC training steps against the same steps computed by PyTorch: the
 * fixture (tests/fixtures/golden/, written by make_mec_golden.py with
 * Debian's python3-torch) holds a small ResNet-18 MEC model's initial state,
 * the inputs of each step, the losses and the final state: student, teacher
 * after its EMA, and every batch-norm statistic.
 */

import { MEC, mecStep, readSafetensors, scope, SGD, tensor } from "../mod.ts";
import type { HostTensor } from "../mod.ts";
import { assert } from "./assert.ts";
import "./device.ts";

const FIXTURE =
  new URL("./fixtures/golden/mec_golden.safetensors", import.meta.url).pathname;

function section(
  all: Map<string, HostTensor>,
  prefix: string,
): Map<string, HostTensor> {
  return new Map(
    [...all].filter(([k]) => k.startsWith(prefix)).map((
      [k, v],
    ) => [k.slice(prefix.length), v]),
  );
}

Deno.test("three MEC training steps match PyTorch's: losses, coding lengths, weights, teacher and BN statistics", async () => {
  const { tensors, metadata } = await readSafetensors(FIXTURE);
  const steps: [number, number, number][] = JSON.parse(metadata.steps);
  const losses: number[] = JSON.parse(metadata.losses);
  const mecs: number[] = JSON.parse(metadata.mec);
  const dim = Number(metadata.dim);
  const model = new MEC({
    arch: "resnet18",
    width: Number(metadata.width),
    smallStem: true,
    dim,
    predDim: Number(metadata.pred_dim),
  });
  // Strict: every key of PyTorch's model is one of ours, and the reverse.
  model.loadStateDict(section(tensors, "initial."));
  const optimizer = new SGD(model.trainableParameters(), {
    lr: steps[0][0],
    momentum: 0.9,
    weightDecay: 1e-5,
  });

  steps.forEach(([lr, teacherMomentum, lamdaInv], i) => {
    const input = (name: string) => {
      const t = tensors.get(`input.${i}.${name}`)!;
      return tensor(t.data, t.shape);
    };
    const r = scope(() => {
      const x1 = input("x1");
      const x2 = input("x2");
      const m = x1.shape[0];
      return mecStep(model, optimizer, x1, x2, {
        iteration: i,
        lr,
        teacherMomentum,
        lamdaInv,
        mu: (m + dim) / 2,
      });
    });
    // Float32 with other summation orders (oneDNN/MKL vs OpenBLAS/oneDNN):
    // agreement to about 1e-5 relative, slightly worse after more steps.
    assert.ok(
      Math.abs(r.loss - losses[i]) <= 2e-5 * Math.abs(losses[i]),
      `step ${i} loss ${r.loss}, PyTorch ${losses[i]}`,
    );
    assert.ok(
      Math.abs(r.mec - mecs[i]) <= 2e-5 * Math.abs(mecs[i]),
      `step ${i} MEC ${r.mec}, PyTorch ${mecs[i]}`,
    );
  });

  const initial = section(tensors, "initial.");
  const expected = section(tensors, "final.");
  const state = model.stateDict();
  assert.equal(state.size, expected.size);
  for (const [key, want] of expected) {
    const got = state.get(key);
    assert.ok(got, `no ${key} in the model`);
    // Compare what the three steps changed, relative to the largest change in
    // the tensor: gradients from two float32 implementations with other
    // summation orders agree to about 1e-4 after batch norm over 8 samples.
    // The absolute floor is float32 noise on O(1) values: a batch mean of
    // zero-mean features (predictor.1.running_mean) moves only by rounding.
    const start = initial.get(key)!.data;
    const ours = got.toArray();
    let largest = 0;
    for (let i = 0; i < start.length; i++) {
      largest = Math.max(largest, Math.abs(want.data[i] - start[i]));
    }
    for (let i = 0; i < start.length; i++) {
      const error = Math.abs((ours[i] - start[i]) - (want.data[i] - start[i]));
      assert.ok(
        error <= 1e-3 * largest + 1e-6,
        `${key}[${i}]: changed by ${ours[i] - start[i]}, PyTorch by ${
          want.data[i] - start[i]
        }`,
      );
    }
  }
  // The frozen projector bias did not move at all, in either.
  const bias = "encoder.fc.6.bias";
  assert.deepEqual([...state.get(bias)!.toArray()], [
    ...initial.get(bias)!.data,
  ]);
  assert.deepEqual([...expected.get(bias)!.data], [...initial.get(bias)!.data]);
  model.dispose();
});
