import { cosineSchedule, lamdaInvSchedule, mecConstants } from "../mod.ts";
import { assert, assertThrows } from "./assert.ts";

// 100 epochs of 10 iterations, 10 warm-up epochs: 100 warm-up iterations.
const shape = { epochs: 100, itersPerEpoch: 10, warmupEpochs: 10 };
const close = (a: number, b: number) =>
  assert.ok(
    Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)),
    `${a} != ${b}`,
  );

Deno.test("the learning-rate schedule matches the official cosine_scheduler at key iterations", () => {
  const lr = 0.5 * 1024 / 256;
  close(cosineSchedule(0, lr, 0, shape), 0); // np.linspace starts at 0
  close(cosineSchedule(50, lr, 0, shape), lr * 50 / 99);
  close(cosineSchedule(99, lr, 0, shape), lr); // linspace includes its end point
  close(cosineSchedule(100, lr, 0, shape), lr); // cosine starts at the base value
  close(
    cosineSchedule(550, lr, 0, shape),
    0.5 * lr * (1 + Math.cos(Math.PI * 450 / 900)),
  );
  close(
    cosineSchedule(999, lr, 0, shape),
    0.5 * lr * (1 + Math.cos(Math.PI * 899 / 900)),
  );
});

Deno.test("the teacher momentum goes from 0.996 to 1 by a cosine without warm-up", () => {
  const s = { epochs: 100, itersPerEpoch: 10 };
  close(cosineSchedule(0, 0.996, 1, s), 0.996);
  close(
    cosineSchedule(500, 0.996, 1, s),
    1 + 0.5 * (0.996 - 1) * (1 + Math.cos(Math.PI * 500 / 1000)),
  );
  close(
    cosineSchedule(999, 0.996, 1, s),
    1 + 0.5 * (0.996 - 1) * (1 + Math.cos(Math.PI * 999 / 1000)),
  );
});

Deno.test("lamdaInv falls from 8 / lambda to 1 / lambda over the warm-up, then holds", () => {
  const { lamda, epsD, mu } = mecConstants(1024, 2048, 64);
  close(epsD, 64 / 2048);
  close(lamda, 1 / (1024 * 64 / 2048));
  close(mu, (1024 + 2048) / 2);
  close(lamdaInvSchedule(0, lamda, shape), 8 / lamda);
  close(
    lamdaInvSchedule(33, lamda, shape),
    8 / lamda + (1 / lamda - 8 / lamda) * 33 / 99,
  );
  close(lamdaInvSchedule(99, lamda, shape), 1 / lamda);
  close(lamdaInvSchedule(100, lamda, shape), 1 / lamda);
  close(lamdaInvSchedule(999, lamda, shape), 1 / lamda);
});

Deno.test("schedules reject iterations outside the run", () => {
  assertThrows(
    () => cosineSchedule(1000, 1, 0, shape),
    /iteration 1000 is outside 0..999/,
  );
  assertThrows(() => cosineSchedule(-1, 1, 0, shape), /outside/);
});
