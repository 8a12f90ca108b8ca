/**
 * The wait every collective goes through (dist/poll.ts): it returns as soon
 * as the work is done, stops with one sentence naming the rank and the
 * collective once the deadline has passed, lets the engine's own error
 * through, and sleeps between tests only after spinning, never more than a
 * millisecond at a time.
 */

import { CollectiveTimeout, pollUntil } from "../dist/poll.ts";
import { assert, assertThrows } from "./assert.ts";

Deno.test("pollUntil returns once done, spinning before it sleeps", () => {
  let tests = 0;
  const sleeps: number[] = [];
  pollUntil(() => ++tests === 300, {
    rank: 0,
    what: "the test's all-reduce",
    timeoutSeconds: 10,
    sleep: (us) => sleeps.push(us),
  });
  assert.equal(tests, 300);
  // 200 tests without sleeping, then one sleep between each later pair.
  assert.equal(sleeps.length, 99);
  assert.equal(sleeps[0], 20);
  assert.ok(sleeps.every((us, i) => i === 0 || us >= sleeps[i - 1]));
  assert.equal(Math.max(...sleeps), 1000);
});

Deno.test("pollUntil stops at the deadline with a CollectiveTimeout naming the rank and the collective", () => {
  const start = performance.now();
  let caught: unknown = null;
  try {
    pollUntil(() => false, {
      rank: 3,
      what: "the GPU's work",
      timeoutSeconds: 0.05,
    });
  } catch (e) {
    caught = e;
  }
  const ms = performance.now() - start;
  assert.ok(caught instanceof CollectiveTimeout);
  assert.equal(caught.rank, 3);
  assert.match(
    caught.message,
    /^the GPU's work did not complete within 0\.05 s, so another rank has stopped or is stuck$/,
  );
  // Bounded: the deadline plus at most one of the 1 ms sleeps, with slack
  // for a loaded machine.
  assert.ok(ms >= 50 && ms < 2000, `waited ${ms} ms`);
});

Deno.test("pollUntil lets the engine's own error through between polls", () => {
  let checks = 0;
  assertThrows(
    () =>
      pollUntil(() => false, {
        rank: 1,
        what: "an NCCL collective",
        timeoutSeconds: 10,
        sleep: () => {},
        check: () => {
          if (++checks === 5) throw new Error("ncclRemoteError");
        },
      }),
    /^ncclRemoteError$/,
  );
  assert.equal(checks, 5);
});
