/**
 * Waiting for a collective without blocking forever: test it, spin a
 * little, then sleep between tests (growing to 1 ms, so that a rank that
 * waits leaves the cores to the ranks still computing when there are more
 * ranks than cores), until it is done or the deadline has passed. Open MPI's
 * requests and NCCL's work on the GPU are waited for through this one loop.
 *
 * @module
 */

/** Tests before sleeping between them, and the sleeps' range. */
const SPINS_BEFORE_SLEEP = 200;
const MIN_PAUSE_US = 20;
const MAX_PAUSE_US = 1000;

/** A collective that did not finish in time: a rank has died or hangs. */
export class CollectiveTimeout extends Error {
  constructor(
    readonly rank: number,
    readonly what: string,
    readonly seconds: number,
  ) {
    super(
      `${what} did not complete within ${seconds} s, so another rank has stopped or is stuck`,
    );
    this.name = "CollectiveTimeout";
  }
}

/** What {@link pollUntil} waits for, and how long. */
export interface PollOptions {
  /** The waiting rank, for the error. */
  rank: number;
  /** What is waited for ("the gradients' all-reduce"), for the error. */
  what: string;
  timeoutSeconds: number;
  /**
   * Called between tests once spinning has ended: throws to stop waiting
   * (an error the engine reports on its own, say).
   */
  check?: () => void;
  /** Sleeps the thread; libc's usleep unless given (tests pass their own). */
  sleep?: (microseconds: number) => void;
}

/**
 * Calls `done` until it returns true; returns the milliseconds waited.
 * Throws a {@link CollectiveTimeout} once `timeoutSeconds` have passed.
 */
export function pollUntil(done: () => boolean, o: PollOptions): number {
  const sleep = o.sleep ?? sleepMicroseconds;
  const start = performance.now();
  const deadline = start + o.timeoutSeconds * 1000;
  let pause = 0;
  for (let spins = 0;; spins++) {
    if (done()) return performance.now() - start;
    if (spins < SPINS_BEFORE_SLEEP) continue;
    o.check?.();
    pause = Math.min(MAX_PAUSE_US, Math.max(MIN_PAUSE_US, pause * 2));
    sleep(pause);
    if (performance.now() > deadline) {
      throw new CollectiveTimeout(o.rank, o.what, o.timeoutSeconds);
    }
  }
}

let libc:
  | Deno.DynamicLibrary<{
    usleep: { parameters: ["u32"]; result: "i32" };
  }>
  | null = null;

/** Sleeps the thread (libc's usleep: Deno has no synchronous sleep). */
export function sleepMicroseconds(us: number): void {
  libc ??= Deno.dlopen("libc.so.6", {
    usleep: { parameters: ["u32"], result: "i32" },
  });
  libc.symbols.usleep(us);
}
