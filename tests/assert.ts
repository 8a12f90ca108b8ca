/** Small assertion helpers on top of node:assert. */

import assert from "node:assert/strict";

/** Asserts that fn throws an error whose message matches `pattern`. */
export function assertThrows(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    if (!(e instanceof Error)) return false;
    if (!pattern.test(e.message)) {
      throw new assert.AssertionError({
        message: `error message "${e.message}" does not match ${pattern}`,
      });
    }
    return true;
  });
}

export { assert };
