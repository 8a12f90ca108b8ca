/**
 * A caching allocator for host memory: freed arrays are kept by length and
 * handed out again. Shapes repeat every training step, so after the first
 * step no large array is allocated; a fresh one costs page faults and zeroing
 * several times the cost of the op that writes it.
 *
 * What the cache holds it gives back in two ways. `trim()`, called once per
 * training step, drops the arrays that no request used since the previous
 * call (per length, the fewest arrays that sat idle all along), so memory a
 * step no longer needs, say after a change of batch size, is returned within
 * two steps while the arrays each step reuses stay. A limit on the cached
 * bytes (`MEC_CPU_CACHE_MB`) drops freed arrays past it at once. Dropped
 * arrays go back to the system when the garbage collector next runs.
 *
 * @module
 */

import type { MemoryInfo } from "../nn/backend.ts";

export class CachingAllocator {
  #free = new Map<number, Float32Array[]>();
  /** Per length, the fewest cached arrays there were since the last trim. */
  #idle = new Map<number, number>();
  #allocated = 0;
  #cached = 0;
  #peak = 0;
  readonly #limit: number;

  /** `limitBytes`: the most bytes kept cached; freed arrays past it are dropped. */
  constructor(limitBytes = Infinity) {
    this.#limit = limitBytes;
  }

  /** An array of exactly `length` elements with undefined contents. */
  alloc(length: number): Float32Array {
    const list = this.#free.get(length);
    const reused = list?.pop();
    this.#allocated += 4 * length;
    if (this.#allocated > this.#peak) this.#peak = this.#allocated;
    if (reused) {
      this.#cached -= 4 * length;
      const idle = this.#idle.get(length) ?? 0;
      if (list!.length < idle) this.#idle.set(length, list!.length);
      return reused;
    }
    return new Float32Array(length);
  }

  /** Returns an array to the cache (or drops it, past the limit). */
  free(array: Float32Array): void {
    const length = array.length;
    this.#allocated -= 4 * length;
    if (this.#cached + 4 * length > this.#limit) return;
    this.#cached += 4 * length;
    let list = this.#free.get(length);
    if (!list) {
      list = [];
      this.#free.set(length, list);
      // None of this length was idle before: nothing of it is surplus yet.
      this.#idle.set(length, 0);
    }
    list.push(array);
  }

  /**
   * Drops the cached arrays that no request needed since the last call,
   * and starts counting again. Returns the bytes dropped.
   */
  trim(): number {
    let dropped = 0;
    for (const [length, list] of this.#free) {
      const surplus = Math.min(this.#idle.get(length) ?? 0, list.length);
      if (surplus > 0) {
        list.splice(0, surplus);
        dropped += 4 * length * surplus;
      }
      if (list.length === 0) {
        this.#free.delete(length);
        this.#idle.delete(length);
      } else {
        this.#idle.set(length, list.length);
      }
    }
    this.#cached -= dropped;
    return dropped;
  }

  /** Drops every cached array, leaving them to the garbage collector. */
  empty(): void {
    this.#free.clear();
    this.#idle.clear();
    this.#cached = 0;
  }

  /** Live and cached bytes, and the most live since the last `resetPeak`. */
  memory(): MemoryInfo {
    return {
      allocated: this.#allocated,
      cached: this.#cached,
      peak: this.#peak,
    };
  }

  /** Starts the peak of live bytes again from what is live now. */
  resetPeak(): void {
    this.#peak = this.#allocated;
  }
}

/**
 * One growing scratch array for kernels that need temporary space (im2col
 * columns). Never hold the result across calls: the next call may reuse it.
 */
export class Scratch {
  #array = new Float32Array(0);

  get(length: number): Float32Array {
    if (this.#array.length < length) {
      // Grow by half again so that slowly rising sizes do not reallocate often.
      this.#array = new Float32Array(
        Math.max(length, this.#array.length * 1.5 | 0),
      );
    }
    return this.#array;
  }

  get bytes(): number {
    return 4 * this.#array.length;
  }

  release(): void {
    this.#array = new Float32Array(0);
  }
}
